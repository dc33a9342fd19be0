# PVH entry: 32-bit protected mode, paging off, EBX = hvm_start_info.
# Reports the start info magic and the memory map entry count, then resets.
.intel_syntax noprefix
.code32
.globl _start
_start:
    mov dx, 0x3f8
    mov eax, dword ptr [ebx]
    call out32
    mov eax, dword ptr [ebx + 0x30]
    call out32
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
