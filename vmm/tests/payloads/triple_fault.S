# Writes "T" to COM1, loads an empty IDT and raises an exception: with no
# handler the CPU double- then triple-faults, which KVM reports as
# KVM_EXIT_SHUTDOWN.
.intel_syntax noprefix
.code64
.globl _start
_start:
    mov al, 'T'
    mov dx, 0x3f8
    out dx, al
    lidt [rip + empty_idt]
    xor ecx, ecx
    div ecx
1:  hlt
    jmp 1b
empty_idt:
    .word 0
    .quad 0
