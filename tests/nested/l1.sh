#!/usr/bin/env bash
# Runs a command inside the nested layer's outer VM ("L1"): a Linux VM under
# QEMU's software emulation (TCG) of an AMD CPU with SVM and nested paging,
# whose own KVM (kvm_amd) runs husk's builtin VMM with real Linux guests.
#
# Usage:
#   tests/nested/l1.sh --out DIR [--smp N] [--mem MIB] [--timeout SECS] SCRIPT [ARGS...]
#
# SCRIPT runs as root under bash inside L1, chrooted into this host's root
# file system (mounted read-only, so every path is the same), with fresh
# /proc, /sys, /sys/fs/cgroup (v2), /dev (/dev/kvm works), tmpfs on /run,
# /tmp, /var/tmp, /dev/shm and /root, and DIR writable at the same path.
# The work tree this script is in, SCRIPT's directory and every argument that
# is an existing path stay visible even under those tmpfs (a clone in /tmp).
# Its stdout and stderr go to DIR/script.log, its status to DIR/status, and
# L1's console to DIR/l1-console.log.
#
# Exit status: SCRIPT's; 77 when this host cannot run the layer (DIR/skip says
# why: no SVM emulation in this QEMU); 124 when L1 ran out of time; 125 when
# L1 ended without a status (its kernel died: a platform failure, see
# DIR/l1-console.log).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE

usage() { sed -n '2,21s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2; }
die() { printf 'nested: error: %s\n' "$*" >&2; exit 2; }

out= smp=2 mem=4096 timeout=900
while (($#)); do
    case $1 in
    --out) out=${2:?}; shift 2 ;;
    --smp) smp=${2:?}; shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    --) shift; break ;;
    -*) die "unknown option $1" ;;
    *) break ;;
    esac
done
(($# >= 1)) && [[ -n $out ]] || usage
[[ -f $1 ]] || die "no script $1"

mkdir -p "$out"
out=$(cd "$out" && pwd)
script=$(realpath "$1")
shift

# What an earlier run left must not be read as this run's.
rm -rf "$out/.l1" "$out/status" "$out/skip" "$out/script.log" "$out/l1-console.log" \
    "$out"/console-*.log "$out"/kvm-trace-*
mkdir -p "$out/.l1"
{
    printf 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root HUSK_NESTED=1\n'
    printf 'export NESTED_OUT=%q\n' "$out"
    printf 'cd %q\n' "$PWD"
    printf 'exec bash %q' "$script"
    printf ' %q' "$@"
    printf '\n'
} >"$out/.l1/command"

# Directories L1 binds back over its fresh tmpfs, outermost first.
{
    realpath "$HERE/../.."
    dirname "$script"
    for arg in "$@"; do
        if [[ $arg == /* && -e $arg ]]; then dirname "$(realpath "$arg")"; fi
    done
} | awk '!seen[$0]++' >"$out/.l1/keep"

l1=$("$HERE/build-l1.sh" | tail -n 1)

# Host root read-only; the output directory writable. multidevs=remap keeps
# inode numbers unique across the host's several file systems.
status=0
timeout --kill-after=10 "$timeout" qemu-system-x86_64 \
    -accel tcg -cpu max -smp "$smp" -m "$mem" -M pc \
    -display none -monitor none -no-user-config -nodefaults -no-reboot \
    -serial "file:$out/l1-console.log" \
    -kernel "$l1/vmlinuz" -initrd "$l1/initrd.gz" \
    -append "console=ttyS0 rdinit=/init panic=-1 mitigations=off husk.out=$out" \
    -fsdev "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap" \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev "local,id=out,path=$out,security_model=passthrough,multidevs=remap" \
    -device virtio-9p-pci,fsdev=out,mount_tag=out \
    -net none || status=$?

if [[ -f $out/skip ]]; then
    printf 'nested: skipped: %s\n' "$(cat "$out/skip")" >&2
    exit 77
fi
if [[ -f $out/status ]]; then
    exit "$(cat "$out/status")"
fi
if ((status == 124 || status == 137)); then
    printf 'nested: L1 ran out of time (%s s)\n' "$timeout" >&2
    exit 124
fi
printf 'nested: L1 ended without a status (qemu %s); its console ends:\n' "$status" >&2
tail -n 30 "$out/l1-console.log" >&2 || true
exit 125
