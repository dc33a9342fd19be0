#!/usr/bin/env bash
# Builds husk's cargo-fuzz targets (fuzz/, libFuzzer with AddressSanitizer)
# and runs each for SECONDS, then prints a table: target, seconds,
# executions, corpus size, crashes. Fails if any target found a crash (or a
# leak, timeout or out-of-memory input); those inputs are kept under
# build/fuzz/artifacts/<target>/ to replay with
# `cargo fuzz run <target> <file>`.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default 600 s, every target)
#
# Each run starts from the committed seeds (fuzz/corpus/<target>/) plus the
# corpus earlier runs grew in build/fuzz/corpus/<target>/; the tree only
# keeps the seeds. The build goes to $FUZZ_TARGET_DIR, by default
# /var/cache/husk/fuzz-target (outside the work tree, like the guest
# kernel's cache, when that is writable; else ${CARGO_TARGET_DIR:-target}/fuzz):
# an AddressSanitizer build of husk-runtime and its dependencies takes
# about 12 minutes on 2 cores, and a fresh clone's run then rebuilds only
# husk's own crates. cargo rebuilds whatever changed, so the cache is
# never stale; deleting it only costs the next build.
#
# cargo-fuzz needs nightly rustc for -Zsanitizer: `cargo +nightly` when a
# nightly toolchain is installed (scripts/install-deps.sh installs one),
# otherwise the stable toolchain with RUSTC_BOOTSTRAP=1, which accepts the
# same flags.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
seconds=${1:-600}
shift || true
[[ $seconds =~ ^[0-9]+$ ]] || { echo "fuzz: SECONDS must be a number, not $seconds" >&2; exit 2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is not installed (scripts/install-deps.sh installs it)" >&2
    exit 1
fi
if cargo +nightly --version >/dev/null 2>&1; then
    cargo=(cargo +nightly)
else
    echo "fuzz: no nightly toolchain, using stable with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo)
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cd fuzz && "${cargo[@]}" fuzz list)
fi
shared_cache=/var/cache/husk/fuzz-target
if [[ -z ${FUZZ_TARGET_DIR:-} ]] && mkdir -p "$shared_cache" 2>/dev/null && [[ -w $shared_cache ]]; then
    FUZZ_TARGET_DIR=$shared_cache
fi
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$repo/target}/fuzz}
out=$repo/build/fuzz
mkdir -p "$out"

echo "fuzz: building ${targets[*]} (target dir $target_dir)"
# -a: debug assertions and overflow checks, so arithmetic on guest values
# that wraps is a finding, not a silent wrap.
# --features agent: the agent_replies target (it needs husk-runtime).
flags=(-a --features agent --target-dir "$target_dir")
(cd fuzz && "${cargo[@]}" fuzz build "${flags[@]}")
# The runs start the built targets directly (as `cargo fuzz run` would).
triple=$(rustc -vV | sed -n 's/^host: //p')

rows=()
failed=0
for target in "${targets[@]}"; do
    corpus=$out/corpus/$target
    artifacts=$out/artifacts/$target
    log=$out/$target.log
    mkdir -p "$corpus" "$artifacts"
    rm -f "$artifacts"/*
    echo "fuzz: running $target for $seconds s (log: $log)"
    status=0
    # -timeout: one input taking 30 s is a hang; -rss_limit_mb: ASan's
    # shadow memory included; -len_control=0: inputs are operation lists,
    # so they may be long from the start rather than grow slowly;
    # -detect_leaks=0: LeakSanitizer reports the per-input serving thread's
    # own handle and TLS registrations (freed as that thread exits, after
    # the join) as leaked; growth across inputs still hits -rss_limit_mb.
    # The fs targets let the guest write and fallocate in their scratch
    # share: a 64 MiB per-file limit (SIGXFSZ ignored, so the call fails
    # with EFBIG instead of killing the run) keeps a fuzzed FALLOCATE from
    # filling the machine's disk.
    (trap '' XFSZ && prlimit --fsize=$((64 << 20)) \
        "$target_dir/$triple/release/$target" "$corpus" "$repo/fuzz/corpus/$target" \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -len_control=0 -max_len=2048 -detect_leaks=0 \
        -artifact_prefix="$artifacts/" -print_final_stats=1) >"$log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    found=$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    size=$(find "$corpus" -type f | wc -l)
    if ((status != 0 || found > 0)); then
        failed=1
        echo "fuzz: $target failed (exit $status); the end of $log:" >&2
        tail -n 40 "$log" >&2
    fi
    rows+=("$(printf '%-16s %8s %12s %8s %8s' "$target" "$seconds" "${execs:-?}" "$size" "$found")")
done

printf '\n%-16s %8s %12s %8s %8s\n' target seconds executions corpus crashes
printf '%s\n' "${rows[@]}"
exit "$failed"
