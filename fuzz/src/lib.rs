//! Shared pieces of husk's fuzz targets: guest memory, hostile descriptors,
//! and small bounds that keep one input fast.
//!
//! Each target lives in `fuzz_targets/`; see `docs/fuzzing.md`.

use arbitrary::Arbitrary;
use husk_vmm::test_support::{write_descriptor, Descriptor};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Where buffers the harness places for the guest start (queues sit below).
pub const BUF_START: u64 = 0x1_0000;

/// Guest RAM of `size` bytes at address 0, then a second region after a
/// one-page hole, so chains can straddle a gap the way they may in a real
/// memory map.
pub fn guest_memory(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), size as usize),
        (GuestAddress(size + 0x1000), 0x1000),
    ])
    .expect("guest memory")
}

/// A guest address as a hostile driver picks it: usually inside the buffer
/// area (so requests get parsed), sometimes anything at all.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr {
    /// `BUF_START` plus this many 64-byte steps (wrapped into RAM).
    Buf(u16),
    /// The end of RAM minus this many bytes (chains that run off the end).
    NearEnd(u8),
    /// Any address at all.
    Raw(u64),
}

impl Addr {
    /// The address in a guest of `mem_size` bytes.
    pub fn resolve(self, mem_size: u64) -> u64 {
        match self {
            Addr::Buf(step) => {
                let span = mem_size - BUF_START;
                BUF_START + (u64::from(step) * 64) % span
            }
            Addr::NearEnd(back) => mem_size.saturating_sub(u64::from(back)),
            Addr::Raw(addr) => addr,
        }
    }
}

/// One descriptor as a hostile driver writes it: flags and `next` are raw.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct RawDesc {
    /// Where the buffer is.
    pub addr: Addr,
    /// Its length, raw.
    pub len: u32,
    /// `VIRTQ_DESC_F_*`, raw (NEXT, WRITE, INDIRECT, anything else).
    pub flags: u16,
    /// The next descriptor's index, raw.
    pub next: u16,
}

impl RawDesc {
    /// The descriptor as the table holds it.
    pub fn resolve(self, mem_size: u64) -> Descriptor {
        (self.addr.resolve(mem_size), self.len, self.flags, self.next)
    }
}

/// Writes `descs` into an indirect table at `table` (for INDIRECT chains).
pub fn write_table(mem: &GuestMemoryMmap, table: u64, descs: &[RawDesc], mem_size: u64) {
    for (slot, desc) in descs.iter().enumerate() {
        let Ok(slot) = u16::try_from(slot) else {
            return;
        };
        write_descriptor(mem, table, slot, desc.resolve(mem_size));
    }
}

/// `bytes` cut to at most `max` bytes: inputs stay small, so one run is fast.
pub fn capped(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}
