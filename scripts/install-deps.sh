#!/usr/bin/env bash
# Installs what building and testing husk needs on a fresh Debian 12 machine.
# Idempotent: packages already present are not reinstalled, and apt's index
# is refreshed only when something is missing.
set -euo pipefail

readonly PACKAGES=(
    # building: C toolchain for -sys crates, libseccomp for the agent's
    # seccomp (linked statically into the guest agent), pkg-config;
    # protoc for the CRI API that k8s-cri generates (husk-tests)
    build-essential pkg-config libseccomp-dev protobuf-compiler
    # tests: busybox root file systems, unshare, payload assembly
    busybox-static util-linux binutils
    # peers measured beside husk, and the OCI runtimes' own tooling
    crun runc
    # Docker end-to-end test (tests/tests/docker_e2e.rs runs its own daemons)
    docker.io containerd
    # Kubernetes end-to-end test (runtime/tests/kubernetes.rs): containerd's
    # CRI plugin gives pods networks with the CNI plugins
    containernetworking-plugins
    # Podman network test (runtime/tests/docker_network.rs): Debian's podman
    # and the network backend its containers-common recommends (netavark,
    # aardvark-dns for names; the alternative is the older CNI plugins)
    podman netavark aardvark-dns
    # the microVM under TCG (and the builtin VMM's benchmark peer)
    qemu-system-x86
    # guest image packing
    cpio file
    # benchmarks (iperf3: make bench-net's TCP throughput)
    hyperfine iperf3
)

missing=()
# dpkg-query fails when any name is not installed: that is the point here.
installed=$({ dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${PACKAGES[@]}" 2>/dev/null || true; } |
    awk '$1 == "ii" { print $2 }')
for pkg in "${PACKAGES[@]}"; do
    grep -qxF "$pkg" <<<"$installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust components the checks use.
if command -v rustup >/dev/null; then
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
fi

# Fuzzing (scripts/fuzz.sh): cargo-fuzz, and a nightly rustc for its
# sanitizer flags. Without a reachable toolchain server the nightly install
# fails; scripts/fuzz.sh then uses stable with RUSTC_BOOTSTRAP=1.
if command -v rustup >/dev/null; then
    rustup toolchain list 2>/dev/null | grep -q '^nightly' ||
        rustup toolchain install nightly --profile minimal ||
        echo "install-deps: no nightly toolchain; fuzzing uses stable with RUSTC_BOOTSTRAP=1" >&2
fi
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
