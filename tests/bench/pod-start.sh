#!/usr/bin/env bash
# Kubernetes pod start and host memory per pod: husk's containerd shim
# (CRI handler `husk`) beside containerd's runc shim (`runc`), in one
# private containerd with its CRI plugin inside a network namespace of the
# benchmark's own; interleaved rounds, medians, ratios husk / runc. The
# table goes to stdout and build/bench-pod.md. Run as root
# (`make bench-pod`); POD_BENCH_ROUNDS sets the rounds (default 5).
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=${POD_BENCH_ROUNDS:-5}
mkdir -p build

# Release builds: the shim is what is measured. Both in one profile so
# husk-runtime is built once.
cargo build --release --quiet -p husk-runtime --bin containerd-shim-husk-v2
cargo build --release --quiet -p husk-tests --bin husk-pod-bench
target=${CARGO_TARGET_DIR:-target}
exec "$target/release/husk-pod-bench" --shim "$(realpath "$target/release/containerd-shim-husk-v2")" \
    --rounds "$rounds" --out build/bench-pod.md
