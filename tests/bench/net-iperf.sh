#!/usr/bin/env bash
# TCP throughput of a container's network with Debian's iperf3: husk's own
# virtio-net backend beside QEMU's built-in `-netdev tap` virtio-net on the
# same guest, and runc, through a private Docker in a network namespace of
# the benchmark's own (nothing touches this machine's network). Interleaved
# runs, medians, ratio; the table goes to stdout and build/bench-net.md.
# Run as root (`make bench-net`); NET_BENCH_RUNS and NET_BENCH_SECONDS set
# the runs per runtime (default 5) and iperf3's seconds per direction (10).
set -euo pipefail
cd "$(dirname "$0")/../.."

runs=${NET_BENCH_RUNS:-5}
seconds=${NET_BENCH_SECONDS:-10}
mkdir -p build

# Release builds: the VMM's device backend is what is measured.
cargo build --release --quiet -p husk-runtime --bin husk
cargo build --release --quiet -p husk-tests --bin husk-net-bench
exec target/release/husk-net-bench --husk "$PWD/target/release/husk" \
    --runs "$runs" --seconds "$seconds" --out build/bench-net.md
