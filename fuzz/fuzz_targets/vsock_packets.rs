//! The vsock device as a hostile guest drives it: TX packets and raw
//! descriptor chains into the muxer and the connections' state machine,
//! RX buffers of any shape, while real host clients connect through the
//! hybrid Unix socket (`CONNECT <port>`) and a real host listener takes the
//! guest's own connections (`<path>_<port>`).
//!
//! Besides "no panic", it checks what the device promises the guest: every
//! TX chain comes back, and every RX packet is a well-formed stream packet
//! from the host to this guest that fits the buffer it was written into.

#![no_main]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use arbitrary::Arbitrary;
use husk_fuzz::{capped, guest_memory, RawDesc};
use husk_vmm::devices::vsock::{VsockDevice, HOST_CID};
use husk_vmm::test_support::DriverQueue;
use libfuzzer_sys::fuzz_target;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const CID: u64 = 3;
const MEM_SIZE: u64 = 1 << 20;
/// Well-formed RX buffers live here, apart from everything else the harness
/// writes, so a packet's header is read back as the device wrote it.
const RX_START: u64 = 0xc_0000;
const RX_END: u64 = 0xf_0000;
/// Each well-formed RX buffer has a slot of its own in that area.
const RX_SLOT: u64 = 0x2000;
const RX_SLOTS: usize = ((RX_END - RX_START) / RX_SLOT) as usize;
const HEADER_LEN: u32 = 44;
/// The guest port a host listener waits on (`<uds>_1024`).
const LISTEN_PORT: u32 = 1024;
/// Where the device numbers host-initiated connections from.
const FIRST_HOST_PORT: u32 = 1 << 30;
const MAX_PAYLOAD: usize = 8192;
const MAX_OPS: usize = 64;
const MAX_HOST_STREAMS: usize = 40;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_MAX: u16 = 7;
const TYPE_STREAM: u16 = 1;

#[derive(Arbitrary, Debug)]
enum Cid {
    Guest,
    Host,
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Port {
    /// A guest-side port: 1024 + n % 4 (1024 has a host listener).
    Guest(u8),
    /// A host-initiated connection's port: FIRST_HOST_PORT + n % 8.
    Host(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum Len {
    /// The payload's real length.
    Honest,
    /// Whatever the guest claims.
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
struct Hdr {
    src_cid: Cid,
    dst_cid: Cid,
    src_port: Port,
    dst_port: Port,
    len: Len,
    /// 0 means stream (the only type served), anything else is raw.
    type_: u16,
    /// Taken modulo 9: the seven ops, plus 0 and 8 (invalid).
    op: u8,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A packet laid out the way Linux does it, the payload split into
    /// descriptors of `split * 16 + 1` bytes (0: one descriptor with the header).
    Send {
        hdr: Hdr,
        payload: Vec<u8>,
        split: u8,
    },
    /// A chain written descriptor by descriptor, `data` placed in the buffer area.
    RawTx {
        descs: Vec<RawDesc>,
        data: Vec<u8>,
    },
    /// Puts `count % 8 + 1` RX buffers of `len` bytes (0: a full 4 KiB one).
    GiveRx {
        count: u8,
        len: u16,
    },
    /// An RX chain of any shape.
    RawRx {
        descs: Vec<RawDesc>,
    },
    /// A host client connects and asks for guest port 1024 + port % 4.
    HostConnect {
        port: u8,
    },
    /// A host client connects and sends any handshake bytes.
    HostHandshake {
        bytes: Vec<u8>,
    },
    /// A host stream (by index) writes data.
    HostWrite {
        conn: u8,
        data: Vec<u8>,
    },
    /// A host stream reads what is there.
    HostRead {
        conn: u8,
    },
    HostShutdown {
        conn: u8,
        how: u8,
    },
    HostClose {
        conn: u8,
    },
    /// The host listener at `<uds>_1024` accepts what is waiting.
    Accept,
    /// The device handles host events and fills RX buffers; with
    /// `respond`, the guest accepts every connection request it received.
    Pump {
        respond: bool,
    },
    /// A driver reset.
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
}

struct Harness {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    mem: GuestMemoryMmap,
    dev: VsockDevice,
    listener: UnixListener,
    rxd: DriverQueue,
    txd: DriverQueue,
    rx: Queue,
    tx: Queue,
    next_buf: u64,
    /// Which RX slots hold a buffer the device has not returned.
    rx_slots: [bool; RX_SLOTS],
    /// RX chain heads given to the device: (slot, writable bytes).
    rx_bufs: HashMap<u16, (usize, u32)>,
    streams: Vec<UnixStream>,
    /// Whether a raw RX chain may have overwritten well-formed buffers.
    rx_tainted: bool,
    requests: Vec<(u32, u32)>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("vsock.sock");
        let listener =
            UnixListener::bind(dir.path().join(format!("vsock.sock_{LISTEN_PORT}"))).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let mem = guest_memory(MEM_SIZE);
        let dev = VsockDevice::new(CID, &uds).expect("vsock device");
        let rxd = DriverQueue::new(0x0);
        let txd = DriverQueue::new(0x4000);
        let (rx, tx) = (rxd.queue(), txd.queue());
        Harness {
            _dir: dir,
            uds,
            mem,
            dev,
            listener,
            rxd,
            txd,
            rx,
            tx,
            next_buf: husk_fuzz::BUF_START,
            rx_slots: [false; RX_SLOTS],
            rx_bufs: HashMap::new(),
            streams: Vec::new(),
            rx_tainted: false,
            requests: Vec::new(),
        }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let len = (len + 63) & !63;
        if self.next_buf + len > RX_START {
            self.next_buf = husk_fuzz::BUF_START;
        }
        let at = self.next_buf;
        self.next_buf += len;
        at
    }

    /// Forgets the buffer behind descriptor `desc` (returned by the device).
    fn forget_rx(&mut self, desc: u16) {
        if let Some((slot, _)) = self.rx_bufs.remove(&desc) {
            self.rx_slots[slot] = false;
        }
    }

    fn header(&self, h: &Hdr, payload_len: usize) -> [u8; HEADER_LEN as usize] {
        let cid = |c: &Cid| match c {
            Cid::Guest => CID,
            Cid::Host => HOST_CID,
            Cid::Raw(v) => *v,
        };
        let port = |p: &Port| match p {
            Port::Guest(n) => LISTEN_PORT + u32::from(n % 4),
            Port::Host(n) => FIRST_HOST_PORT + u32::from(n % 8),
            Port::Raw(v) => *v,
        };
        let len = match h.len {
            Len::Honest => payload_len as u32,
            Len::Raw(v) => v,
        };
        let type_ = if h.type_ == 0 { TYPE_STREAM } else { h.type_ };
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&cid(&h.src_cid).to_le_bytes());
        b[8..16].copy_from_slice(&cid(&h.dst_cid).to_le_bytes());
        b[16..20].copy_from_slice(&port(&h.src_port).to_le_bytes());
        b[20..24].copy_from_slice(&port(&h.dst_port).to_le_bytes());
        b[24..28].copy_from_slice(&len.to_le_bytes());
        b[28..30].copy_from_slice(&type_.to_le_bytes());
        b[30..32].copy_from_slice(&u16::from(h.op % 9).to_le_bytes());
        b[32..36].copy_from_slice(&h.flags.to_le_bytes());
        b[36..40].copy_from_slice(&h.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&h.fwd_cnt.to_le_bytes());
        b
    }

    fn send(&mut self, hdr: &[u8; HEADER_LEN as usize], payload: &[u8], split: u8) {
        let mut bufs = Vec::new();
        if split == 0 {
            let at = self.alloc(u64::from(HEADER_LEN) + payload.len() as u64);
            self.mem.write_slice(hdr, GuestAddress(at)).expect("in RAM");
            let data_at = at + u64::from(HEADER_LEN);
            self.mem
                .write_slice(payload, GuestAddress(data_at))
                .expect("in RAM");
            bufs.push((at, HEADER_LEN + payload.len() as u32));
        } else {
            let at = self.alloc(u64::from(HEADER_LEN));
            self.mem.write_slice(hdr, GuestAddress(at)).expect("in RAM");
            bufs.push((at, HEADER_LEN));
            for chunk in payload.chunks(usize::from(split) * 16 + 1) {
                let at = self.alloc(chunk.len() as u64);
                self.mem
                    .write_slice(chunk, GuestAddress(at))
                    .expect("in RAM");
                bufs.push((at, chunk.len() as u32));
            }
        }
        self.txd.publish(&self.mem, &bufs, false);
        self.kick_tx(1);
    }

    fn kick_tx(&mut self, published: usize) {
        self.dev.process_tx(&self.mem, &mut self.tx);
        let used = self.txd.take_used(&self.mem);
        assert_eq!(
            used.len(),
            published,
            "every TX chain is returned to the guest"
        );
        for (_, len) in used {
            assert_eq!(len, 0, "the device writes nothing into TX buffers");
        }
    }

    fn give_rx(&mut self, count: u8, len: u16) {
        let len = if len == 0 {
            HEADER_LEN + 4096
        } else {
            u32::from(len).min(RX_SLOT as u32)
        };
        for _ in 0..=count % 8 {
            let Some(slot) = self.rx_slots.iter().position(|used| !used) else {
                return;
            };
            let at = RX_START + slot as u64 * RX_SLOT;
            // Never reuse a descriptor slot the device has not returned:
            // its stale available entry would make the device write twice.
            if self.rx_bufs.contains_key(&self.rxd.next_desc()) {
                return;
            }
            self.rx_slots[slot] = true;
            let head = self.rxd.publish(&self.mem, &[(at, len)], true);
            self.rx_bufs.insert(head, (slot, len));
        }
    }

    /// Host events, then RX; checks every packet the guest received.
    fn pump(&mut self, respond: bool) {
        self.dev.process_host_events();
        self.dev.process_rx(&self.mem, &mut self.rx);
        for (head, len) in self.rxd.take_used(&self.mem) {
            let Some(&(slot, cap)) = self.rx_bufs.get(&head) else {
                // A raw RX chain: nothing known about its layout.
                continue;
            };
            self.forget_rx(head);
            let at = RX_START + slot as u64 * RX_SLOT;
            if len == 0 || self.rx_tainted {
                continue;
            }
            assert!(
                len >= HEADER_LEN && len <= cap,
                "RX length {len} in a {cap}-byte buffer"
            );
            let mut raw = [0u8; HEADER_LEN as usize];
            self.mem
                .read_slice(&mut raw, GuestAddress(at))
                .expect("in RAM");
            let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().unwrap());
            let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().unwrap());
            let u16_at = |o: usize| u16::from_le_bytes(raw[o..o + 2].try_into().unwrap());
            assert_eq!(u64_at(0), HOST_CID, "RX source CID");
            assert_eq!(u64_at(8), CID, "RX destination CID");
            assert_eq!(
                u32_at(24),
                len - HEADER_LEN,
                "RX header length matches used length"
            );
            assert_eq!(u16_at(28), TYPE_STREAM, "RX type");
            let op = u16_at(30);
            assert!((1..=OP_MAX).contains(&op), "RX op {op}");
            if op == OP_REQUEST {
                self.requests.push((u32_at(16), u32_at(20)));
            }
        }
        assert!(self.dev.connection_count() <= 256, "connection limit");
        if respond {
            for (host_port, guest_port) in std::mem::take(&mut self.requests) {
                let mut hdr = [0u8; HEADER_LEN as usize];
                hdr[0..8].copy_from_slice(&CID.to_le_bytes());
                hdr[8..16].copy_from_slice(&HOST_CID.to_le_bytes());
                hdr[16..20].copy_from_slice(&guest_port.to_le_bytes());
                hdr[20..24].copy_from_slice(&host_port.to_le_bytes());
                hdr[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
                hdr[30..32].copy_from_slice(&OP_RESPONSE.to_le_bytes());
                hdr[36..40].copy_from_slice(&(256u32 * 1024).to_le_bytes());
                self.send(&hdr, &[], 0);
            }
        }
    }

    fn stream(&mut self, conn: u8) -> Option<&mut UnixStream> {
        let n = self.streams.len();
        (n > 0).then(|| &mut self.streams[usize::from(conn) % n])
    }

    fn add_stream(&mut self, stream: UnixStream) {
        if self.streams.len() < MAX_HOST_STREAMS && stream.set_nonblocking(true).is_ok() {
            self.streams.push(stream);
        }
    }

    fn connect(&mut self, bytes: &[u8]) {
        if self.streams.len() >= MAX_HOST_STREAMS {
            return;
        }
        if let Ok(mut s) = UnixStream::connect(&self.uds) {
            let _ = s.write_all(bytes);
            self.add_stream(s);
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Send {
                hdr,
                payload,
                split,
            } => {
                let payload = capped(&payload, MAX_PAYLOAD);
                let raw = self.header(&hdr, payload.len());
                self.send(&raw, payload, split);
            }
            Op::RawTx { descs, data } => {
                if descs.is_empty() {
                    return;
                }
                let data = capped(&data, MAX_PAYLOAD);
                self.mem
                    .write_slice(data, GuestAddress(husk_fuzz::BUF_START))
                    .expect("in RAM");
                let descs: Vec<_> = descs.iter().take(16).map(|d| d.resolve(MEM_SIZE)).collect();
                self.txd.publish_raw(&self.mem, &descs);
                self.kick_tx(1);
            }
            Op::GiveRx { count, len } => self.give_rx(count, len),
            Op::RawRx { descs } => {
                if descs.is_empty() {
                    return;
                }
                let descs: Vec<_> = descs.iter().take(16).map(|d| d.resolve(MEM_SIZE)).collect();
                // A raw chain can point anywhere, and it overwrites descriptor
                // slots earlier buffers were published in: from here on the
                // device may write a packet over one before it is checked.
                self.rx_tainted = true;
                self.rxd.publish_raw(&self.mem, &descs);
            }
            Op::HostConnect { port } => {
                let line = format!("CONNECT {}\n", LISTEN_PORT + u32::from(port % 4));
                self.connect(line.as_bytes());
            }
            Op::HostHandshake { bytes } => self.connect(capped(&bytes, 64)),
            Op::HostWrite { conn, data } => {
                if let Some(s) = self.stream(conn) {
                    let _ = s.write(capped(&data, MAX_PAYLOAD));
                }
            }
            Op::HostRead { conn } => {
                if let Some(s) = self.stream(conn) {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                }
            }
            Op::HostShutdown { conn, how } => {
                let how = match how % 3 {
                    0 => Shutdown::Read,
                    1 => Shutdown::Write,
                    _ => Shutdown::Both,
                };
                if let Some(s) = self.stream(conn) {
                    let _ = s.shutdown(how);
                }
            }
            Op::HostClose { conn } => {
                let n = self.streams.len();
                if n > 0 {
                    self.streams.swap_remove(usize::from(conn) % n);
                }
            }
            Op::Accept => {
                while let Ok((s, _)) = self.listener.accept() {
                    self.add_stream(s);
                }
            }
            Op::Pump { respond } => self.pump(respond),
            Op::Reset => {
                self.dev.reset();
                self.requests.clear();
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new();
    for op in input.ops.into_iter().take(MAX_OPS) {
        h.run(op);
    }
    // Whatever state the guest left, the device drains and resets cleanly.
    h.give_rx(7, 0);
    h.pump(false);
    h.dev.reset();
    assert_eq!(h.dev.connection_count(), 0, "reset drops every connection");
});
