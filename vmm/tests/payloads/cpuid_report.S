# Reports over COM1, as raw little-endian dwords, what CPUID tells the guest:
# leaf 1 EAX and ECX, leaf 0xa EAX, leaf 0x8000_0001 ECX and the twelve
# brand string dwords of leaves 0x8000_0002..0x8000_0004; then resets the
# machine through the i8042.
.intel_syntax noprefix
.code64
.globl _start
_start:
    lea rdi, [rip + out]
    mov eax, 1
    cpuid
    stosd
    mov eax, ecx
    stosd
    mov eax, 0xa
    xor ecx, ecx
    cpuid
    stosd
    mov eax, 0x80000001
    cpuid
    mov eax, ecx
    stosd
    mov esi, 0x80000002
1:  mov eax, esi
    cpuid
    stosd
    mov eax, ebx
    stosd
    mov eax, ecx
    stosd
    mov eax, edx
    stosd
    inc esi
    cmp esi, 0x80000004
    jbe 1b
    lea rsi, [rip + out]
    mov ecx, 64
    mov dx, 0x3f8
2:  lodsb
    out dx, al
    loop 2b
    mov al, 0xfe
    out 0x64, al
3:  hlt
    jmp 3b
out: .space 64
