//! Test support (feature `test-support`), shared by husk-vmm's payload tests
//! and the runtime's builtin-backend tests so neither copies the other.
//!
//! Builds test payloads: assembles `vmm/tests/payloads/<name>.S` with
//! binutils into a flat image linked at [`LOAD_ADDR`], and wraps it as a
//! minimal ELF vmlinux (64-bit entry or PVH note) or bzImage in a temp file.
//! Also counts the VMM's vCPU threads, so tests can prove none is left, and
//! plays the driver's side of a split virtqueue ([`DriverQueue`]) for the
//! device tests.
//!
//! Test code: it panics on failure instead of returning errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio::{InterruptKind, VirtioInterrupt};

/// Where payloads are linked and loaded (the kernel's usual 1 MiB).
pub const LOAD_ADDR: u64 = 0x10_0000;

/// Flat payload code.
pub struct Payload {
    code: Vec<u8>,
}

/// A kernel file on disk, removed on drop.
pub struct Kernel {
    _dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Kernel {
    /// A kernel path that the test owns otherwise (or that does not exist).
    pub fn at(path: PathBuf) -> Self {
        Self { _dir: None, path }
    }

    /// Where the kernel file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(bytes: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernel");
        fs::write(&path, bytes).unwrap();
        Self {
            _dir: Some(dir),
            path,
        }
    }
}

/// Whether binutils' `as` and `ld` run here (asked once per test binary);
/// says why the test skips if not.
fn binutils() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let found = *FOUND.get_or_init(|| {
        ["as", "ld"]
            .iter()
            .all(|tool| Command::new(tool).arg("--version").output().is_ok())
    });
    if !found {
        eprintln!("skipping: binutils (`as`, `ld`) is not installed");
    }
    found
}

impl Payload {
    /// Assembles `vmm/tests/payloads/<name>.S`; `None` (test skips) without binutils.
    pub fn build(name: &str) -> Option<Self> {
        if !binutils() {
            return None;
        }
        // husk-vmm's own directory, also when the runtime's tests call this.
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/payloads")
            .join(format!("{name}.S"));
        let dir = tempfile::tempdir().unwrap();
        let obj = dir.path().join("p.o");
        let bin = dir.path().join("p.bin");
        run(Command::new("as").arg("--64").arg("-o").arg(&obj).arg(&src));
        run(Command::new("ld")
            .arg(format!("-Ttext={LOAD_ADDR:#x}"))
            .args(["--oformat", "binary", "-e", "_start", "-o"])
            .arg(&bin)
            .arg(&obj));
        Some(Self {
            code: fs::read(&bin).unwrap(),
        })
    }

    /// ELF vmlinux entered through the 64-bit boot protocol.
    pub fn elf64(&self) -> Kernel {
        Kernel::write(&elf(&self.code, None))
    }

    /// ELF vmlinux whose loaded segment spans `memsz` bytes (a large bss).
    pub fn elf64_with_memsz(&self, memsz: u64) -> Kernel {
        Kernel::write(&elf_with_memsz(&self.code, None, memsz))
    }

    /// ELF vmlinux with a Xen PVH entry note pointing at the code.
    pub fn elf_pvh(&self) -> Kernel {
        Kernel::write(&elf(&self.code, Some(LOAD_ADDR as u32)))
    }

    /// bzImage whose file is padded to `size` bytes.
    pub fn bzimage_padded(&self, size: usize) -> Kernel {
        let mut bytes = self.bzimage_bytes();
        bytes.resize(size.max(bytes.len()), 0);
        Kernel::write(&bytes)
    }

    /// bzImage (boot protocol 2.15, 64-bit capable): one setup sector, the
    /// protected-mode image at 1 MiB, the code at its 64-bit entry (+0x200).
    pub fn bzimage(&self) -> Kernel {
        Kernel::write(&self.bzimage_bytes())
    }

    fn bzimage_bytes(&self) -> Vec<u8> {
        let mut image = vec![0u8; 1024];
        image[0x1f1] = 1; // setup_sects
        image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        image[0x211] = 1; // loadflags: LOADED_HIGH
        image[0x214..0x218].copy_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
        image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
        image[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes());
        image[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes()); // init_size
        let mut protected = vec![0xf4u8; 0x200]; // hlt: the 32-bit entry is unused
        protected.extend_from_slice(&self.code);
        image.extend_from_slice(&protected);
        image
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A minimal ELF64 executable: one PT_LOAD of `code` at LOAD_ADDR and, for
/// PVH, a PT_NOTE with XEN_ELFNOTE_PHYS32_ENTRY.
fn elf(code: &[u8], pvh_entry: Option<u32>) -> Vec<u8> {
    elf_with_memsz(code, pvh_entry, code.len() as u64)
}

fn elf_with_memsz(code: &[u8], pvh_entry: Option<u32>, memsz: u64) -> Vec<u8> {
    const CODE_OFFSET: u64 = 0x1000;
    let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
    let note_offset = 64 + 56 * u64::from(phnum);
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    out.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    out.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    out.extend_from_slice(&phnum.to_le_bytes());
    out.extend_from_slice(&[0; 6]); // no sections
    let phdr = |out: &mut Vec<u8>, kind: u32, offset: u64, addr: u64, size: u64, memsz: u64| {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&7u32.to_le_bytes()); // RWX
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&addr.to_le_bytes()); // vaddr
        out.extend_from_slice(&addr.to_le_bytes()); // paddr
        out.extend_from_slice(&size.to_le_bytes()); // filesz
        out.extend_from_slice(&memsz.to_le_bytes());
        out.extend_from_slice(&0x1000u64.to_le_bytes());
    };
    phdr(
        &mut out,
        1,
        CODE_OFFSET,
        LOAD_ADDR,
        code.len() as u64,
        memsz,
    );
    if let Some(entry) = pvh_entry {
        phdr(&mut out, 4, note_offset, 0, 20, 20);
        out.extend_from_slice(&4u32.to_le_bytes()); // namesz
        out.extend_from_slice(&4u32.to_le_bytes()); // descsz
        out.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        out.extend_from_slice(b"Xen\0");
        out.extend_from_slice(&entry.to_le_bytes());
    }
    out.resize(CODE_OFFSET as usize, 0);
    out.extend_from_slice(code);
    out
}

/// Threads of this process named like the VMM's vCPU threads (`husk-vcpu<N>`).
pub fn vcpu_threads() -> usize {
    threads_named("husk-vcpu")
}

/// Threads of this process whose name starts with `prefix`.
pub fn threads_named(prefix: &str) -> usize {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// vCPU threads still alive, waiting briefly: a joined thread can stay
/// listed in /proc/self/task for a moment after pthread_join returns.
pub fn vcpu_threads_settled() -> usize {
    threads_settled("husk-vcpu")
}

/// Like [`vcpu_threads_settled`] for any thread name prefix.
pub fn threads_settled(prefix: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let n = threads_named(prefix);
        if n == 0 || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One VM at a time per test binary: thread counts stay meaningful and the
/// machine's cores are not oversubscribed. Hold the guard for the test.
pub fn one_vm_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether /dev/kvm opens read-write; says why the test skips if not.
pub fn kvm_usable() -> bool {
    let ok = crate::machine::HostCheck::run().kvm_openable;
    if !ok {
        eprintln!("skipping: /dev/kvm cannot be opened read-write");
    }
    ok
}

/// The little-endian u32 a payload reported at `at` of its output.
pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// The little-endian u64 a payload reported at `at` of its output.
pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// A console sink the test can read back (clones share the bytes).
#[derive(Clone, Default)]
pub struct Console(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    /// Everything written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

/// Entries in a [`DriverQueue`].
pub const QUEUE_SIZE: u16 = 256;

/// One descriptor as the driver writes it: (addr, len, flags, next).
pub type Descriptor = (u64, u32, u16, u16);

/// The driver's side of one split queue of [`QUEUE_SIZE`] entries at `base`
/// in guest memory, for device tests without a VM: it posts descriptor
/// chains the way Linux's virtio drivers do (and the ways a hostile one
/// might) and reads back what the device used.
pub struct DriverQueue {
    base: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverQueue {
    /// An empty queue: descriptor table at `base`, rings right after it.
    pub fn new(base: u64) -> Self {
        DriverQueue {
            base,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Where the available ring is.
    pub fn avail(&self) -> u64 {
        self.base + 16 * u64::from(QUEUE_SIZE)
    }

    /// Where the used ring is (4-byte aligned after the available ring).
    pub fn used(&self) -> u64 {
        (self.avail() + 6 + 2 * u64::from(QUEUE_SIZE) + 3) & !3
    }

    /// The next free descriptor slot.
    pub fn next_desc(&self) -> u16 {
        self.next_desc
    }

    /// The device's view of this queue, configured and ready.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(self.base as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail() as u32), Some(0));
        q.set_used_ring_address(Some(self.used() as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// Writes raw descriptors at the next free slots and publishes the
    /// first of them as a chain head, which it returns.
    pub fn publish_raw(&mut self, mem: &GuestMemoryMmap, descs: &[Descriptor]) -> u16 {
        let head = self.next_desc;
        for (i, &desc) in descs.iter().enumerate() {
            write_descriptor(mem, self.base, (head + i as u16) % QUEUE_SIZE, desc);
        }
        self.next_desc = (head + descs.len() as u16) % QUEUE_SIZE;
        self.publish_head(mem, head);
        head
    }

    /// Puts `head` (any value, valid or not) in the available ring.
    pub fn publish_head(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let ring = self.avail() + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(ring)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .unwrap();
    }

    /// Publishes a well-formed chain of (addr, len) buffers, device-writable
    /// if `write`.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32)], write: bool) -> u16 {
        let head = self.next_desc;
        let descs: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len))| {
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                (addr, len, flags, (head + i as u16 + 1) % QUEUE_SIZE)
            })
            .collect();
        self.publish_raw(mem, &descs)
    }

    /// New used entries as (head, len).
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used() + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self.used() + 4 + 8 * u64::from(self.used_seen % QUEUE_SIZE);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// Writes `desc` in slot `slot` of the descriptor table at `table` (a
/// queue's own, or an indirect one).
pub fn write_descriptor(mem: &GuestMemoryMmap, table: u64, slot: u16, desc: Descriptor) {
    let (addr, len, flags, next) = desc;
    let at = table + 16 * u64::from(slot);
    mem.write_obj(addr, GuestAddress(at)).unwrap();
    mem.write_obj(len, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    mem.write_obj(next, GuestAddress(at + 14)).unwrap();
}

/// A [`VirtioInterrupt`] that hands every interrupt a device raises to the
/// receiver [`new`](Self::new) returns.
pub struct InterruptRecorder(Mutex<Sender<InterruptKind>>);

impl InterruptRecorder {
    /// The recorder, and where its interrupts arrive.
    pub fn new() -> (Self, Receiver<InterruptKind>) {
        let (tx, rx) = mpsc::channel();
        (Self(Mutex::new(tx)), rx)
    }
}

impl VirtioInterrupt for InterruptRecorder {
    fn notify(&self, kind: InterruptKind) -> std::io::Result<()> {
        let _ = self.0.lock().unwrap().send(kind);
        Ok(())
    }
}
