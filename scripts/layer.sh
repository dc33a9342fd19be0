#!/usr/bin/env bash
# Runs one test layer of `make test`, timed, and records how it went, so that
# every layer runs even when an earlier one failed and the summary says how
# long each took.
#
# Usage:
#   scripts/layer.sh RECORD NAME COMMAND...   run COMMAND, add a line to RECORD
#   scripts/layer.sh RECORD --summary         print RECORD; exit 1 if a layer failed
set -uo pipefail

record=${1:?usage: scripts/layer.sh RECORD NAME COMMAND... | RECORD --summary}
shift
if [[ ${1:-} == --summary ]]; then
    printf '\n%-52s %-8s %s\n' layer result seconds
    failed=0
    while IFS=$'\t' read -r name result seconds; do
        printf '%-52s %-8s %s\n' "$name" "$result" "$seconds"
        [[ $result == passed ]] || failed=1
    done <"$record"
    exit "$failed"
fi
name=${1:?layer name}
shift
printf '\n==> layer: %s\n' "$name"
start=$(date +%s)
"$@"
status=$?
seconds=$(($(date +%s) - start))
result=passed
((status == 0)) || result="failed($status)"
printf '<== layer: %s %s in %s s\n' "$name" "$result" "$seconds"
printf '%s\t%s\t%s\n' "$name" "$result" "$seconds" >>"$record"
exit 0
