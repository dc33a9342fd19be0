#!/usr/bin/env bash
# The race against QEMU on the same KVM, run inside the nested layer's outer
# VM (L1) by `make bench-nested` through tests/nested/l1.sh: the prebuilt
# `husk run` bench boots the same guest kernel and initrd with the builtin
# VMM and with QEMU `-M microvm -accel kvm` (husk's vhost-user devices),
# interleaved, then the VMM boot bench runs its minimal payload on both.
# Everything in L1 is emulated: the ratios mean something, the absolute
# times do not.
#
# Usage (inside L1): bench.sh OCI_RUN_BENCH BOOT_BENCH KERNEL INITRD [RUNS]
#
# Writes the tables to $NESTED_OUT/oci_run.md and $NESTED_OUT/boot.md; the
# benches' progress and errors go to stderr (l1.sh keeps it in script.log).
# Exits non-zero when a bench failed.
set -uo pipefail

[[ $# -ge 4 ]] || { echo "usage: bench.sh OCI_RUN_BENCH BOOT_BENCH KERNEL INITRD [RUNS]" >&2; exit 2; }
readonly OCI_RUN=$1 BOOT=$2 KERNEL=$3 INITRD=$4 ROUNDS=${5:-5}
readonly OUT=${NESTED_OUT:?run this through tests/nested/l1.sh}

# The first guest instruction is read from the kvm:kvm_entry tracepoint;
# L1's fresh /sys has tracefs unmounted.
tracing=/sys/kernel/tracing
if ! mountpoint -q "$tracing" && ! mount -t tracefs tracefs "$tracing"; then
    echo "bench: cannot mount tracefs: the first guest instruction will not be measured" >&2
fi

# Both backends explicitly; a guest boot here takes tens of seconds (all
# emulated), so a long boot timeout; no runc/crun peers (they are measured
# on the host, and are not what this compares).
export HUSK_KERNEL=$KERNEL HUSK_INITRD=$INITRD
export HUSK_BENCH_BACKENDS=builtin,qemu HUSK_BENCH_RUNS=$ROUNDS HUSK_BENCH_MEMORY_SANDBOXES=3
export HUSK_BENCH_BOOT_TIMEOUT=240 HUSK_BENCH_PEERS=none

status=0
# A scratch directory of our own: the benches write only there and under /tmp.
cd /tmp || exit 2
printf 'bench: %s: husk run, builtin and qemu, %s runs each\n' "$(date +%T)" "$ROUNDS" >&2
"$OCI_RUN" --bench >"$OUT/oci_run.md" || status=$?
printf 'bench: %s: VMM boot payload, 10 runs each\n' "$(date +%T)" >&2
RUNS=10 "$BOOT" --bench >"$OUT/boot.md" || status=$?
printf 'bench: %s: done, status %s\n' "$(date +%T)" "$status" >&2
exit "$status"
