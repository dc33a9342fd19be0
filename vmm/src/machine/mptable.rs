//! The Intel MultiProcessor table, so the guest finds every vCPU, the
//! IOAPIC and the ISA interrupt routing without ACPI.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::{Error, Result};
use super::layout::{EBDA_START, IOAPIC_START, IRQ_MAX, LAPIC_START};

/// Most vCPUs the table (and 8-bit APIC ids below the IOAPIC's) describes.
pub const MAX_VCPUS: u32 = 254;

const MPC_SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;
/// CPU signature and feature flags (FPU, APIC) of a generic processor.
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4);
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the table for `vcpus` processors (APIC ids 0..vcpus).
pub fn build(vcpus: u32) -> Result<Vec<u8>> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::TooManyVcpus {
            requested: vcpus,
            max: MAX_VCPUS,
        });
    }
    let ioapic_id = vcpus as u8;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for id in 0..vcpus as u8 {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 2;
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[ENTRY_INTSRC, IRQ_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 of every LAPIC is the PIC (ExtINT), LINT1 is NMI.
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = EBDA_START as u32 + 16;
    let length = u16::try_from(44 + entries.len())
        .map_err(|_| Error::BootSetup("MP table too large".into()))?;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&length.to_le_bytes());
    header.extend_from_slice(&[MPC_SPEC_REV, 0]);
    header.extend_from_slice(b"HUSK    ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&[0; 4]); // OEM table pointer
    header.extend_from_slice(&[0; 2]); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    header.extend_from_slice(&[0; 4]); // extended table length, checksum
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.extend_from_slice(&[1, MPC_SPEC_REV, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    let mut out = floating;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the table for `vcpus` processors at the EBDA.
pub fn write(mem: &GuestMemoryMmap, vcpus: u32) -> Result<()> {
    let table = build(vcpus)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(|e| Error::BootSetup(format!("MP table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_hold_and_every_vcpu_is_listed() {
        let t = build(3).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(checksum(&t[0..16]), 0);
        let table = &t[16..];
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(checksum(table), 0);
        let cpus: Vec<u8> = table[44..]
            .chunks(20)
            .take_while(|e| e[0] == ENTRY_PROCESSOR)
            .map(|e| e[1])
            .collect();
        assert_eq!(cpus, vec![0, 1, 2]);
        assert_eq!(table[44 + 3] & CPU_BOOTPROCESSOR, CPU_BOOTPROCESSOR);
    }

    #[test]
    fn zero_or_too_many_vcpus_are_refused() {
        assert!(build(0).is_err());
        assert!(build(MAX_VCPUS + 1).is_err());
    }
}
