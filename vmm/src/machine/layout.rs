//! The guest physical address map and interrupt lines of the machine.
//!
//! ```text
//! 0x0000_0500  boot GDT            0x0000_0520  boot IDT
//! 0x0000_6000  PVH start info (+ module list and memory map)
//! 0x0000_7000  zero page (struct boot_params)
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 four PDs (identity map of 4 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA: MP table
//! 0x0010_0000  kernel (HIMEM), then initrd at the top of low RAM
//! 0xd000_0000  virtio-mmio windows, 4 KiB each; MMIO gap up to 4 GiB
//! 0xfec0_0000  IOAPIC             0xfee0_0000  LAPIC
//! 0x1_0000_0000  RAM above the gap, if any
//! ```

/// Boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty; the kernel installs its own before enabling interrupts).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux zero page.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot identity map.
pub const PDPT_START: u64 = 0xa000;
/// First of the four page directories (2 MiB pages) covering 4 GiB.
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Capacity reserved for the command line, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Extended BIOS data area; the MP table lives here and low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory: kernels are loaded at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap; RAM beyond it continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC_START: u64 = 0xfee0_0000;

/// COM1 I/O ports.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1 interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// i8042 keyboard interrupt line.
pub const I8042_KBD_IRQ: u32 = 1;
/// i8042 mouse (aux) interrupt line; no virtio device gets it.
pub const I8042_AUX_IRQ: u32 = 12;
/// CMOS RTC index port; the data port follows.
pub const CMOS_PORT: u16 = 0x70;
/// Interrupt line of the first virtio-mmio device; the next ones follow.
pub const VIRTIO_IRQ_START: u32 = 5;
/// Last IOAPIC pin (the in-kernel IOAPIC has 24).
pub const IRQ_MAX: u32 = 23;
/// How many virtio-mmio devices fit on the free interrupt lines (all from
/// [`VIRTIO_IRQ_START`] to [`IRQ_MAX`] but the i8042's aux line).
pub const MAX_VIRTIO_DEVICES: usize = (IRQ_MAX - VIRTIO_IRQ_START) as usize;

/// Guest address and interrupt line of the `index`th virtio-mmio device:
/// lines from [`VIRTIO_IRQ_START`] up, skipping [`I8042_AUX_IRQ`], which
/// Linux's i8042 driver tests and then owns.
pub fn virtio_mmio_slot(index: usize) -> Option<(u64, u32)> {
    if index >= MAX_VIRTIO_DEVICES {
        return None;
    }
    let i = index as u64;
    let mut irq = VIRTIO_IRQ_START + index as u32;
    if irq >= I8042_AUX_IRQ {
        irq += 1;
    }
    Some((VIRTIO_MMIO_START + i * VIRTIO_MMIO_SIZE, irq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_slots_skip_the_i8042_aux_line() {
        assert_eq!(virtio_mmio_slot(0), Some((0xd000_0000, 5)));
        assert_eq!(virtio_mmio_slot(6), Some((0xd000_6000, 11)));
        assert_eq!(virtio_mmio_slot(7), Some((0xd000_7000, 13)));
        assert_eq!(virtio_mmio_slot(17), Some((0xd001_1000, IRQ_MAX)));
        assert_eq!(virtio_mmio_slot(18), None);
        assert_eq!(MAX_VIRTIO_DEVICES, 18);
    }
}
