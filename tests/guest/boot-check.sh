#!/usr/bin/env bash
# Boot husk's guest kernel under QEMU TCG (microvm, no ACPI, no PCI) with an
# initrd whose /init is tests/guest/init-check.c, and check its verdict on
# the serial console. Then boot it again with a virtio-mmio block device on
# the command line, to prove the virtio_mmio.device= path, once with a
# virtio-net device (on a QEMU hub port that leads nowhere: no host network
# is touched), and once asking for the block device without attaching it,
# to prove the check can fail.
#
# Usage: tests/guest/boot-check.sh [--kernel VMLINUX]
#   without --kernel, guest-kernel/build.sh builds or finds the cached one.
# Env: HUSK_BOOT_TIMEOUT (seconds per boot, default 60). The first boot uses
# a plain cpio initrd (the default), the others a gzip'd one, so both
# formats the kernel accepts are booted.
# Exits non-zero if any boot does not print "HUSK-GUEST-CHECK OK".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly ROOT=$HERE/../..
readonly TIMEOUT=${HUSK_BOOT_TIMEOUT:-60}

log() { printf 'boot-check: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

kernel=
case ${1:-} in
"") ;;
--kernel)
    [[ $# -eq 2 && -f $2 ]] || die "--kernel needs an existing file"
    kernel=$2
    ;;
*) die "usage: $0 [--kernel VMLINUX]" ;;
esac

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v gcc >/dev/null || need+=(gcc)
[[ -e /usr/lib/x86_64-linux-gnu/libc.a ]] || need+=(libc6-dev)
command -v cpio >/dev/null || need+=(cpio)
if [[ ${#need[@]} -gt 0 ]]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi

if [[ -z $kernel ]]; then
    kernel=$("$ROOT/guest-kernel/build.sh" | tail -n 1)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

gcc -static -Os -s -Wall -Wextra -Werror -o "$work/init-check" "$HERE/init-check.c"
"$ROOT/guest-image/build.sh" --compress none "$work/init-check" "$work/initrd" >&2
"$ROOT/guest-image/build.sh" --compress gzip "$work/init-check" "$work/initrd.gz" >&2

# boot NAME INITRD EXTRA_CMDLINE [QEMU_ARGS...]: one boot, serial output in
# $work/NAME.log; fails unless the OK line shows up before the timeout.
boot() {
    local name=$1 initrd=$2 extra=$3 start ok_ms rc=0
    shift 3
    start=$(date +%s%N)
    # The serial console is piped through a timestamping reader so the time
    # from QEMU start to the OK line is measured on the host. The timer and
    # TSC words are the runtime's own (kernel_cmdline in
    # runtime/src/hypervisor/mod.rs, docs/guest.md): without them a guest
    # starved by a busy host panics in the IO-APIC timer check.
    timeout --kill-after=5 "$TIMEOUT" qemu-system-x86_64 \
        -M microvm,acpi=off -accel tcg -cpu max -m 256 -smp 2 \
        -nodefaults -no-user-config -nographic -serial stdio \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 reboot=t panic=-1 no_timer_check tsc=reliable quiet $extra" \
        -no-reboot "$@" </dev/null 2>&1 |
        while IFS= read -r line; do
            line=${line%$'\r'}
            printf '%s\n' "$line"
            if [[ $line == "HUSK-GUEST-CHECK OK" ]]; then
                printf '%s\n' "$((($(date +%s%N) - start) / 1000000))" >"$work/$name.ok-ms"
            fi
        done >"$work/$name.log" || rc=$?
    sed 's/^/  | /' "$work/$name.log" >&2
    if [[ $rc -ne 0 ]]; then
        log "$name: qemu failed or timed out after ${TIMEOUT}s (status $rc)"
        return 1
    fi
    if [[ ! -f $work/$name.ok-ms ]]; then
        log "$name: no HUSK-GUEST-CHECK OK line"
        return 1
    fi
    ok_ms=$(<"$work/$name.ok-ms")
    log "$name: OK ${ok_ms} ms after QEMU start"
    printf '%s %s\n' "$name" "$ok_ms" >>"$work/results"
}

failed=0
boot plain "$work/initrd" "" || failed=1

truncate -s 1M "$work/disk.img"
boot virtio-mmio "$work/initrd.gz" "husk_check=virtio-blk" \
    -drive "id=disk,file=$work/disk.img,format=raw,if=none" \
    -device virtio-blk-device,drive=disk || failed=1

boot virtio-net "$work/initrd.gz" "husk_check=virtio-net" \
    -netdev hubport,id=net0,hubid=0 \
    -device virtio-net-device,netdev=net0,mac=52:54:00:12:34:56,host_mtu=1400 || failed=1

# The check must be able to fail: asking for a disk that is not attached has
# to give FAILED, not OK.
if boot missing-device "$work/initrd.gz" "husk_check=virtio-blk"; then
    log "missing-device: reported OK without the device"
    failed=1
elif ! grep -q '^HUSK-GUEST-CHECK FAILED' "$work/missing-device.log"; then
    log "missing-device: no FAILED line"
    failed=1
else
    log "missing-device: FAILED as expected"
fi

[[ $failed -eq 0 ]] || die "guest boot check failed"
log "kernel $kernel"
log "initrd $(stat -c %s "$work/initrd") bytes, gzip'd $(stat -c %s "$work/initrd.gz") bytes"
sed 's/^/boot-check: ok-ms /' "$work/results" >&2
echo "4 passed, 0 failed"
