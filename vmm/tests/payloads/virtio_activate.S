# Like virtio_probe, then sets up queue 0 (16 entries, rings at 2 MiB),
# sets DRIVER_OK, notifies queue 0 and polls InterruptStatus until the
# device raises the used-buffer interrupt; reports status and interrupt
# status, acks, then resets via the i8042.
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
    mov dword ptr [rbx + 0x30], 0        # QueueSel
    mov dword ptr [rbx + 0x38], 16       # QueueNum
    mov dword ptr [rbx + 0x80], 0x200000 # QueueDesc
    mov dword ptr [rbx + 0x84], 0
    mov dword ptr [rbx + 0x90], 0x201000 # QueueDriver (avail)
    mov dword ptr [rbx + 0x94], 0
    mov dword ptr [rbx + 0xa0], 0x202000 # QueueDevice (used)
    mov dword ptr [rbx + 0xa4], 0
    mov dword ptr [rbx + 0x44], 1        # QueueReady
    mov dword ptr [rbx + 0x70], 15       # DRIVER_OK
    mov eax, dword ptr [rbx + 0x70]
    call out32
    mov dword ptr [rbx + 0x50], 0        # QueueNotify(0)
poll:
    mov eax, dword ptr [rbx + 0x60]
    test eax, 1
    jz poll
    call out32
    mov dword ptr [rbx + 0x64], 1        # InterruptACK
    mov eax, dword ptr [rbx + 0x60]
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
