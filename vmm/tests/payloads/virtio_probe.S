# Finds the virtio-mmio window named by "virtio_mmio.device=...@0x<addr>:..."
# on the command line, reports magic, version, device id and both feature
# words over COM1, negotiates (ACKNOWLEDGE, DRIVER, all features,
# FEATURES_OK), reports the status read back, then resets via the i8042.
.intel_syntax noprefix
.code64
.globl _start
_start:
    mov esi, dword ptr [rsi + 0x228]
find:
    mov eax, dword ptr [rsi]
    and eax, 0xffffff
    cmp eax, 0x783040          # "@0x"
    je found
    cmp byte ptr [rsi], 0
    je fail
    inc rsi
    jmp find
found:
    add rsi, 3
    xor ebx, ebx
hex:
    movzx eax, byte ptr [rsi]
    cmp al, '0'
    jb parsed
    cmp al, '9'
    jbe digit
    cmp al, 'a'
    jb parsed
    cmp al, 'f'
    ja parsed
    sub al, 'a' - 10
    jmp accumulate
digit:
    sub al, '0'
accumulate:
    shl rbx, 4
    or rbx, rax
    inc rsi
    jmp hex
parsed:
    mov dx, 0x3f8
    mov eax, dword ptr [rbx + 0x00]
    call out32
    mov eax, dword ptr [rbx + 0x04]
    call out32
    mov eax, dword ptr [rbx + 0x08]
    call out32
    mov dword ptr [rbx + 0x14], 0
    mov r8d, dword ptr [rbx + 0x10]
    mov eax, r8d
    call out32
    mov dword ptr [rbx + 0x14], 1
    mov r9d, dword ptr [rbx + 0x10]
    mov eax, r9d
    call out32
    mov dword ptr [rbx + 0x70], 1
    mov dword ptr [rbx + 0x70], 3
    mov dword ptr [rbx + 0x24], 0
    mov dword ptr [rbx + 0x20], r8d
    mov dword ptr [rbx + 0x24], 1
    mov dword ptr [rbx + 0x20], r9d
    mov dword ptr [rbx + 0x70], 11
    mov eax, dword ptr [rbx + 0x70]
    call out32
fail:
    mov al, 0xfe
    out 0x64, al
1:  hlt
    jmp 1b
out32:
    mov ecx, 4
2:  out dx, al
    shr eax, 8
    loop 2b
    ret
