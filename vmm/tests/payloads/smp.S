# The boot vCPU reports its CPUID APIC id as a digit over COM1, copies the
# real-mode AP code to 0x10000 and starts vCPU 1 with INIT + SIPI through
# its LAPIC. The AP reports its own APIC id and sets a flag at 0x8000; then
# the boot vCPU resets the machine through the i8042.
.intel_syntax noprefix
.code64
.globl _start
_start:
    mov eax, 1
    cpuid
    shr ebx, 24
    lea eax, [rbx + '0']
    mov dx, 0x3f8
    out dx, al
    lea rsi, [rip + ap_start]
    mov edi, 0x10000
    mov ecx, ap_end - ap_start
    rep movsb
    mov edi, 0xfee00300
    mov dword ptr [rdi + 0x10], 1 << 24
    mov dword ptr [rdi], 0x4500      # INIT
    mov dword ptr [rdi + 0x10], 1 << 24
    mov dword ptr [rdi], 0x4610      # SIPI, vector 0x10 -> 0x10000
wait:
    cmp byte ptr [0x8000], 1
    jne wait
    mov al, 0xfe
    out 0x64, al
1:  hlt
    jmp 1b

.code16
ap_start:
    mov eax, 1
    cpuid
    shr ebx, 24
    mov al, bl
    add al, '0'
    mov dx, 0x3f8
    out dx, al
    xor ax, ax
    mov ds, ax
    mov byte ptr ds:[0x8000], 1
2:  cli
    hlt
    jmp 2b
ap_end:
