#!/usr/bin/env bash
# Fast checks (no kernel build, no VM) of guest-image/build.sh and of
# guest-kernel/build.sh --verify-config. Needs gcc with static glibc, cpio.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly ROOT=$HERE/../..
readonly IMAGE=$ROOT/guest-image/build.sh
readonly KERNEL=$ROOT/guest-kernel/build.sh
readonly FRAGMENT=$ROOT/guest-kernel/config.fragment

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
check() {
    local name=$1
    shift
    if "$@" >"$work/out" 2>&1; then
        printf 'ok   %s\n' "$name"
        passed=$((passed + 1))
    else
        printf 'FAIL %s\n' "$name"
        sed 's/^/     | /' "$work/out"
        failed=$((failed + 1))
    fi
}

printf 'int main(void) { return 0; }\n' >"$work/t.c"
gcc -static -Os -o "$work/static" "$work/t.c" || exit 1
gcc -o "$work/dynamic" "$work/t.c" || exit 1

same_bytes() {
    local kind=$1
    (umask 022 && "$IMAGE" --compress "$kind" "$work/static" "$work/a.$kind") &&
        (umask 077 && cd / && "$IMAGE" --compress "$kind" "$work/static" "$work/b.$kind") &&
        cmp "$work/a.$kind" "$work/b.$kind"
}
check "same input gives identical gzip initrd" same_bytes gzip
check "same input gives identical plain initrd" same_bytes none

epoch_changes_bytes() {
    SOURCE_DATE_EPOCH=1 "$IMAGE" --compress none "$work/static" "$work/e1" &&
        ! cmp -s "$work/e1" "$work/a.none"
}
check "SOURCE_DATE_EPOCH sets the mtimes" epoch_changes_bytes

layout() {
    local listing expected
    listing=$(cpio -itv --quiet <"$work/a.none" | awk '{ print $1, $3, $4, $9 }')
    expected='drwxr-xr-x root root dev
drwxr-xr-x root root etc
-rwxr-xr-x root root init
drwxr-xr-x root root proc
drwxr-xr-x root root run
drwxr-xr-x root root sys
drwxrwxrwt root root tmp'
    [[ $listing == "$expected" ]] || { printf 'got:\n%s\n' "$listing"; return 1; }
    # /init is the binary without its symbols (--debug keeps them).
    strip --strip-all -o "$work/static.stripped" "$work/static" &&
        cpio -i --quiet --to-stdout init <"$work/a.none" | cmp - "$work/static.stripped" &&
        ! cmp -s "$work/static" "$work/static.stripped"
}
check "initrd holds /init (stripped) and the mount points, sorted, owned by root" layout

debug_keeps_symbols() {
    "$IMAGE" --debug "$work/static" "$work/d.none" >/dev/null &&
        cpio -i --quiet --to-stdout init <"$work/d.none" | cmp - "$work/static"
}
check "--debug keeps /init's symbols" debug_keeps_symbols

gzip_is_cpio() {
    gzip -dc "$work/a.gzip" | cmp - "$work/a.none"
}
check "gzip initrd is the plain one compressed" gzip_is_cpio

default_is_plain() {
    "$IMAGE" "$work/static" "$work/default" && cmp "$work/default" "$work/a.none"
}
check "the default initrd is an uncompressed cpio" default_is_plain

rejects_dynamic() {
    ! "$IMAGE" "$work/dynamic" "$work/d" && [[ ! -e $work/d ]]
}
check "a dynamically linked /init is refused" rejects_dynamic

rejects_bad_args() {
    ! "$IMAGE" --compress xz "$work/static" "$work/x" &&
        ! "$IMAGE" "$work/missing" "$work/x" && ! "$IMAGE" "$work/static"
}
check "bad arguments are refused" rejects_bad_args

debug_has_busybox() {
    [[ -x /bin/busybox ]] || { echo "busybox-static not installed"; return 1; }
    "$IMAGE" --debug --compress none "$work/static" "$work/dbg" &&
        cpio -it --quiet <"$work/dbg" | grep -qx 'bin/busybox' &&
        cpio -it --quiet <"$work/dbg" | grep -qx 'bin/sh'
}
check "--debug adds busybox" debug_has_busybox

# A .config that is exactly the fragment's settings passes; one where Kconfig
# "dropped" an option or clamped a number fails, naming the option.
grep -E '^(CONFIG_|# CONFIG_)' "$FRAGMENT" >"$work/good.config"
check "verify-config accepts a config that has every fragment option" \
    "$KERNEL" --verify-config "$work/good.config"

dropped_is_named() {
    grep -v '^CONFIG_VIRTIO_FS=y$' "$work/good.config" >"$work/bad.config"
    echo '# CONFIG_VIRTIO_FS is not set' >>"$work/bad.config"
    ! "$KERNEL" --verify-config "$work/bad.config" 2>"$work/err" &&
        grep -q 'CONFIG_VIRTIO_FS=y' "$work/err"
}
check "verify-config names a dropped option" dropped_is_named

clamped_is_named() {
    sed 's/^CONFIG_NR_CPUS=.*/CONFIG_NR_CPUS=2/' "$work/good.config" >"$work/bad.config"
    ! "$KERNEL" --verify-config "$work/bad.config" 2>"$work/err" &&
        grep -q 'CONFIG_NR_CPUS=64 (now: CONFIG_NR_CPUS=2)' "$work/err"
}
check "verify-config names a changed value" clamped_is_named

enabled_is_named() {
    grep -v 'CONFIG_MODULES' "$work/good.config" >"$work/bad.config"
    echo 'CONFIG_MODULES=y' >>"$work/bad.config"
    ! "$KERNEL" --verify-config "$work/bad.config" 2>"$work/err" &&
        grep -q 'CONFIG_MODULES is not set (now: CONFIG_MODULES=y)' "$work/err"
}
check "verify-config names an option that must stay off" enabled_is_named

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
