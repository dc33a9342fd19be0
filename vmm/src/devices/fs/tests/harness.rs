//! A minimal guest driver: guest RAM, one split virtqueue laid out by hand, and FUSE request
//! builders on top of it.

use std::ffi::CString;
use std::mem::size_of;
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::{
    Attr, AttrOut, CreateIn, Dirent, EntryOut, GetattrIn, InHeader, InitIn, InitOut, MknodIn,
    Opcode, OpenIn, OpenOut, OutHeader, ReadIn, SetattrIn, WriteIn, WriteOut,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::fs::{FsConfig, FsDevice, FsError};

/// Guest RAM size.
pub const MEM_SIZE: u64 = 0x100_0000;
/// Queue size of the simulated queue.
pub const QSIZE: u16 = 64;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
/// Where requests are placed.
pub const REQ_ADDR: u64 = 0x10_0000;
/// Where replies are written.
pub const REPLY_ADDR: u64 = 0x80_0000;
/// Reply buffer size used by `Fuse::call`.
pub const REPLY_LEN: u32 = 0x2_0000;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;

/// One raw descriptor as the guest writes it.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// Guest RAM plus one queue of the device.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub device: FsDevice,
    avail_idx: u16,
    used_idx: u16,
}

impl Guest {
    /// A guest whose device serves `share`, with the thread sandbox off (tests keep their
    /// own root); the sandbox layer has its own tests.
    pub fn new(share: &Path) -> Self {
        let mut cfg = FsConfig::new(share, "husk");
        cfg.thread_sandbox = false;
        Self::with_device(FsDevice::new(cfg).expect("device"))
    }

    pub fn with_device(device: FsDevice) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("guest memory");
        let mut queue = Queue::new(QSIZE).expect("queue");
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        Guest {
            mem,
            queue,
            device,
            avail_idx: 0,
            used_idx: 0,
        }
    }

    /// Writes `descs` at descriptor indices 0.. as they are (flags and next untouched),
    /// makes index `head` available, runs the device and returns the used element, if any.
    pub fn submit_raw(&mut self, descs: &[Desc], head: u16) -> Result<Option<(u32, u32)>, FsError> {
        for (i, d) in descs.iter().enumerate() {
            let at = GuestAddress(DESC_TABLE + 16 * i as u64);
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&d.len.to_le_bytes());
            raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
            raw[14..16].copy_from_slice(&d.next.to_le_bytes());
            self.mem.write_slice(&raw, at).expect("write descriptor");
        }
        self.make_available(head);
        self.run()
    }

    /// Publishes `head` in the available ring without running the device.
    pub fn make_available(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % QSIZE);
        self.mem
            .write_obj(head.to_le(), GuestAddress(AVAIL_RING + 4 + 2 * slot))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes the available index directly (hostile guests lie about it).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.mem
            .write_obj(idx.to_le(), GuestAddress(AVAIL_RING + 2))
            .expect("avail idx");
    }

    /// Runs the device on the queue; returns the next used element if one was added.
    pub fn run(&mut self) -> Result<Option<(u32, u32)>, FsError> {
        self.device.process_queue(&mut self.queue, &self.mem)?;
        let used: u16 = self
            .mem
            .read_obj(GuestAddress(USED_RING + 2))
            .expect("used idx");
        if used == self.used_idx {
            return Ok(None);
        }
        let slot = u64::from(self.used_idx % QSIZE);
        let id: u32 = self
            .mem
            .read_obj(GuestAddress(USED_RING + 4 + 8 * slot))
            .unwrap();
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(USED_RING + 8 + 8 * slot))
            .unwrap();
        self.used_idx = self.used_idx.wrapping_add(1);
        Ok(Some((id, len)))
    }

    /// Sends `request` in one readable descriptor with a `reply_len` writable one after it;
    /// returns the bytes the device wrote (empty when it dropped the request).
    pub fn request(&mut self, request: &[u8], reply_len: u32) -> Vec<u8> {
        self.mem
            .write_slice(request, GuestAddress(REQ_ADDR))
            .expect("request fits");
        // Poison the reply area so stale bytes are never mistaken for a reply.
        let poison = vec![0xa5u8; reply_len as usize];
        self.mem
            .write_slice(&poison, GuestAddress(REPLY_ADDR))
            .unwrap();
        let descs = [
            Desc {
                addr: REQ_ADDR,
                len: request.len() as u32,
                flags: VIRTQ_DESC_F_NEXT,
                next: 1,
            },
            Desc {
                addr: REPLY_ADDR,
                len: reply_len,
                flags: VIRTQ_DESC_F_WRITE,
                next: 0,
            },
        ];
        let (head, len) = self
            .submit_raw(&descs, 0)
            .expect("queue usable")
            .expect("chain returned to the guest");
        assert_eq!(head, 0);
        let mut reply = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(REPLY_ADDR))
            .unwrap();
        reply
    }

    /// Reads guest memory (to look for leaked bytes).
    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem
            .read_slice(&mut buf, GuestAddress(addr).unchecked_add(0))
            .unwrap();
        buf
    }
}

/// A FUSE reply: the header's error (0 or a negative errno) and the body.
#[derive(Debug)]
pub struct Reply {
    pub error: i32,
    pub unique: u64,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn parse(bytes: &[u8]) -> Option<Reply> {
        let hdr = OutHeader::from_slice(bytes.get(..size_of::<OutHeader>())?)?;
        assert_eq!(
            hdr.len as usize,
            bytes.len(),
            "header length matches used length"
        );
        Some(Reply {
            error: hdr.error,
            unique: hdr.unique,
            body: bytes[size_of::<OutHeader>()..].to_vec(),
        })
    }

    /// The body as `T`, or the errno.
    pub fn obj<T: ByteValued>(&self) -> Result<T, i32> {
        if self.error != 0 {
            return Err(-self.error);
        }
        let bytes = self.body.get(..size_of::<T>()).expect("body large enough");
        Ok(*T::from_slice(bytes).expect("aligned copy"))
    }
}

/// Builds a FUSE request: header, then the given parts.
pub fn message(opcode: u32, unique: u64, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
    let body_len: usize = parts.iter().map(|p| p.len()).sum();
    let header = InHeader {
        len: (size_of::<InHeader>() + body_len) as u32,
        opcode,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        padding: 0,
    };
    let mut msg = header.as_slice().to_vec();
    for p in parts {
        msg.extend_from_slice(p);
    }
    msg
}

/// NUL-terminated bytes of `s`.
pub fn cstr(s: &[u8]) -> Vec<u8> {
    CString::new(s).expect("no NUL").into_bytes_with_nul()
}

/// A FUSE client over the simulated guest.
pub struct Fuse {
    pub guest: Guest,
    unique: u64,
}

/// An `errno` or a successful value.
pub type FuseResult<T> = Result<T, i32>;

impl Fuse {
    /// Client for a fresh device serving `share`, after a successful INIT.
    pub fn new(share: &Path) -> Self {
        Self::from_guest(Guest::new(share))
    }

    pub fn from_guest(guest: Guest) -> Self {
        let mut fuse = Fuse { guest, unique: 0 };
        let out = fuse.init(0).expect("INIT");
        assert_eq!(out.major, 7);
        fuse
    }

    /// Sends one request and parses the reply (None when the device dropped it).
    pub fn call(&mut self, opcode: u32, nodeid: u64, parts: &[&[u8]]) -> Option<Reply> {
        self.unique += 1;
        let msg = message(opcode, self.unique, nodeid, parts);
        let bytes = self.guest.request(&msg, REPLY_LEN);
        let reply = Reply::parse(&bytes)?;
        assert_eq!(reply.unique, self.unique);
        Some(reply)
    }

    fn call_ok(&mut self, opcode: Opcode, nodeid: u64, parts: &[&[u8]]) -> Reply {
        self.call(opcode as u32, nodeid, parts).expect("a reply")
    }

    pub fn init(&mut self, flags: u32) -> FuseResult<InitOut> {
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0x2_0000,
            flags,
        };
        self.call_ok(Opcode::Init, 0, &[init.as_slice()]).obj()
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> FuseResult<EntryOut> {
        self.call_ok(Opcode::Lookup, parent, &[&cstr(name)]).obj()
    }

    pub fn getattr(&mut self, nodeid: u64) -> FuseResult<Attr> {
        let arg = GetattrIn::default();
        self.call_ok(Opcode::Getattr, nodeid, &[arg.as_slice()])
            .obj::<AttrOut>()
            .map(|a| a.attr)
    }

    pub fn setattr(&mut self, nodeid: u64, arg: SetattrIn) -> FuseResult<Attr> {
        self.call_ok(Opcode::Setattr, nodeid, &[arg.as_slice()])
            .obj::<AttrOut>()
            .map(|a| a.attr)
    }

    pub fn open(&mut self, nodeid: u64, flags: i32) -> FuseResult<u64> {
        let arg = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        self.call_ok(Opcode::Open, nodeid, &[arg.as_slice()])
            .obj::<OpenOut>()
            .map(|o| o.fh)
    }

    pub fn read(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> FuseResult<Vec<u8>> {
        let arg = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let reply = self.call_ok(Opcode::Read, nodeid, &[arg.as_slice()]);
        if reply.error != 0 {
            return Err(-reply.error);
        }
        Ok(reply.body)
    }

    pub fn write(&mut self, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> FuseResult<u32> {
        let arg = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        self.call_ok(Opcode::Write, nodeid, &[arg.as_slice(), data])
            .obj::<WriteOut>()
            .map(|w| w.size)
    }

    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> FuseResult<(EntryOut, u64)> {
        let arg = CreateIn {
            flags: flags as u32,
            mode,
            umask: 0,
            fuse_flags: 0,
        };
        let reply = self.call_ok(Opcode::Create, parent, &[arg.as_slice(), &cstr(name)]);
        let entry = reply.obj::<EntryOut>()?;
        let open = OpenOut::from_slice(
            &reply.body[size_of::<EntryOut>()..size_of::<EntryOut>() + size_of::<OpenOut>()],
        )
        .copied()
        .expect("open out");
        Ok((entry, open.fh))
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32) -> FuseResult<EntryOut> {
        let arg = fuse_backend_rs::abi::fuse_abi::MkdirIn { mode, umask: 0 };
        self.call_ok(Opcode::Mkdir, parent, &[arg.as_slice(), &cstr(name)])
            .obj()
    }

    pub fn mknod(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FuseResult<EntryOut> {
        let arg = MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        };
        self.call_ok(Opcode::Mknod, parent, &[arg.as_slice(), &cstr(name)])
            .obj()
    }

    pub fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8]) -> FuseResult<EntryOut> {
        self.call_ok(Opcode::Symlink, parent, &[&cstr(name), &cstr(target)])
            .obj()
    }

    pub fn readlink(&mut self, nodeid: u64) -> FuseResult<Vec<u8>> {
        let reply = self.call_ok(Opcode::Readlink, nodeid, &[]);
        if reply.error != 0 {
            return Err(-reply.error);
        }
        Ok(reply.body)
    }

    pub fn rename(&mut self, olddir: u64, old: &[u8], newdir: u64, new: &[u8]) -> FuseResult<()> {
        let arg = fuse_backend_rs::abi::fuse_abi::RenameIn { newdir };
        let reply = self.call_ok(
            Opcode::Rename,
            olddir,
            &[arg.as_slice(), &cstr(old), &cstr(new)],
        );
        if reply.error != 0 {
            return Err(-reply.error);
        }
        Ok(())
    }

    pub fn release(&mut self, nodeid: u64, fh: u64) {
        let arg = fuse_backend_rs::abi::fuse_abi::ReleaseIn {
            fh,
            ..Default::default()
        };
        let reply = self.call_ok(Opcode::Release, nodeid, &[arg.as_slice()]);
        assert_eq!(reply.error, 0);
    }

    pub fn opendir(&mut self, nodeid: u64) -> FuseResult<u64> {
        let arg = OpenIn::default();
        self.call_ok(Opcode::Opendir, nodeid, &[arg.as_slice()])
            .obj::<OpenOut>()
            .map(|o| o.fh)
    }

    /// All names READDIR returns for the directory.
    pub fn readdir_names(&mut self, nodeid: u64) -> FuseResult<Vec<Vec<u8>>> {
        let fh = self.opendir(nodeid)?;
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let arg = ReadIn {
                fh,
                offset,
                size: 4096,
                ..Default::default()
            };
            let reply = self.call_ok(Opcode::Readdir, nodeid, &[arg.as_slice()]);
            if reply.error != 0 {
                return Err(-reply.error);
            }
            if reply.body.is_empty() {
                break;
            }
            let mut rest = &reply.body[..];
            while rest.len() >= size_of::<Dirent>() {
                let d = *Dirent::from_slice(&rest[..size_of::<Dirent>()]).unwrap();
                let name_end = size_of::<Dirent>() + d.namelen as usize;
                names.push(rest[size_of::<Dirent>()..name_end].to_vec());
                offset = d.off;
                let padded = (name_end + 7) & !7;
                rest = &rest[padded.min(rest.len())..];
            }
        }
        Ok(names)
    }
}

/// `S_IFMT` bits of a FUSE attr mode.
pub fn file_type(mode: u32) -> u32 {
    mode & libc::S_IFMT
}
