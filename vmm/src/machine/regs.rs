//! vCPU register state for the Linux 64-bit and PVH 32-bit entries: boot
//! GDT, identity page tables, segment/control registers, MSRs, FPU, LAPIC.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use tracing::warn;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::{kvm, Error, Result};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDPT_START, PD_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

/// How the first vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit boot protocol: long mode, paging on, RSI = zero page.
    Linux64(u64),
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh32(u64),
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const GDT_CODE64: u64 = gdt_entry(0xa09b, 0, 0xfffff);
const GDT_CODE32: u64 = gdt_entry(0xc09b, 0, 0xfffff);
const GDT_DATA: u64 = gdt_entry(0xc093, 0, 0xfffff);
const GDT_TSS: u64 = gdt_entry(0x808b, 0, 0xfffff);

/// Encodes a GDT descriptor from its flags/access word, base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The `kvm_segment` equivalent of GDT descriptor `entry` at `index`.
fn segment(index: u16, entry: u64) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = ((entry >> 32) & 0xf_0000) as u32 | (entry & 0xffff) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the boot GDT, an empty IDT and page tables identity-mapping the
/// first 4 GiB with 2 MiB pages (so early code reaches the MMIO gap too).
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let err = |e: vm_memory::GuestMemoryError| Error::BootSetup(e.to_string());
    let gdt = [0, GDT_CODE64, GDT_DATA, GDT_TSS, GDT_CODE32];
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(err)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(err)?;
    mem.write_obj(PDPT_START | 0x3, GuestAddress(PML4_START))
        .map_err(err)?;
    for pd in 0..4u64 {
        let pd_addr = PD_START + pd * 0x1000;
        mem.write_obj(pd_addr | 0x3, GuestAddress(PDPT_START + pd * 8))
            .map_err(err)?;
        for i in 0..512u64 {
            let page = ((pd * 512 + i) << 21) | 0x83;
            mem.write_obj(page, GuestAddress(pd_addr + i * 8))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Sets segment, descriptor-table and control registers for `entry`.
pub fn setup_sregs(vcpu: &VcpuFd, entry: EntryPoint) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let (code, data) = match entry {
        EntryPoint::Linux64(_) => (segment(1, GDT_CODE64), segment(2, GDT_DATA)),
        EntryPoint::Pvh32(_) => (segment(4, GDT_CODE32), segment(2, GDT_DATA)),
    };
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = 5 * 8 - 1;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(3, GDT_TSS);
    match entry {
        EntryPoint::Linux64(_) => {
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh32(_) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))
}

/// Sets general registers: entry point and the boot-parameter pointer.
pub fn setup_regs(vcpu: &VcpuFd, entry: EntryPoint) -> Result<()> {
    let regs = match entry {
        EntryPoint::Linux64(rip) => kvm_regs {
            rflags: 0x2,
            rip,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
        EntryPoint::Pvh32(rip) => kvm_regs {
            rflags: 0x2,
            rip,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

/// Sets the x87/SSE control words to their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

/// Boot values for the MSRs Linux expects a firmware to have set.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs =
        Msrs::from_entries(&entries).map_err(|e| Error::BootSetup(format!("MSR list: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        // KVM stops at the first MSR it rejects; an emulating KVM lacks some.
        warn!(
            set,
            wanted = entries.len(),
            "KVM accepted only part of the boot MSRs"
        );
    }
    Ok(())
}

/// Wires LINT0 to ExtINT (the PIC) and LINT1 to NMI, as a PC firmware does.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_EXTINT: u32 = 0x7;
    const APIC_MODE_NMI: u32 = 0x4;

    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    set_lvt_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

fn set_lvt_mode(lapic: &mut kvm_lapic_state, reg: usize, mode: u32) {
    let Some(bytes) = lapic.regs.get_mut(reg..reg + 4) else {
        return;
    };
    let mut raw = [0u8; 4];
    for (d, s) in raw.iter_mut().zip(bytes.iter()) {
        *d = *s as u8;
    }
    let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (d, s) in bytes.iter_mut().zip(value.to_le_bytes()) {
        *d = s as _;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment(1, GDT_CODE64);
        assert_eq!((code.base, code.limit, code.selector), (0, 0xffff_ffff, 8));
        assert_eq!((code.type_, code.l, code.db, code.present), (0xb, 1, 0, 1));
        let code32 = segment(4, GDT_CODE32);
        assert_eq!((code32.l, code32.db), (0, 1));
        let data = segment(2, GDT_DATA);
        assert_eq!((data.type_, data.s, data.g), (3, 1, 1));
    }

    #[test]
    fn identity_map_covers_4g_with_2m_pages() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPT_START | 3);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_START + 24)).unwrap();
        assert_eq!(pdpt3, (PD_START + 0x3000) | 3);
        let last: u64 = mem
            .read_obj(GuestAddress(PD_START + 0x3000 + 511 * 8))
            .unwrap();
        assert_eq!(last, 0xffe0_0000 | 0x83);
    }
}
