#!/usr/bin/env bash
# The boot budget on the builtin VMM, run inside the nested layer's outer
# VM (L1) by `make bench-budget-nested` through tests/nested/l1.sh: the
# prebuilt boot_budget bench, builtin backend, the variants given in
# $HUSK_BUDGET_VARIANTS (passed through by l1.sh's environment file).
# Everything in L1 is emulated: compare variants, not absolute times.
#
# Usage (inside L1): budget.sh BOOT_BUDGET_BENCH KERNEL INITRD [RUNS] [VARIANTS]
#
# Writes the table to $NESTED_OUT/boot_budget.md; progress goes to stderr.
set -uo pipefail

[[ $# -ge 3 ]] || { echo "usage: budget.sh BOOT_BUDGET_BENCH KERNEL INITRD [RUNS] [VARIANTS]" >&2; exit 2; }
readonly BENCH=$1 KERNEL=$2 INITRD=$3 RUNS=${4:-5} VARIANTS=${5:-}
readonly OUT=${NESTED_OUT:?run this through tests/nested/l1.sh}

export HUSK_KERNEL=$KERNEL HUSK_INITRD=$INITRD
export HUSK_BUDGET_BACKEND=builtin HUSK_BUDGET_RUNS=$RUNS HUSK_BUDGET_BOOT_TIMEOUT=240
[[ -z $VARIANTS ]] || export HUSK_BUDGET_VARIANTS=$VARIANTS
cd /tmp || exit 2
printf 'budget: %s: builtin, %s runs\n' "$(date +%T)" "$RUNS" >&2
status=0
"$BENCH" --bench >"$OUT/boot_budget.md" || status=$?
printf 'budget: %s: done, status %s\n' "$(date +%T)" "$status" >&2
exit "$status"
