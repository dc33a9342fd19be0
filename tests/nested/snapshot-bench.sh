#!/usr/bin/env bash
# Restored against cold-booted sandboxes on the builtin VMM, run inside the
# nested layer's outer VM (L1) by `make bench-snapshot-nested` through
# tests/nested/l1.sh: the prebuilt snapshot bench (runtime/benches/
# snapshot.rs). Everything in L1 is emulated: the ratios mean something,
# the absolute times do not.
#
# Usage (inside L1): snapshot-bench.sh SNAPSHOT_BENCH KERNEL INITRD [RUNS] [COUNTS]
#
# Writes the tables to $NESTED_OUT/snapshot.md; progress goes to stderr.
set -uo pipefail

[[ $# -ge 3 ]] || { echo "usage: snapshot-bench.sh SNAPSHOT_BENCH KERNEL INITRD [RUNS] [COUNTS]" >&2; exit 2; }
readonly BENCH=$1 KERNEL=$2 INITRD=$3 RUNS=${4:-5} COUNTS=${5:-1,5,10}
readonly OUT=${NESTED_OUT:?run this through tests/nested/l1.sh}

export HUSK_KERNEL=$KERNEL HUSK_INITRD=$INITRD HUSK_BENCH_BOOT_TIMEOUT=240
export HUSK_SNAPSHOT_RUNS=$RUNS HUSK_SNAPSHOT_COUNTS=$COUNTS
cd /tmp || exit 2
printf 'snapshot: %s: %s runs each, %s sandboxes side by side\n' "$(date +%T)" "$RUNS" "$COUNTS" >&2
status=0
"$BENCH" --bench >"$OUT/snapshot.md" || status=$?
printf 'snapshot: %s: done, status %s\n' "$(date +%T)" "$status" >&2
exit "$status"
