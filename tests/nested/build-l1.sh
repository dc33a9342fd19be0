#!/usr/bin/env bash
# Builds what the nested-KVM test layer's outer VM ("L1") boots: Debian's
# own linux-image kernel (it has kvm, kvm-amd, 9p and virtio as modules) and
# a small initramfs (busybox-static, those modules in load order, and
# tests/nested/l1-init as /init).
#
# Usage: tests/nested/build-l1.sh    build if needed; the last stdout line is
#                                    the directory holding vmlinuz and initrd.gz
#
# Why Debian's kernel and not one more build of the 6.12 source: it costs a
# 70 MB download instead of a second kernel build (minutes on 2 cores), and it
# is the kernel a Debian KVM host runs, so the L0 side of husk's KVM calls is
# a distribution kvm_amd, not a configuration of ours.
#
# Cached under $HUSK_NESTED_CACHE (default /var/cache/husk/nested) by the hash
# of its inputs: the kernel package's name and version, this script and the
# init script. A new kernel package or a changed script gives a new directory.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly CACHE=${HUSK_NESTED_CACHE:-/var/cache/husk/nested}
# What the initramfs loads, named as modprobe knows them; modprobe resolves
# each one's dependencies into load order.
# tun, veth and the tc pieces: the suite's network check (a tap joined to a
# veth by ingress qdiscs, u32 filters and mirred redirects).
readonly MODULES=(virtio_pci 9pnet_virtio 9p kvm_amd tun veth sch_ingress cls_u32 act_mirred)
# kmod: depmod and modprobe resolve the load order; jq: the suite edits
# OCI specs with it (inside L1, from the host root); python3: l1.sh reads
# L1's monitor and names the addresses of a wedged L1 or a stuck guest;
# procps: the suite finds husk's processes with pgrep; iproute2: its
# network check makes namespaces and a veth pair.
readonly DEPS=(kmod busybox-static cpio gzip qemu-system-x86 jq python3 procps iproute2)

log() { printf 'nested: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

install_deps() {
    local missing=() pkg installed
    installed=$({ dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${DEPS[@]}" 2>/dev/null || true; } |
        awk '$1 == "ii" { print $2 }')
    for pkg in "${DEPS[@]}"; do
        grep -qxF "$pkg" <<<"$installed" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# The versioned package the linux-image-amd64 metapackage points at now.
kernel_package() {
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    if [[ -z $pkg ]]; then
        apt-get update -q >/dev/null
        pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    fi
    [[ -n $pkg ]] || die "apt knows no linux-image-amd64 kernel package"
    printf '%s %s\n' "$pkg" "$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')"
}

build() {
    local pkg=$1 dest=$2 work release m line
    work=$(mktemp -d "$CACHE/.build.XXXXXX")
    # shellcheck disable=SC2064 # expand now: $work is local
    trap "rm -rf '$work'" EXIT
    log "fetching $pkg"
    (cd "$work" && apt-get download -q "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
    dpkg-deb -x "$work"/"$pkg"_*.deb "$work/pkg"
    release=${pkg#linux-image-}
    depmod -b "$work/pkg" "$release"

    local root=$work/initramfs
    mkdir -p "$root"/{bin,dev,proc,sys,host,out,modules}
    cp /bin/busybox "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    # Load order: each module after what it depends on, each once.
    : >"$root/modules/order"
    for m in "${MODULES[@]}"; do
        modprobe -d "$work/pkg" -S "$release" --show-depends "$m" |
            awk '$1 == "insmod" { print $2 }' | while read -r line; do
            local name
            name=$(basename "$line")
            grep -qxF "$name" "$root/modules/order" && continue
            cp "$line" "$root/modules/$name"
            printf '%s\n' "$name" >>"$root/modules/order"
        done
    done
    install -m 0755 "$HERE/l1-init" "$root/init"
    (cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$work/initrd.gz"

    local tmp
    tmp=$(mktemp -d "$CACHE/.install.XXXXXX")
    cp "$work/pkg/boot/vmlinuz-$release" "$tmp/vmlinuz"
    mv "$work/initrd.gz" "$tmp/initrd.gz"
    printf 'kernel %s\nmodules %s\n' "$pkg" "$(tr '\n' ' ' <"$root/modules/order")" >"$tmp/build-info"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    log "built L1 kernel and initramfs in $dest"
}

main() {
    [[ $# -eq 0 ]] || { sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2; }
    [[ $(id -u) -eq 0 ]] || die "must run as root (apt-get, /var/cache/husk)"
    install_deps
    local pkg version hash
    read -r pkg version < <(kernel_package)
    hash=$({
        printf 'kernel %s %s\n' "$pkg" "$version"
        sha256sum "${BASH_SOURCE[0]}" "$HERE/l1-init" | cut -d' ' -f1
    } | sha256sum | cut -c1-16)
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
    [[ -f $CACHE/$hash/initrd.gz ]] || build "$pkg" "$CACHE/$hash"
    printf '%s\n' "$CACHE/$hash"
}

main "$@"
