#!/usr/bin/env bash
# Builds the static husk-agent for the guest image (static glibc with
# libseccomp linked in, so the initrd needs nothing else) and prints its path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly TARGET=x86_64-unknown-linux-gnu
export LIBSECCOMP_LINK_TYPE=static
export LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu
# Only with an explicit --target do these flags stay off build scripts and
# proc macros, which cannot be static.
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
cargo build --quiet --release -p husk-agent --bin husk-agent --target "$TARGET" >&2

agent=target/$TARGET/release/husk-agent
if ! file "$agent" | grep -qE 'statically linked|static-pie linked'; then
    echo "build-agent: $agent is not statically linked" >&2
    exit 1
fi
realpath "$agent"
