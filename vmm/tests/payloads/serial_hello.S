# Writes a greeting to COM1, then resets the machine through the i8042.
.intel_syntax noprefix
.code64
.globl _start
_start:
    lea rsi, [rip + msg]
    mov ecx, msg_end - msg
    mov dx, 0x3f8
1:  lodsb
    out dx, al
    loop 1b
    mov al, 0xfe
    out 0x64, al
2:  hlt
    jmp 2b
msg: .ascii "hello from the guest\n"
msg_end:
