//! FUSE requests through the virtio-fs request path, as a hostile guest
//! sends them: any opcode, lying header lengths, names that try to leave
//! the share, node ids and file handles it was (or was never) given, and
//! requests and replies cut over descriptors any way. The device serves a
//! scratch share in a temporary directory, from a serving thread confined
//! the way the builtin VMM confines it.
//!
//! Besides "no panic", it checks the share's confinement: nothing next to
//! the share (a sibling directory with a secret file, reachable through
//! symlinks planted in the share) is created, changed or removed.

#![no_main]

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;

use arbitrary::Arbitrary;
use husk_fuzz::{capped, guest_memory, RawDesc, BUF_START};
use husk_vmm::devices::fs::{FsConfig, FsDevice};
use husk_vmm::test_support::DriverQueue;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 1 << 20;
/// Replies are written here, requests below it.
const REPLY_START: u64 = 0x8_0000;
const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;
const MAX_REQUESTS: usize = 32;
const MAX_BODY: usize = 4096;
const MAX_REPLY: u32 = 0x1_0000;
const FUSE_INIT: u32 = 26;
const ROOT_ID: u64 = 1;
const SECRET: &[u8] = b"host secret";

/// Names a guest might try, existing ones first.
const NAMES: &[&[u8]] = &[
    b"f",
    b"d",
    b"abs",
    b"up",
    b"new",
    b"g",
    b"..",
    b".",
    b"",
    b"d/g",
    b"../outside",
    b"/etc/passwd",
];

#[derive(Arbitrary, Debug)]
enum Node {
    Root,
    /// A node id the device handed out in an earlier reply (by index).
    Seen(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Opcode {
    /// 0..=53 covers every FUSE opcode and a few past the last.
    Known(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum HeaderLen {
    Honest,
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
struct Layout {
    /// Request bytes per readable descriptor: `n * 8 + 1` (0: one descriptor).
    request_split: u8,
    /// Reply bytes per writable descriptor, likewise.
    reply_split: u8,
    /// Writable space for the reply (capped at 64 KiB; 0: none).
    reply_len: u16,
    /// Put the chain in an indirect table.
    indirect: bool,
}

#[derive(Arbitrary, Debug)]
enum Request {
    /// A FUSE request: header, a fixed argument (its first eight bytes
    /// replaced by a file handle from an earlier reply if `fh` says so),
    /// NUL-terminated names, then data.
    Fuse {
        opcode: Opcode,
        node: Node,
        len: HeaderLen,
        arg: Vec<u8>,
        fh: Option<u8>,
        names: Vec<Name>,
        data: Vec<u8>,
        layout: Layout,
    },
    /// A chain of raw descriptors over `data` placed in the buffer area.
    Raw { descs: Vec<RawDesc>, data: Vec<u8> },
    /// The driver publishes a bogus available index.
    AvailIdx(u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Start with a well-formed INIT, as the Linux driver does.
    init: bool,
    requests: Vec<Request>,
}

struct Guest {
    mem: GuestMemoryMmap,
    driver: DriverQueue,
    queue: virtio_queue::Queue,
    device: FsDevice,
    unique: u64,
    nodes: Vec<u64>,
    handles: Vec<u64>,
    /// The queue refused to go on (the device returned an error).
    broken: bool,
    /// The driver lied about the available index: the device may have
    /// served stale entries, so used lengths no longer pair with requests.
    lied: bool,
}

impl Guest {
    fn new(device: FsDevice) -> Self {
        let driver = DriverQueue::new(0);
        let queue = driver.queue();
        Guest {
            mem: guest_memory(MEM_SIZE),
            driver,
            queue,
            device,
            unique: 0,
            nodes: Vec::new(),
            handles: Vec::new(),
            broken: false,
            lied: false,
        }
    }

    fn run(&mut self) {
        if self
            .device
            .process_queue(&mut self.queue, &self.mem)
            .is_err()
        {
            self.broken = true;
        }
    }

    fn node(&self, node: &Node) -> u64 {
        match node {
            Node::Root => ROOT_ID,
            Node::Seen(i) if !self.nodes.is_empty() => {
                self.nodes[usize::from(*i) % self.nodes.len()]
            }
            Node::Seen(i) => u64::from(*i),
            Node::Raw(id) => *id,
        }
    }

    /// Sends `request` laid out per `layout`; returns the reply bytes.
    fn call(&mut self, request: &[u8], layout: &Layout) -> Vec<u8> {
        let reply_len = u32::from(layout.reply_len).min(MAX_REPLY);
        self.mem
            .write_slice(request, GuestAddress(BUF_START))
            .expect("in RAM");
        let mut descs = Vec::new();
        let chunk = usize::from(layout.request_split) * 8 + 1;
        let chunk = if layout.request_split == 0 {
            request.len().max(1)
        } else {
            chunk
        };
        let mut at = 0;
        while at < request.len() {
            let len = chunk.min(request.len() - at);
            descs.push((BUF_START + at as u64, len as u32, false));
            at += len;
        }
        let chunk = u32::from(layout.reply_split) * 8 + 1;
        let chunk = if layout.reply_split == 0 {
            reply_len.max(1)
        } else {
            chunk
        };
        let mut at = 0;
        while at < reply_len {
            let len = chunk.min(reply_len - at);
            descs.push((REPLY_START + u64::from(at), len, true));
            at += len;
        }
        // Past the queue size the chain could not be published at all.
        descs.truncate(200);
        let chained: Vec<_> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let mut flags = if write { 2 } else { 0 };
                if i + 1 < descs.len() {
                    flags |= 1;
                }
                (addr, len, flags, i as u16 + 1)
            })
            .collect();
        let head = if layout.indirect {
            let table = REPLY_START - 0x1000 * 4;
            for (slot, &(addr, len, flags, next)) in chained.iter().enumerate() {
                husk_vmm::test_support::write_descriptor(
                    &self.mem,
                    table,
                    slot as u16,
                    (addr, len, flags, next),
                );
            }
            let size = 16 * chained.len() as u32;
            self.driver.publish_raw(&self.mem, &[(table, size, 4, 0)])
        } else {
            // Relative `next` values become absolute slots.
            let base = self.driver.next_desc();
            let absolute: Vec<_> = chained
                .iter()
                .map(|&(a, l, f, n)| (a, l, f, (base + n) % husk_vmm::test_support::QUEUE_SIZE))
                .collect();
            self.driver.publish_raw(&self.mem, &absolute)
        };
        let _ = head;
        self.run();
        let used = self.driver.take_used(&self.mem);
        let Some(&(_, len)) = used.last() else {
            return Vec::new();
        };
        assert!(
            len <= reply_len,
            "used length {len} beyond {reply_len} writable bytes"
        );
        let mut reply = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(REPLY_START))
            .expect("in RAM");
        reply
    }

    fn remember(&mut self, opcode: u32, reply: &[u8]) {
        if reply.len() < OUT_HEADER_LEN + 8 || reply[4..8] != [0; 4] {
            return;
        }
        let body = &reply[OUT_HEADER_LEN..];
        let first = u64::from_le_bytes(body[..8].try_into().unwrap());
        match opcode {
            // LOOKUP, SYMLINK, MKNOD, MKDIR, LINK: an entry.
            1 | 6 | 8 | 9 | 13 => self.nodes.push(first),
            // OPEN, OPENDIR: a handle.
            14 | 27 => self.handles.push(first),
            // CREATE: an entry, then the open handle after it (128 bytes).
            35 => {
                self.nodes.push(first);
                if let Some(fh) = body.get(128..136) {
                    self.handles
                        .push(u64::from_le_bytes(fh.try_into().unwrap()));
                }
            }
            _ => {}
        }
        self.nodes.truncate(64);
        self.handles.truncate(64);
    }

    fn request(&mut self, req: Request) {
        match req {
            Request::Fuse {
                opcode,
                node,
                len,
                arg,
                fh,
                names,
                data,
                layout,
            } => {
                let opcode = match opcode {
                    Opcode::Known(n) => u32::from(n % 54),
                    Opcode::Raw(v) => v,
                };
                let mut body = capped(&arg, 256).to_vec();
                if let (Some(i), false) = (fh, self.handles.is_empty()) {
                    let handle = self.handles[usize::from(i) % self.handles.len()];
                    body.resize(body.len().max(8), 0);
                    body[..8].copy_from_slice(&handle.to_le_bytes());
                }
                for name in names.iter().take(3) {
                    match name {
                        Name::Known(i) => {
                            body.extend_from_slice(NAMES[usize::from(*i) % NAMES.len()])
                        }
                        Name::Raw(bytes) => body.extend_from_slice(capped(bytes, 300)),
                    }
                    body.push(0);
                }
                body.extend_from_slice(capped(&data, MAX_BODY));
                self.unique += 1;
                let node = self.node(&node);
                let msg = message(opcode, self.unique, node, &body, &len);
                let reply = self.call(&msg, &layout);
                if reply.len() >= OUT_HEADER_LEN {
                    let unique = u64::from_le_bytes(reply[8..16].try_into().unwrap());
                    assert_eq!(unique, self.unique, "reply to another request");
                }
                self.remember(opcode, &reply);
            }
            Request::Raw { descs, data } => {
                if descs.is_empty() {
                    return;
                }
                self.mem
                    .write_slice(capped(&data, MAX_BODY), GuestAddress(BUF_START))
                    .expect("in RAM");
                let descs: Vec<_> = descs.iter().take(16).map(|d| d.resolve(MEM_SIZE)).collect();
                self.driver.publish_raw(&self.mem, &descs);
                self.run();
                self.driver.take_used(&self.mem);
            }
            Request::AvailIdx(idx) => {
                self.lied = true;
                self.mem
                    .write_obj(idx, GuestAddress(self.driver.avail() + 2))
                    .expect("in RAM");
                self.run();
                self.driver.take_used(&self.mem);
            }
        }
    }
}

fn message(opcode: u32, unique: u64, nodeid: u64, body: &[u8], len: &HeaderLen) -> Vec<u8> {
    let len = match len {
        HeaderLen::Honest => (IN_HEADER_LEN + body.len()) as u32,
        HeaderLen::Raw(v) => *v,
    };
    let mut msg = Vec::with_capacity(IN_HEADER_LEN + body.len());
    msg.extend_from_slice(&len.to_le_bytes());
    msg.extend_from_slice(&opcode.to_le_bytes());
    msg.extend_from_slice(&unique.to_le_bytes());
    msg.extend_from_slice(&nodeid.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes()); // uid
    msg.extend_from_slice(&0u32.to_le_bytes()); // gid
    msg.extend_from_slice(&1u32.to_le_bytes()); // pid
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.extend_from_slice(body);
    msg
}

/// The scratch share and, beside it, what it must never reach.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let share = dir.path().join("share");
    let outside = dir.path().join("outside");
    fs::create_dir(&share).expect("share");
    fs::create_dir(&outside).expect("outside");
    fs::write(outside.join("secret"), SECRET).expect("secret");
    fs::write(share.join("f"), b"file bytes").expect("f");
    fs::create_dir(share.join("d")).expect("d");
    fs::write(share.join("d/g"), b"g").expect("g");
    symlink(outside.join("secret"), share.join("abs")).expect("abs");
    symlink("../outside/secret", share.join("up")).expect("up");
    dir
}

fn names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    names
}

fn assert_confined(dir: &Path) {
    assert_eq!(names(dir), ["outside", "share"], "entries beside the share");
    let outside = dir.join("outside");
    assert_eq!(
        names(&outside),
        ["secret"],
        "entries in the sibling directory"
    );
    let secret = outside.join("secret");
    let md = fs::symlink_metadata(&secret).expect("secret");
    assert!(md.is_file() && md.nlink() == 1, "secret replaced or linked");
    assert_eq!(fs::read(&secret).expect("secret"), SECRET, "secret changed");
}

fuzz_target!(|input: Input| {
    let dir = scratch();
    let share = dir.path().join("share");
    // The serving thread chroots into the share (as the builtin VMM's
    // does), so it is a thread of its own, not libFuzzer's.
    std::thread::scope(|s| {
        s.spawn(|| {
            let device = FsDevice::new(FsConfig::new(&share, "fuzz")).expect("fs device");
            let mut guest = Guest::new(device);
            if input.init {
                let mut init = Vec::new();
                for v in [7u32, 31, 0x2_0000, 0] {
                    init.extend_from_slice(&v.to_le_bytes());
                }
                guest.unique += 1;
                let msg = message(FUSE_INIT, guest.unique, 0, &init, &HeaderLen::Honest);
                let layout = Layout {
                    request_split: 0,
                    reply_split: 0,
                    reply_len: 4096,
                    indirect: false,
                };
                guest.call(&msg, &layout);
            }
            for req in input.requests.into_iter().take(MAX_REQUESTS) {
                if guest.broken {
                    break;
                }
                guest.request(req);
            }
        });
    });
    assert_confined(dir.path());
});
