# Installs a #GP handler, then reads AMD's legacy performance counter
# select MSR 0xc001_0000 and writes counter MSR 0xc001_0007 (what Linux's
# PMU probe does on every AMD family 6+ CPU). Reports one byte per access
# over COM1: 'G' if it raised #GP, 'N' if it did not; then resets.
.intel_syntax noprefix
.code64
.globl _start
_start:
    # IDT gate 13 (#GP): 64-bit interrupt gate, code selector 0x08.
    lea rax, [rip + gp_handler]
    lea rdi, [rip + idt + 13 * 16]
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0x8e00
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    lea rax, [rip + idt]
    mov qword ptr [rip + idtr + 2], rax
    lidt [rip + idtr]

    mov dx, 0x3f8
    mov byte ptr [rip + faulted], 'N'
    mov ecx, 0xc0010000
    rdmsr
    mov al, byte ptr [rip + faulted]
    mov dx, 0x3f8
    out dx, al

    mov byte ptr [rip + faulted], 'N'
    mov ecx, 0xc0010007
    mov eax, 0xffff
    xor edx, edx
    wrmsr
    mov al, byte ptr [rip + faulted]
    mov dx, 0x3f8
    out dx, al

    mov al, 0xfe
    out 0x64, al
1:  hlt
    jmp 1b

# Skips the faulting two-byte RDMSR/WRMSR.
gp_handler:
    add rsp, 8
    mov byte ptr [rip + faulted], 'G'
    add qword ptr [rsp], 2
    iretq

faulted: .byte 0
.balign 8
idtr:
    .word 14 * 16 - 1
    .quad 0
.balign 16
idt: .space 14 * 16
