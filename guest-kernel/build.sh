#!/usr/bin/env bash
# Build husk's guest kernel (an uncompressed, PVH-bootable vmlinux) from
# Debian's linux-source-6.12 package: `make tinyconfig` + config.fragment.
#
# Usage:
#   guest-kernel/build.sh               build if needed; last stdout line is the path
#   guest-kernel/build.sh --print-path  print the cached path, exit 1 if not built
#   guest-kernel/build.sh --verify-config FILE
#                                       check a .config against config.fragment
#
# The result is cached by the hash of its inputs (source package version,
# config.fragment, this script) under $HUSK_KERNEL_CACHE
# (default /var/cache/husk/kernel): <cache>/<hash>/vmlinux, next to the
# final .config. Build output goes to <cache>/logs/<hash>.log, never stdout.
set -euo pipefail

readonly SRC_PKG=linux-source-6.12
readonly TARBALL=/usr/src/${SRC_PKG}.tar.xz
readonly BUILD_DEPS=(bc flex bison libelf-dev libssl-dev cpio xz-utils make gcc)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly FRAGMENT=$HERE/config.fragment
readonly SELF=$HERE/build.sh
readonly CACHE=${HUSK_KERNEL_CACHE:-/var/cache/husk/kernel}

log() { printf 'guest-kernel: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,15s/^# \{0,1\}//p' "$SELF" >&2
    exit 2
}

# Installed version of the source package, empty when not installed.
src_version() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$SRC_PKG" 2>/dev/null |
        awk '$1 == "ii" { print $2 }'
}

# Cache key: any change to the kernel source, the fragment or this script
# gives a new directory, so a stale kernel is never reused.
input_hash() {
    local version=$1
    {
        printf 'version %s\n' "$version"
        printf 'fragment %s\n' "$(sha256sum <"$FRAGMENT" | cut -d' ' -f1)"
        printf 'script %s\n' "$(sha256sum <"$SELF" | cut -d' ' -f1)"
    } | sha256sum | cut -d' ' -f1
}

# Packages not installed, from one dpkg-query call (unknown names are
# simply absent from its answer).
missing_packages() {
    local installed pkg
    # dpkg-query fails when any name is not installed, which is the case
    # this function exists for: its status must not end the script.
    installed=$({ dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' \
        "${BUILD_DEPS[@]}" "$SRC_PKG" 2>/dev/null || true; } | awk '$1 == "ii" { print $2 }')
    for pkg in "${BUILD_DEPS[@]}" "$SRC_PKG"; do
        grep -qxF "$pkg" <<<"$installed" || printf '%s\n' "$pkg"
    done
}

install_deps() {
    local missing
    mapfile -t missing < <(missing_packages)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing build dependencies: ${missing[*]}"
    [[ $(id -u) -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        # The package lists may be absent or stale on a fresh machine.
        apt-get update >&2
        apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
}

# Unpacks the source once per package version; the marker file makes an
# interrupted extraction start over instead of building a partial tree.
extract_source() {
    local version=$1 dest=$CACHE/src/$1
    if [[ ! -e $dest/.extracted ]]; then
        log "extracting $TARBALL ($version)"
        rm -rf "$dest"
        mkdir -p "$dest"
        tar -xf "$TARBALL" -C "$dest"
        touch "$dest/.extracted"
    fi
    printf '%s\n' "$dest/$SRC_PKG"
}

# Fails naming every fragment option that olddefconfig did not keep: Kconfig
# drops an option whose dependencies are unmet, or clamps a number into its
# range, without any error.
verify_config() {
    local config=$1 bad=() name line
    while IFS= read -r line; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=.+$ ]]; then
            name=${BASH_REMATCH[1]}
            grep -qxF "$line" "$config" ||
                bad+=("$line (now: $(grep -E "^(# )?${name}[= ]" "$config" || echo absent))")
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            name=${BASH_REMATCH[1]}
            if grep -qE "^$name=" "$config"; then
                bad+=("$line (now: $(grep -E "^$name=" "$config"))")
            fi
        fi
    done <"$FRAGMENT"
    if [[ ${#bad[@]} -gt 0 ]]; then
        log "config.fragment options not honoured by Kconfig (unmet dependencies?):"
        printf '  %s\n' "${bad[@]}" >&2
        return 1
    fi
}

build() {
    local version=$1 hash=$2 src out logfile start
    src=$(extract_source "$version")
    out=$CACHE/build/$version
    logfile=$CACHE/logs/$hash.log
    mkdir -p "$out" "$CACHE/logs"
    : >"$logfile"
    log "building $version (hash ${hash:0:12}), log: $logfile"
    start=$(date +%s)

    # One build tree per source version: a fragment change rebuilds
    # incrementally instead of from scratch.
    local kmake=(make -C "$src" O="$out" ARCH=x86_64 KBUILD_BUILD_USER=husk
        KBUILD_BUILD_HOST=husk KBUILD_BUILD_TIMESTAMP=@0)
    if ! {
        "${kmake[@]}" tinyconfig &&
            "$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$FRAGMENT" &&
            "${kmake[@]}" olddefconfig
    } >>"$logfile" 2>&1; then
        tail -n 30 "$logfile" >&2
        die "kernel configuration failed, see $logfile"
    fi
    verify_config "$out/.config" || die "fix config.fragment"

    if ! "${kmake[@]}" -j"$(nproc)" vmlinux >>"$logfile" 2>&1; then
        tail -n 30 "$logfile" >&2
        die "kernel build failed, see $logfile"
    fi

    # Publish atomically so a concurrent reader never sees a partial file.
    local dest=$CACHE/$hash tmp
    tmp=$(mktemp -d "$CACHE/.install.XXXXXX")
    cp "$out/vmlinux" "$tmp/vmlinux"
    cp "$out/.config" "$tmp/config"
    printf 'source %s %s\nbuilt %s\nseconds %s\n' "$SRC_PKG" "$version" \
        "$(date -u +%FT%TZ)" "$(($(date +%s) - start))" >"$tmp/build-info"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    log "built in $(($(date +%s) - start)) s, vmlinux $(stat -c %s "$dest/vmlinux") bytes"
}

main() {
    local mode=build
    case ${1:-} in
    "") ;;
    --print-path) mode=print ;;
    --verify-config)
        [[ $# -eq 2 && -f $2 ]] || usage
        verify_config "$2"
        return
        ;;
    -h | --help) usage ;;
    *) usage ;;
    esac

    local version hash path
    if [[ $mode == print ]]; then
        version=$(src_version)
        [[ -n $version ]] || die "$SRC_PKG is not installed, so no kernel is built"
        path=$CACHE/$(input_hash "$version")/vmlinux
        [[ -f $path ]] || die "no cached kernel at $path (run $SELF)"
        printf '%s\n' "$path"
        return 0
    fi

    install_deps
    version=$(src_version)
    [[ -n $version ]] || die "$SRC_PKG did not install"
    hash=$(input_hash "$version")
    path=$CACHE/$hash/vmlinux

    mkdir -p "$CACHE"
    # Serialize builds (CI and developers may run this at the same time).
    exec 9>"$CACHE/.lock"
    flock 9
    if [[ -f $path ]]; then
        log "cached"
    else
        build "$version" "$hash"
    fi
    printf '%s\n' "$path"
}

main "$@"
