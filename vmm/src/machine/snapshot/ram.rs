//! Guest RAM in a snapshot: written out as one file (the RAM ranges back
//! to back, zero pages left as holes), and mapped back `MAP_PRIVATE`, so
//! every VM restored from the file shares its clean pages through the page
//! cache and copies a page only when its guest writes it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Address, Bytes, FileOffset, GuestMemory, GuestMemoryMmap, GuestRegionMmap};

use super::SnapshotError;
use crate::machine::error::{Error, Result};
use crate::machine::memory::ram_ranges;

const PAGE: usize = 4096;
/// Guest RAM is copied out in chunks of this size.
const CHUNK: usize = 2 << 20;

/// Writes all of `mem` to `path` (replacing it) and returns its length.
pub fn write_memory(mem: &GuestMemoryMmap, path: &Path) -> Result<u64> {
    let io = SnapshotError::io;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io(path))?;
    let mut buf = vec![0u8; CHUNK];
    let mut file_offset = 0u64;
    for region in mem.iter() {
        let len = vm_memory::GuestMemoryRegion::len(region);
        let start = vm_memory::GuestMemoryRegion::start_addr(region);
        let mut done = 0u64;
        while done < len {
            let n = CHUNK.min((len - done) as usize);
            let chunk = &mut buf[..n];
            mem.read_slice(chunk, start.unchecked_add(done))
                .map_err(|e| Error::Memory(e.to_string()))?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                // Holes read back as zeros and cost no disk or page cache.
                if page.iter().any(|&b| b != 0) {
                    let at = file_offset + done + (i * PAGE) as u64;
                    file.write_all_at(page, at).map_err(io(path))?;
                }
            }
            done += n as u64;
        }
        file_offset += len;
    }
    file.set_len(file_offset).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    Ok(file_offset)
}

/// Maps `path`, `size` bytes of saved guest RAM, privately: reads come
/// from the file (shared page cache), writes make private copies.
pub fn map_private(path: &Path, size: u64) -> Result<GuestMemoryMmap> {
    let file = File::open(path).map_err(SnapshotError::io(path))?;
    let found = file.metadata().map_err(SnapshotError::io(path))?.len();
    if found != size {
        return Err(SnapshotError::MemoryFile {
            path: path.to_owned(),
            expected: size,
            found,
        }
        .into());
    }
    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (addr, len) in ram_ranges(size) {
        let len_usize = usize::try_from(len).map_err(|e| Error::Memory(e.to_string()))?;
        let clone = file.try_clone().map_err(SnapshotError::io(path))?;
        let region = MmapRegionBuilder::new(len_usize)
            .with_file_offset(FileOffset::new(clone, file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| Error::Memory(e.to_string()))?;
        let region = GuestRegionMmap::new(region, addr)
            .ok_or_else(|| Error::Memory("region overflows the address space".into()))?;
        regions.push(region);
        file_offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| Error::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::config::MemoryBacking;
    use crate::machine::memory;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::GuestAddress;

    #[test]
    fn saved_ram_maps_back_privately_and_sparsely() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let mem = memory::create(4, false, MemoryBacking::Anonymous).unwrap();
        mem.write_obj(0xfeed_beefu32, GuestAddress(0x2000)).unwrap();
        mem.write_obj(0x77u8, GuestAddress((4 << 20) - 1)).unwrap();
        assert_eq!(write_memory(&mem, &path).unwrap(), 4 << 20);
        // Two dirty pages: the rest are holes.
        let blocks = std::fs::metadata(&path).unwrap().blocks();
        assert!(blocks * 512 <= 64 * 1024, "{blocks} blocks allocated");

        let a = map_private(&path, 4 << 20).unwrap();
        let b = map_private(&path, 4 << 20).unwrap();
        assert_eq!(
            a.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
            0xfeed_beef
        );
        assert_eq!(a.read_obj::<u8>(GuestAddress((4 << 20) - 1)).unwrap(), 0x77);
        a.write_obj(1u32, GuestAddress(0x2000)).unwrap();
        assert_eq!(
            b.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
            0xfeed_beef
        );
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[0x2000..0x2004], &0xfeed_beefu32.to_le_bytes());
    }

    #[test]
    fn a_memory_file_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let err = map_private(&path, 4 << 20).unwrap_err().to_string();
        assert!(err.contains("4096 bytes"), "{err}");
        assert!(map_private(&dir.path().join("absent"), 4 << 20).is_err());
    }
}
