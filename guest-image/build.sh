#!/usr/bin/env bash
# Pack husk's guest initrd: a reproducible newc cpio whose /init is the given
# static binary (normally husk-agent), plus the empty mount points it needs.
#
# Usage:
#   guest-image/build.sh [--debug] [--compress gzip|none] AGENT_BINARY OUTPUT
#
#   --debug           also add busybox (Debian busybox-static) as /bin/*
#   --compress KIND   none (default: fastest boot under TCG) or gzip
#
# The same inputs always give a byte-identical OUTPUT: entries are sorted,
# every mtime is $SOURCE_DATE_EPOCH (default 0), owners are 0:0, inode and
# device numbers are renumbered, gzip stores no name or time. Prints
# "OUTPUT SIZE-in-bytes" on stdout.
set -euo pipefail

readonly BUSYBOX=/bin/busybox
# Mount points the agent uses; the kernel's built-in initramfs already has
# /dev/console, so the console works before devtmpfs is mounted.
readonly DIRS=(proc sys dev run tmp etc)

log() { printf 'guest-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() {
    sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

debug=0 compress=none
while [[ $# -gt 0 ]]; do
    case $1 in
    --debug) debug=1; shift ;;
    --compress)
        [[ $# -ge 2 ]] || usage
        compress=$2; shift 2 ;;
    --compress=*) compress=${1#*=}; shift ;;
    -h | --help) usage ;;
    --) shift; break ;;
    -*) usage ;;
    *) break ;;
    esac
done
[[ $# -eq 2 ]] || usage
agent=$1 output=$2
[[ $compress == gzip || $compress == none ]] || die "--compress must be none or gzip"
epoch=${SOURCE_DATE_EPOCH:-0}
[[ $epoch =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be a number of seconds"

command -v cpio >/dev/null || die "cpio is not installed (apt-get install cpio)"
[[ -f $agent && -r $agent ]] || die "$agent: no such file"
# A dynamic /init would die at once: there is no loader or libc in the image.
if ! readelf -h "$agent" >/dev/null 2>&1; then
    die "$agent is not an ELF binary"
fi
if readelf -lW "$agent" | grep -q 'INTERP'; then
    die "$agent is dynamically linked; /init must be a static binary"
fi
if [[ $debug -eq 1 && ! -x $BUSYBOX ]]; then
    die "--debug needs $BUSYBOX (apt-get install busybox-static)"
fi

stage=$(mktemp -d)
tmp_out=
cleanup() {
    rm -rf "$stage"
    [[ -z $tmp_out ]] || rm -f "$tmp_out"
}
trap cleanup EXIT

install -m 0755 "$agent" "$stage/init"
if [[ $debug -eq 0 ]]; then
    # Symbols only name a panic's frames; without them the image is about
    # 20% smaller, which the kernel unpacks and the agent pages in at
    # every boot (docs/benchmarks.md, "Boot budget"). --debug keeps them.
    strip --strip-all "$stage/init"
fi
for d in "${DIRS[@]}"; do
    mkdir -m 0755 "$stage/$d"
done
chmod 1777 "$stage/tmp"
if [[ $debug -eq 1 ]]; then
    mkdir -m 0755 "$stage/bin"
    install -m 0755 "$BUSYBOX" "$stage/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [[ $applet == busybox ]] || ln -s busybox "$stage/bin/$applet"
    done
fi
find "$stage" -exec touch -h -d "@$epoch" {} +

mkdir -p "$(dirname "$output")"
tmp_out=$(mktemp "$output.XXXXXX")
(
    cd "$stage"
    find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible
) | if [[ $compress == gzip ]]; then gzip -9 -n; else cat; fi >"$tmp_out"
chmod 0644 "$tmp_out"
mv "$tmp_out" "$output"
tmp_out=
printf '%s %s\n' "$output" "$(stat -c %s "$output")"
