//! Hostile guests: malformed descriptor chains and lying FUSE requests are answered with an
//! error or dropped, never a panic, never an allocation the guest sizes.

use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader, ReadIn, WriteIn};
use fuse_backend_rs::api::filesystem::ROOT_ID;
use vm_memory::ByteValued;

use super::harness::{
    message, Desc, Fuse, Guest, Reply, MEM_SIZE, QSIZE, REPLY_ADDR, REQ_ADDR, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};
use crate::devices::fs::{FsError, MAX_CHAIN_BYTES};

fn share() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"file bytes").unwrap();
    dir
}

fn lookup_request() -> Vec<u8> {
    message(Opcode::Lookup as u32, 7, ROOT_ID, &[b"f\0"])
}

fn readable(addr: u64, len: u32, next: Option<u16>) -> Desc {
    Desc {
        addr,
        len,
        flags: if next.is_some() { VIRTQ_DESC_F_NEXT } else { 0 },
        next: next.unwrap_or(0),
    }
}

fn writable(addr: u64, len: u32, next: Option<u16>) -> Desc {
    Desc {
        addr,
        len,
        flags: VIRTQ_DESC_F_WRITE | if next.is_some() { VIRTQ_DESC_F_NEXT } else { 0 },
        next: next.unwrap_or(0),
    }
}

/// Submits a chain, checks it came back unanswered, and that the device still serves.
fn assert_dropped(fuse: &mut Fuse, descs: &[Desc], what: &str) {
    let used = fuse.guest.submit_raw(descs, 0).expect(what);
    assert_eq!(used, Some((0, 0)), "{what}: returned with no reply");
    assert!(
        fuse.lookup(ROOT_ID, b"f").is_ok(),
        "{what}: device still serves"
    );
}

fn place_request(fuse: &mut Fuse, req: &[u8]) {
    use vm_memory::{Bytes, GuestAddress};
    fuse.guest
        .mem
        .write_slice(req, GuestAddress(REQ_ADDR))
        .unwrap();
}

#[test]
fn malformed_chains_are_dropped() {
    let dir = share();
    let mut fuse = Fuse::new(dir.path());
    let req = lookup_request();
    place_request(&mut fuse, &req);
    let n = req.len() as u32;

    assert_dropped(
        &mut fuse,
        &[
            readable(REQ_ADDR, 0, Some(1)),
            writable(REPLY_ADDR, 4096, None),
        ],
        "zero-length request",
    );
    assert_dropped(
        &mut fuse,
        &[writable(REPLY_ADDR, 4096, None)],
        "no readable part",
    );
    assert_dropped(
        &mut fuse,
        &[
            writable(REQ_ADDR, n, Some(1)),
            writable(REPLY_ADDR, 4096, None),
        ],
        "request in a device-writable buffer",
    );
    assert_dropped(
        &mut fuse,
        &[
            readable(MEM_SIZE + 0x1000, n, Some(1)),
            writable(REPLY_ADDR, 4096, None),
        ],
        "request outside guest memory",
    );
    assert_dropped(
        &mut fuse,
        &[
            readable(MEM_SIZE - 8, 64, Some(1)),
            writable(REPLY_ADDR, 4096, None),
        ],
        "request straddling the end of memory",
    );
    assert_dropped(
        &mut fuse,
        &[
            readable(REQ_ADDR, n, Some(1)),
            writable(u64::MAX - 16, 4096, None),
        ],
        "reply outside guest memory",
    );
    assert_dropped(
        &mut fuse,
        &[
            readable(REQ_ADDR, u32::MAX, Some(1)),
            writable(REPLY_ADDR, 4096, None),
        ],
        "absurd request length",
    );
    assert_dropped(
        &mut fuse,
        &[
            readable(REQ_ADDR, n, Some(1)),
            writable(REPLY_ADDR, u32::MAX, None),
        ],
        "absurd reply length",
    );
    // A `next` beyond the queue ends the chain there: answered from what came before.
    let used = fuse
        .guest
        .submit_raw(
            &[
                readable(REQ_ADDR, n, Some(1)),
                writable(REPLY_ADDR, 4096, Some(QSIZE + 5)),
            ],
            0,
        )
        .expect("queue usable");
    assert!(matches!(used, Some((0, _))));
    assert!(fuse.lookup(ROOT_ID, b"f").is_ok());
    // A reply buffer too small for even the out header.
    assert_dropped(
        &mut fuse,
        &[
            readable(REQ_ADDR, n, Some(1)),
            writable(REPLY_ADDR, 4, None),
        ],
        "tiny reply buffer",
    );
}

#[test]
fn descriptor_loops_terminate() {
    let dir = share();
    let mut fuse = Fuse::new(dir.path());
    let req = lookup_request();
    place_request(&mut fuse, &req);
    let n = req.len() as u32;
    // 0 -> 1 -> 0 -> ...: the chain iterator stops after QSIZE descriptors; the loop makes the
    // readable part larger than the request, so the server sees a well-formed LOOKUP followed
    // by trailing bytes, or drops it. Either way the call returns.
    let used = fuse
        .guest
        .submit_raw(
            &[
                readable(REQ_ADDR, n, Some(1)),
                writable(REPLY_ADDR, 4096, Some(0)),
            ],
            0,
        )
        .expect("queue usable");
    assert!(matches!(used, Some((0, _))));
    // A self-loop.
    let used = fuse
        .guest
        .submit_raw(&[readable(REQ_ADDR, n, Some(0))], 0)
        .expect("queue usable");
    assert_eq!(used, Some((0, 0)));
    assert!(fuse.lookup(ROOT_ID, b"f").is_ok());
}

#[test]
fn chains_over_the_cap_are_dropped_before_any_work() {
    let dir = share();
    let mut fuse = Fuse::new(dir.path());
    let ino = fuse.lookup(ROOT_ID, b"f").unwrap().nodeid;
    let fh = fuse.open(ino, libc::O_WRONLY).unwrap();
    // A WRITE whose data fills a chain just over the cap (all inside guest memory).
    let data_len = (MAX_CHAIN_BYTES as usize) + 1 - size_of::<InHeader>() - size_of::<WriteIn>();
    let arg = WriteIn {
        fh,
        size: data_len as u32,
        ..Default::default()
    };
    let data = vec![b'x'; data_len];
    let req = message(Opcode::Write as u32, 9, ino, &[arg.as_slice(), &data]);
    assert!(req.len() as u64 > MAX_CHAIN_BYTES);
    place_request(&mut fuse, &req);
    let used = fuse
        .guest
        .submit_raw(
            &[
                readable(REQ_ADDR, req.len() as u32, Some(1)),
                writable(REPLY_ADDR, 4096, None),
            ],
            0,
        )
        .unwrap();
    assert_eq!(used, Some((0, 0)));
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"file bytes");
}

#[test]
fn invalid_available_index_breaks_the_queue_instead_of_spinning() {
    let dir = share();
    let mut guest = Guest::new(dir.path());
    guest.set_avail_idx(QSIZE + 1);
    assert!(matches!(guest.run().unwrap_err(), FsError::Queue(_)));
}

fn raw_reply(fuse: &mut Fuse, msg: &[u8]) -> Option<Reply> {
    let bytes = fuse.guest.request(msg, 4096);
    Reply::parse(&bytes)
}

#[test]
fn lying_fuse_headers_get_errors_or_are_dropped() {
    let dir = share();
    let mut fuse = Fuse::new(dir.path());

    // Unknown opcode: ENOSYS.
    let reply = raw_reply(&mut fuse, &message(9999, 1, ROOT_ID, &[])).unwrap();
    assert_eq!(reply.error, -libc::ENOSYS);

    // Truncated header.
    let full = lookup_request();
    assert!(raw_reply(&mut fuse, &full[..10]).is_none());

    // `len` larger than what was sent: the name cannot be read.
    let mut long = lookup_request();
    long[0..4].copy_from_slice(&1000u32.to_le_bytes());
    assert!(raw_reply(&mut fuse, &long).map_or(true, |r| r.error != 0));

    // `len` smaller than the header.
    let mut short = lookup_request();
    short[0..4].copy_from_slice(&8u32.to_le_bytes());
    assert!(raw_reply(&mut fuse, &short).map_or(true, |r| r.error != 0));

    // `len` claiming gigabytes: refused before any buffer is sized from it.
    let mut huge = lookup_request();
    huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let reply = raw_reply(&mut fuse, &huge).unwrap();
    assert_eq!(reply.error, -libc::ENOMEM);

    // Name without a terminating NUL.
    let unterminated = message(Opcode::Lookup as u32, 2, ROOT_ID, &[b"f"]);
    assert!(raw_reply(&mut fuse, &unterminated).map_or(true, |r| r.error != 0));

    assert!(fuse.lookup(ROOT_ID, b"f").is_ok());
}

#[test]
fn bad_inodes_handles_and_sizes_get_errors() {
    let dir = share();
    let mut fuse = Fuse::new(dir.path());
    assert_eq!(fuse.getattr(0xdead_beef).unwrap_err(), libc::EBADF);
    assert_eq!(fuse.getattr(0).unwrap_err(), libc::EBADF);
    assert_eq!(fuse.lookup(u64::MAX, b"f").unwrap_err(), libc::EBADF);
    let ino = fuse.lookup(ROOT_ID, b"f").unwrap().nodeid;
    assert_eq!(fuse.read(ino, 12345, 0, 10).unwrap_err(), libc::EBADF);
    assert_eq!(fuse.write(ino, 12345, 0, b"x").unwrap_err(), libc::EBADF);

    let fh = fuse.open(ino, libc::O_RDWR).unwrap();
    // A handle belongs to its inode.
    assert_eq!(fuse.read(ROOT_ID, fh, 0, 10).unwrap_err(), libc::EBADF);

    // READ asking for 4 GiB into a 4 KiB reply buffer: refused or cut to the buffer.
    let arg = ReadIn {
        fh,
        size: u32::MAX,
        ..Default::default()
    };
    let msg = message(Opcode::Read as u32, 50, ino, &[arg.as_slice()]);
    let bytes = fuse.guest.request(&msg, 4096);
    assert!(bytes.len() <= 4096);
    if let Some(r) = Reply::parse(&bytes) {
        assert!(r.error != 0 || r.body == b"file bytes");
    }

    // WRITE claiming 1 GiB of data but carrying 3 bytes: the host file gets at most those.
    let arg = WriteIn {
        fh,
        size: 1 << 30,
        ..Default::default()
    };
    let msg = message(Opcode::Write as u32, 51, ino, &[arg.as_slice(), b"abc"]);
    let _ = raw_reply(&mut fuse, &msg);
    let host = std::fs::read(dir.path().join("f")).unwrap();
    assert!(host.len() <= 10, "file did not grow: {}", host.len());

    // FORGET of inodes never looked up (no reply expected) and of the root.
    for nodeid in [ROOT_ID, 77_777, u64::MAX] {
        let msg = message(
            Opcode::Forget as u32,
            60,
            nodeid,
            &[&u64::MAX.to_le_bytes()],
        );
        assert!(raw_reply(&mut fuse, &msg).is_none());
    }
    assert!(fuse.lookup(ROOT_ID, b"f").is_ok(), "root survives a FORGET");
}

#[test]
fn destroy_then_init_keeps_serving_the_same_root() {
    let dir = share();
    let mut fuse = Fuse::new(dir.path());
    let _ = fuse.call(Opcode::Destroy as u32, 0, &[]);
    fuse.init(0).unwrap();
    let ino = fuse.lookup(ROOT_ID, b"f").unwrap().nodeid;
    let fh = fuse.open(ino, libc::O_RDONLY).unwrap();
    assert_eq!(fuse.read(ino, fh, 0, 64).unwrap(), b"file bytes");
}

/// Deterministic pseudo-random bytes (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_requests_never_panic() {
    let dir = share();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let mut fuse = Fuse::new(dir.path());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..3000u64 {
        // Mostly real opcodes (1..=52), real-looking inodes, random bodies and lengths.
        let opcode = (rng.next() % 53) as u32;
        if opcode == Opcode::Destroy as u32 {
            continue;
        }
        let nodeid = match rng.next() % 4 {
            0 => ROOT_ID,
            1 => rng.next() % 8,
            _ => rng.next(),
        };
        let body_len = (rng.next() % 160) as usize;
        let body: Vec<u8> = (0..body_len).map(|_| rng.next() as u8).collect();
        let mut msg = message(opcode, i, nodeid, &[&body]);
        if rng.next() % 8 == 0 {
            let lie = rng.next() as u32;
            msg[0..4].copy_from_slice(&lie.to_le_bytes());
        }
        let reply_len = [0u32, 8, 16, 4096][(rng.next() % 4) as usize];
        if reply_len < size_of::<OutHeader>() as u32 {
            // Reply buffers too small for any answer.
            place_request(&mut fuse, &msg);
            let chain = [
                readable(REQ_ADDR, msg.len() as u32, Some(1)),
                writable(REPLY_ADDR, reply_len.max(1), None),
            ];
            let used = fuse.guest.submit_raw(&chain, 0).expect("queue usable");
            assert_eq!(used, Some((0, 0)));
            continue;
        }
        let bytes = fuse.guest.request(&msg, reply_len);
        assert!(bytes.len() <= reply_len as usize);
    }
    // Still serving.
    assert!(fuse.init(0).is_ok());
}
