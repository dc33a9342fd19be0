# Counts in RBX, in R15 (from 1000) and at 0x200000, one port write per
# round, until the host writes 1 at 0x201000; then reports RBX, R15 and
# the memory counter (8 bytes LE each) over COM1 and resets the machine
# through the i8042. The snapshot tests pause, save and restore it
# mid-count: all three must go on from the same value. (No FPU or SSE:
# this host's KVM cannot emulate them in a payload without firmware.)
.intel_syntax noprefix
.code64
.globl _start
_start:
    mov r15, 1000
    xor ebx, ebx
1:  inc rbx
    inc r15
    mov qword ptr [0x200000], rbx
    mov al, bl
    out 0x80, al                  # unclaimed port: an exit each round
    cmp byte ptr [0x201000], 1
    jne 1b
    mov rax, rbx
    call report
    mov rax, r15
    call report
    mov rax, qword ptr [0x200000]
    call report
    mov al, 0xfe
    out 0x64, al
2:  hlt
    jmp 2b

# Writes RAX's 8 bytes to COM1, low byte first.
report:
    mov ecx, 8
    mov dx, 0x3f8
3:  out dx, al
    shr rax, 8
    loop 3b
    ret
