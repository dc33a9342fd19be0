//! Linux boot: kernel and initrd loading, command line, zero page (64-bit
//! boot protocol) and PVH start info.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{
    self, load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::{Error, Result};
use super::layout::{
    CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};
use super::memory::ram_ranges;
use super::regs::EntryPoint;

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
const XLF_KERNEL_64: u16 = 1;
/// The 64-bit entry of a bzImage is this far into its protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `initrd_addr_max` of kernels whose header predates protocol 2.03.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// `initrd_addr_max` assumed for an ELF vmlinux, which carries no header.
const ELF_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const PAGE_SIZE: u64 = 0x1000;

/// The kernel formats the machine boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF `vmlinux`.
    Elf,
    /// A `bzImage` (x86 boot protocol).
    BzImage,
}

/// The format of the kernel file at `path`, from its first bytes; `None`
/// when it is neither (such a file makes [`Vm::new`](super::Vm::new) fail
/// with [`Error::KernelFormat`]). Lets a host check judge a kernel without
/// building a VM.
pub fn kernel_format(path: &Path) -> std::io::Result<Option<KernelFormat>> {
    detect_format(&mut File::open(path)?)
}

/// Where boot placed things; returned for logging and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootLayout {
    /// How the boot vCPU enters the kernel.
    pub entry: EntryPoint,
    /// First byte after the loaded kernel.
    pub kernel_end: u64,
    /// Guest address and size of the initrd.
    pub initrd: Option<(u64, u64)>,
}

/// Loads kernel, initrd and command line into `mem` (of `mem_size` bytes)
/// and writes the boot parameters the entry point expects.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel_path: &Path,
    initrd_path: Option<&Path>,
    cmdline: &Cmdline,
) -> Result<BootLayout> {
    let mib = mem_size >> 20;
    let low_end = mem_size.min(MMIO_GAP_START);
    let read_err = |source| Error::KernelRead {
        path: kernel_path.to_owned(),
        source,
    };
    let mut kernel = File::open(kernel_path).map_err(read_err)?;
    let format = detect_format(&mut kernel).map_err(read_err)?;
    let Some(format) = format else {
        return Err(Error::KernelFormat(kernel_path.to_owned()));
    };
    // An ELF's file size says nothing about what it loads (symbols, debug
    // info); a bzImage's is what gets copied to guest memory.
    let kernel_size = kernel.metadata().map_err(read_err)?.len();
    if format == KernelFormat::BzImage && kernel_size > low_end.saturating_sub(HIMEM_START) {
        return Err(too_small(mib, format!("the kernel is {kernel_size} bytes")));
    }

    let loaded = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))),
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))
        }
    }
    .map_err(|source| match source {
        loader::Error::Elf(loader::elf::Error::ReadKernelImage)
        | loader::Error::Bzimage(loader::bzimage::Error::ReadBzImageCompressedKernel) => {
            too_small(mib, "the kernel's segments do not fit".into())
        }
        source => Error::KernelLoad {
            path: kernel_path.to_owned(),
            source,
        },
    })?;
    let (entry, initrd_max, mut kernel_end) = entry_point(kernel_path, &loaded)?;
    if let Some(hdr) = loaded.setup_header {
        // The decompressor needs init_size bytes from the load address.
        kernel_end = kernel_end.max(loaded.kernel_load.0 + u64::from(hdr.init_size));
    }
    if kernel_end > low_end {
        return Err(too_small(
            mib,
            format!("the kernel needs memory up to {kernel_end:#x}"),
        ));
    }

    let initrd = match initrd_path {
        Some(path) => Some(load_initrd(
            mem, mib, path, kernel_end, low_end, initrd_max,
        )?),
        None => None,
    };
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| Error::BootSetup(format!("command line: {e}")))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(Error::Cmdline)?
        .as_bytes_with_nul()
        .len();
    if let Some(hdr) = loaded.setup_header {
        // A bzImage states the longest command line it accepts (without NUL).
        let max = hdr.cmdline_size as usize;
        if hdr.version >= 0x0206 && cmdline_len - 1 > max {
            return Err(Error::CmdlineTooLong {
                len: cmdline_len - 1,
                max,
            });
        }
    }

    write_zero_page(mem, mem_size, &loaded, cmdline_len, initrd)?;
    if let EntryPoint::Pvh32(_) = entry {
        write_pvh_start_info(mem, mem_size, initrd)?;
    }
    Ok(BootLayout {
        entry,
        kernel_end,
        initrd,
    })
}

fn too_small(mib: u64, what: String) -> Error {
    Error::MemoryTooSmall { mib, what }
}

fn detect_format(kernel: &mut File) -> std::io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x206];
    let mut filled = 0;
    while filled < head.len() {
        let n = kernel.read(&mut head[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    kernel.seek(SeekFrom::Start(0))?;
    let head = &head[..filled];
    if head.starts_with(b"\x7fELF") {
        return Ok(Some(KernelFormat::Elf));
    }
    if head.get(0x202..0x206) == Some(&KERNEL_HDR_MAGIC.to_le_bytes()[..]) {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

/// The entry point, the initrd ceiling and the kernel's end.
fn entry_point(path: &Path, loaded: &KernelLoaderResult) -> Result<(EntryPoint, u64, u64)> {
    match loaded.setup_header {
        None => {
            let entry = match loaded.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => EntryPoint::Pvh32(addr.0),
                _ => EntryPoint::Linux64(loaded.kernel_load.0),
            };
            Ok((entry, ELF_INITRD_ADDR_MAX, loaded.kernel_end))
        }
        Some(hdr) => {
            if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(Error::KernelNo64BitEntry(path.to_owned()));
            }
            let initrd_max = if hdr.version >= 0x0203 {
                u64::from(hdr.initrd_addr_max)
            } else {
                DEFAULT_INITRD_ADDR_MAX
            };
            let entry = EntryPoint::Linux64(loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET);
            Ok((entry, initrd_max, loaded.kernel_end))
        }
    }
}

/// Puts the initrd as high as allowed, page aligned, above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    mib: u64,
    path: &Path,
    kernel_end: u64,
    low_end: u64,
    initrd_max: u64,
) -> Result<(u64, u64)> {
    let read_err = |source| Error::InitrdRead {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let ceiling = low_end.min(initrd_max.saturating_add(1));
    let floor = kernel_end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let addr = ceiling
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= floor)
        .ok_or_else(|| {
            too_small(
                mib,
                format!(
                    "the initrd ({size} bytes) does not fit between the kernel and {ceiling:#x}"
                ),
            )
        })?;
    let len = usize::try_from(size).map_err(|e| Error::BootSetup(e.to_string()))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| read_err(std::io::Error::other(e.to_string())))?;
    Ok((addr, size))
}

/// RAM ranges as the guest should see them: low RAM stops at the EBDA and
/// the legacy hole up to 1 MiB is not RAM.
fn e820_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    let mut out = vec![(0, EBDA_START)];
    for (start, len) in ram_ranges(mem_size) {
        let end = start.0 + len;
        let start = start.0.max(HIMEM_START);
        if end > start {
            out.push((start, end - start));
        }
    }
    out
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    loaded: &KernelLoaderResult,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    let mut params = boot_params::default();
    if let Some(hdr) = loaded.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    if loaded.setup_header.is_none() {
        // A bzImage's cmdline_size is the kernel's limit and stays as is;
        // a vmlinux has no header, so tell it the length we wrote.
        params.hdr.cmdline_size = cmdline_len as u32;
    }
    if let Some((addr, size)) = initrd {
        // The initrd is placed below the MMIO gap, so both fit in 32 bits.
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let ranges = e820_ranges(mem_size);
    for (slot, (addr, size)) in params.e820_table.iter_mut().zip(ranges.iter()) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            type_: E820_RAM,
        };
    }
    params.e820_entries = ranges.len().min(params.e820_table.len()) as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| Error::BootSetup(format!("zero page: {e}")))
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_ranges(mem_size)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST_START),
        );
    }
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| Error::BootSetup(format!("PVH start info: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_format_tells_elf_bzimage_and_anything_else_apart() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let elf = file("elf", b"\x7fELF\x02\x01\x01");
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bz = file("bz", &bz);
        let junk = file("junk", &[0x90; 0x300]);
        let empty = file("empty", b"");
        assert_eq!(kernel_format(&elf).unwrap(), Some(KernelFormat::Elf));
        assert_eq!(kernel_format(&bz).unwrap(), Some(KernelFormat::BzImage));
        assert_eq!(kernel_format(&junk).unwrap(), None);
        assert_eq!(kernel_format(&empty).unwrap(), None);
        assert!(kernel_format(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn e820_skips_the_legacy_hole_and_the_mmio_gap() {
        assert_eq!(
            e820_ranges(64 << 20),
            vec![(0, EBDA_START), (HIMEM_START, (64 << 20) - HIMEM_START)]
        );
        let big = MMIO_GAP_START + (1 << 20);
        assert_eq!(
            e820_ranges(big)[2],
            (super::super::layout::MMIO_GAP_END, 1 << 20)
        );
    }
}
