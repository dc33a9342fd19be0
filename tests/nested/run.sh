#!/usr/bin/env bash
# The nested-KVM test layer: husk's builtin VMM booting the real guest kernel
# and initrd on a real (nested) KVM, through the real `husk` binary.
#
# Usage: tests/nested/run.sh [--out DIR]    (after `make build guest`)
#
# Boots one outer VM (L1, tests/nested/l1.sh) and runs tests/nested/suite.sh
# in it. When L1's own kernel dies or wedges (a platform failure of QEMU's
# SVM emulation, never husk's: L2 runs in its own VM), the batch runs again
# (at most TRIES times in all);
# a failure of a check never does. On failure it prints the suite's output,
# L1's console tail and every guest console it kept. Skips, with one line
# saying why, only when this QEMU emulates no SVM.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly REPO=$HERE/../..
readonly TRIES=3

out=$REPO/target/nested
if [[ ${1:-} == --out && -n ${2:-} ]]; then
    out=$2
elif (($#)); then
    sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
fi

die() { printf 'nested: error: %s\n' "$*" >&2; exit 1; }
husk=$(realpath "$REPO/target/debug/husk") || die "no target/debug/husk (make build)"
kernel=$("$REPO/guest-kernel/build.sh" --print-path) || die "no guest kernel (make kernel)"
initrd=$(realpath "$REPO/build/initrd.img") || die "no build/initrd.img (make image)"

start=$(date +%s)
for ((try = 1; try <= TRIES; try++)); do
    "$HERE/l1.sh" --out "$out" --smp 2 --mem 4096 --timeout 900 \
        "$HERE/suite.sh" "$husk" "$kernel" "$initrd"
    status=$?
    ((status == 125 || status == 126)) && ((try < TRIES)) || break
    printf 'nested: L1 died or wedged (platform failure), its console ends:\n' >&2
    tail -n 20 "$out/l1-console.log" >&2
    cp "$out/l1-console.log" "$out/l1-console-try$try.log" 2>/dev/null
    cp "$out/l1-registers.txt" "$out/l1-registers-try$try.txt" 2>/dev/null
    printf 'nested: running the batch again (try %s of %s)\n' "$((try + 1))" "$TRIES" >&2
done

if ((status == 77)); then
    printf 'nested: layer skipped (see above) in %s s\n' "$(($(date +%s) - start))"
    exit 0
fi
[[ -f $out/script.log ]] && cat "$out/script.log"
if ((status != 0)); then
    printf '\nnested: L1 console tail (%s):\n' "$out/l1-console.log"
    tail -n 25 "$out/l1-console.log" 2>/dev/null
    for hang in "$out"/hang-*.txt; do
        [[ -f $hang ]] || continue
        printf '\nnested: a husk command that hung (%s):\n' "$hang"
        head -n 60 "$hang"
    done
    for where in "$out"/kvm-trace-*.where; do
        [[ -f $where ]] || continue
        printf '\nnested: where L1 last saw the guest (%s):\n' "$where"
        head -n 16 "$where"
    done
    if [[ -s $out/husk.log ]]; then
        printf '\nnested: husk warnings and errors (%s):\n' "$out/husk.log"
        tail -n 40 "$out/husk.log"
    fi
    for log in "$out"/console-*.log; do
        [[ -f $log ]] || continue
        printf '\nnested: guest console tail (%s):\n' "$log"
        tail -n 25 "$log"
    done
fi
printf 'nested: layer took %s s (status %s)\n' "$(($(date +%s) - start))" "$status"
exit "$status"
