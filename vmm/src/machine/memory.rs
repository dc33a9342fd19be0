//! Guest RAM: its layout around the MMIO gap and its host backing.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::config::MemoryBacking;
use super::error::{Error, Result};
use super::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Smallest guest RAM accepted: the boot structures below 1 MiB plus room
/// for a kernel above it.
pub const MIN_MEMORY_MIB: u64 = 2;
/// Largest guest RAM accepted (keeps size arithmetic far from overflow).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// The guest physical ranges of RAM for `size` bytes: below the MMIO gap,
/// and the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), size - low));
    }
    ranges
}

/// Allocates guest RAM of `mib` MiB.
pub fn create(mib: u64, hugepages: bool, backing: MemoryBacking) -> Result<GuestMemoryMmap> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        return Err(Error::MemoryTooSmall {
            mib,
            what: format!("guest memory must be {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB"),
        });
    }
    let size = mib << 20;
    let file = match backing {
        MemoryBacking::Anonymous => None,
        MemoryBacking::Memfd => Some(memfd(size, hugepages)?),
    };
    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (addr, len) in ram_ranges(size) {
        let len = usize::try_from(len).map_err(|e| Error::Memory(e.to_string()))?;
        let mut builder = MmapRegionBuilder::new(len);
        let mut flags = libc::MAP_NORESERVE;
        if let Some(file) = &file {
            let clone = file.try_clone().map_err(|e| Error::Memory(e.to_string()))?;
            builder = builder.with_file_offset(FileOffset::new(clone, file_offset));
            flags |= libc::MAP_SHARED;
        } else {
            flags |= libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            if hugepages {
                flags |= libc::MAP_HUGETLB;
            }
        }
        let region = builder
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .with_hugetlbfs(hugepages)
            .build()
            .map_err(|e| Error::Memory(e.to_string()))?;
        let region = GuestRegionMmap::new(region, addr)
            .ok_or_else(|| Error::Memory("region overflows the address space".into()))?;
        regions.push(region);
        file_offset += len as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| Error::Memory(e.to_string()))
}

fn memfd(size: u64, hugepages: bool) -> Result<File> {
    let mut flags = libc::MFD_CLOEXEC;
    if hugepages {
        flags |= libc::MFD_HUGETLB;
    }
    // SAFETY: the name is a NUL-terminated literal; the result is checked.
    let fd = unsafe { libc::memfd_create(c"husk-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::Memory(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| Error::Memory(format!("sizing memfd: {e}")))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemory};

    #[test]
    fn small_memory_is_one_low_range() {
        assert_eq!(ram_ranges(64 << 20), vec![(GuestAddress(0), 64 << 20)]);
    }

    #[test]
    fn memory_beyond_the_gap_continues_at_4g() {
        let ranges = ram_ranges(MMIO_GAP_START + 0x1000);
        assert_eq!(
            ranges,
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(MMIO_GAP_END), 0x1000)
            ]
        );
    }

    #[test]
    fn memfd_backed_memory_is_usable() {
        let mem = create(4, false, MemoryBacking::Memfd).unwrap();
        mem.write_obj(0xabcdu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0xabcd);
        assert!(mem.iter().all(|r| r.file_offset().is_some()));
    }

    #[test]
    fn too_little_memory_is_refused() {
        assert!(matches!(
            create(1, false, MemoryBacking::Anonymous),
            Err(Error::MemoryTooSmall { .. })
        ));
    }
}
