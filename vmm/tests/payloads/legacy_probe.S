# Probes the CMOS RTC and the i8042 the way Linux does, through real port
# I/O exits, and reports every byte read over COM1 (see the test for the
# order); then waits for the i8042 input buffer to drain, as Linux's
# reboot=k does, and resets the machine with 0xfe.
.intel_syntax noprefix
.code64
.globl _start
_start:
    lea rdi, [rip + out]
    # CMOS: status A, B, D, then seconds .. year.
    mov al, 0x0a
    call cmos_read
    mov al, 0x0b
    call cmos_read
    mov al, 0x0d
    call cmos_read
    mov al, 0x00
    call cmos_read
    mov al, 0x02
    call cmos_read
    mov al, 0x04
    call cmos_read
    mov al, 0x07
    call cmos_read
    mov al, 0x08
    call cmos_read
    mov al, 0x09
    call cmos_read
    # CMOS RAM byte 0x0e written with the NMI mask bit set in the index,
    # read back without it.
    mov al, 0x8e
    out 0x70, al
    mov al, 0x5a
    out 0x71, al
    mov al, 0x0e
    call cmos_read
    # i8042: status at rest.
    in al, 0x64
    stosb
    # Self-test: status, answer.
    mov al, 0xaa
    out 0x64, al
    call kbc_reply
    # Read the CTR.
    mov al, 0x20
    out 0x64, al
    call kbc_reply
    # Write CTR 0x74 and read it back.
    mov al, 0x60
    out 0x64, al
    mov al, 0x74
    out 0x60, al
    mov al, 0x20
    out 0x64, al
    call kbc_reply
    # Aux loopback of 0x5a: status (AUXDATA), byte.
    mov al, 0xd3
    out 0x64, al
    mov al, 0x5a
    out 0x60, al
    call kbc_reply
    # Keyboard interface test.
    mov al, 0xab
    out 0x64, al
    call kbc_reply
    # Status once drained.
    in al, 0x64
    stosb

    lea rsi, [rip + out]
    mov rcx, rdi
    sub rcx, rsi
    mov dx, 0x3f8
1:  lodsb
    out dx, al
    loop 1b
    # reboot=k: wait for IBF clear, then pulse reset.
2:  in al, 0x64
    test al, 0x02
    jnz 2b
    mov al, 0xfe
    out 0x64, al
3:  hlt
    jmp 3b

cmos_read:
    out 0x70, al
    in al, 0x71
    stosb
    ret

# Stores the status, then the data byte.
kbc_reply:
    in al, 0x64
    stosb
    in al, 0x60
    stosb
    ret

out: .space 64
