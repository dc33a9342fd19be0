# Reports what the VMM put in the zero page (RSI) over COM1: the e820 entry
# count, the raw e820 entries, ramdisk_image, ramdisk_size, then the command
# line with its NUL. Ends with an i8042 reset.
.intel_syntax noprefix
.code64
.globl _start
_start:
    mov rbx, rsi
    mov dx, 0x3f8
    movzx ecx, byte ptr [rbx + 0x1e8]
    mov al, cl
    out dx, al
    imul ecx, ecx, 20
    lea rsi, [rbx + 0x2d0]
1:  test ecx, ecx
    jz 2f
    lodsb
    out dx, al
    dec ecx
    jmp 1b
2:  mov eax, dword ptr [rbx + 0x218]
    call out32
    mov eax, dword ptr [rbx + 0x21c]
    call out32
    mov esi, dword ptr [rbx + 0x228]
3:  lodsb
    out dx, al
    test al, al
    jnz 3b
    mov al, 0xfe
    out 0x64, al
4:  hlt
    jmp 4b
out32:
    mov ecx, 4
5:  out dx, al
    shr eax, 8
    loop 5b
    ret
