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
# DIR/l1-console.log); 126 when L1 stopped making progress (its kernel
# wedged: a platform failure, its CPUs' registers in DIR/l1-registers.txt).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE

usage() { sed -n '2,21s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2; }
die() { printf 'nested: error: %s\n' "$*" >&2; exit 2; }

out= smp=2 mem=4096 timeout=900
# Seconds without a heartbeat from L1 after which it counts as wedged.
readonly STALL_SECS=90
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
rm -rf "$out/.l1" "$out/status" "$out/skip" "$out/script.log" "$out/l1-console.log" "$out/l1-registers.txt" \
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

# Where L1's monitor listens: a short path, socket paths are limited.
monitor_dir=$(mktemp -d /tmp/husk-l1.XXXXXX)
trap 'rm -rf "$monitor_dir"' EXIT

# monitor_dump FILE: every L1 vCPU's registers, each address named
# against the symbols L1's init saved (.l1/kallsyms): what a wedged L1 was
# doing.
monitor_dump() {
    python3 - "$monitor_dir/monitor.sock" <<'PY' 2>&1 | python3 "$HERE/where.py" "$out/.l1/kallsyms" >"$1" 2>&1
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(1)
out = b""


def until_prompt(count):
    # HMP ends each answer with a fresh "(qemu) " prompt.
    global out
    end = time.time() + 10
    while out.count(b"(qemu) ") < count and time.time() < end:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        out += chunk


until_prompt(1)
for n, command in enumerate([b"info cpus", b"info registers -a"], start=2):
    s.sendall(command + b"\n")
    until_prompt(n)
print(out.decode(errors="replace"))
PY
}

# Host root read-only; the output directory writable. multidevs=remap keeps
# inode numbers unique across the host's several file systems.
qemu-system-x86_64 \
    -accel tcg -cpu max -smp "$smp" -m "$mem" -M pc \
    -display none -no-user-config -nodefaults -no-reboot \
    -monitor "unix:$monitor_dir/monitor.sock,server=on,wait=off" \
    -serial "file:$out/l1-console.log" \
    -kernel "$l1/vmlinuz" -initrd "$l1/initrd.gz" \
    -append "console=ttyS0 rdinit=/init panic=-1 mitigations=off husk.out=$out" \
    -fsdev "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap" \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev "local,id=out,path=$out,security_model=passthrough,multidevs=remap" \
    -device virtio-9p-pci,fsdev=out,mount_tag=out \
    -net none &
qemu=$!

# L1's init writes a heartbeat every few seconds: when it stops while QEMU
# still runs, L1's kernel has wedged (QEMU's SVM emulation, never L2's
# doing: a guest cannot stop its host's CPUs), and waiting longer is waste.
started=$(date +%s) status=0 verdict=
while kill -0 "$qemu" 2>/dev/null; do
    sleep 5
    now=$(date +%s)
    beat=$(stat -c %Y "$out/.l1/heartbeat" 2>/dev/null || echo "$started")
    if ((now - started > timeout)); then
        verdict=timeout
    elif ((now - beat > STALL_SECS && now - started > STALL_SECS)); then
        verdict=stalled
    else
        continue
    fi
    monitor_dump "$out/l1-registers.txt"
    kill -9 "$qemu" 2>/dev/null
    break
done
wait "$qemu" || status=$?

if [[ -f $out/skip ]]; then
    printf 'nested: skipped: %s\n' "$(cat "$out/skip")" >&2
    exit 77
fi
if [[ -f $out/status ]]; then
    exit "$(cat "$out/status")"
fi
if [[ $verdict == timeout ]]; then
    printf 'nested: L1 ran out of time (%s s); its registers: %s\n' "$timeout" "$out/l1-registers.txt" >&2
    exit 124
fi
if [[ $verdict == stalled ]]; then
    printf 'nested: L1 stopped making progress (no heartbeat for %s s): a platform hang; where its CPUs were:\n' "$STALL_SECS" >&2
    grep -o 'RIP=[^ ]* \[[^]]*\]' "$out/l1-registers.txt" >&2 || true
    exit 126
fi
printf 'nested: L1 ended without a status (qemu %s); its console ends:\n' "$status" >&2
tail -n 30 "$out/l1-console.log" >&2 || true
exit 125
