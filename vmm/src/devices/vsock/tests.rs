//! Device tests against in-memory guest memory: a tiny split-queue "driver"
//! puts buffers on the TX and RX queues the way the Linux driver does.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::muxer::{MAX_CONNECT_LINE, MAX_HANDSHAKES};
use super::packet::{Header, Op, HEADER_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::VsockDevice;
use crate::test_support::{DriverQueue, QUEUE_SIZE as QSIZE};

const CID: u64 = 3;
const MEM_SIZE: usize = 32 << 20;
const RX_BUF: u32 = 4096;

fn header_bytes(h: &Header) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN as usize);
    b.extend(h.src_cid.to_le_bytes());
    b.extend(h.dst_cid.to_le_bytes());
    b.extend(h.src_port.to_le_bytes());
    b.extend(h.dst_port.to_le_bytes());
    b.extend(h.len.to_le_bytes());
    b.extend(h.type_.to_le_bytes());
    b.extend(h.op.to_le_bytes());
    b.extend(h.flags.to_le_bytes());
    b.extend(h.buf_alloc.to_le_bytes());
    b.extend(h.fwd_cnt.to_le_bytes());
    b
}

fn parse_header(b: &[u8]) -> Header {
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    Header {
        src_cid: u64_at(0),
        dst_cid: u64_at(8),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16_at(28),
        op: u16_at(30),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    }
}

/// A header from the guest (CID 3) to the host.
fn guest_hdr(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op: op.raw(),
        buf_alloc: 256 * 1024,
        ..Header::default()
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    mem: GuestMemoryMmap,
    dev: VsockDevice,
    rxd: DriverQueue,
    txd: DriverQueue,
    rx: Queue,
    tx: Queue,
    next_buf: u64,
    rx_bufs: HashMap<u16, u64>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let dev = VsockDevice::new(CID, &uds).unwrap();
        let rxd = DriverQueue::new(0x1_0000);
        let txd = DriverQueue::new(0x2_0000);
        let (rx, tx) = (rxd.queue(), txd.queue());
        Harness {
            _dir: dir,
            uds,
            mem,
            dev,
            rxd,
            txd,
            rx,
            tx,
            next_buf: 0x10_0000,
            rx_bufs: HashMap::new(),
        }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        if self.next_buf + len + 0x1000 > MEM_SIZE as u64 {
            self.next_buf = 0x10_0000;
        }
        let at = self.next_buf;
        self.next_buf += (len + 0xfff) & !0xfff;
        at
    }

    /// The guest sends one packet (header and data in two descriptors).
    fn send(&mut self, mut hdr: Header, data: &[u8]) {
        hdr.len = data.len() as u32;
        let h = self.alloc(u64::from(HEADER_LEN));
        self.mem
            .write_slice(&header_bytes(&hdr), GuestAddress(h))
            .unwrap();
        let mut bufs = vec![(h, HEADER_LEN)];
        if !data.is_empty() {
            let d = self.alloc(data.len() as u64);
            self.mem.write_slice(data, GuestAddress(d)).unwrap();
            bufs.push((d, data.len() as u32));
        }
        self.txd.publish(&self.mem, &bufs, false);
        self.kick_tx();
    }

    fn kick_tx(&mut self) {
        self.dev.process_tx(&self.mem, &mut self.tx);
        let used = self.txd.take_used(&self.mem);
        assert!(!used.is_empty(), "every TX chain is returned");
    }

    /// The guest adds `n` RX buffers (one descriptor each, like Linux >= 6.2).
    fn give_rx(&mut self, n: usize) {
        for _ in 0..n {
            let at = self.alloc(u64::from(HEADER_LEN + RX_BUF));
            let head = self
                .rxd
                .publish(&self.mem, &[(at, HEADER_LEN + RX_BUF)], true);
            self.rx_bufs.insert(head, at);
        }
    }

    /// Runs host events and RX, returning the packets the guest received.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for _ in 0..4 {
            self.dev.process_host_events();
            self.dev.process_rx(&self.mem, &mut self.rx);
            for (head, len) in self.rxd.take_used(&self.mem) {
                let at = self.rx_bufs[&head];
                assert!(len >= HEADER_LEN);
                let mut raw = vec![0u8; len as usize];
                self.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
                let hdr = parse_header(&raw);
                assert_eq!(hdr.len, len - HEADER_LEN);
                out.push((hdr, raw[HEADER_LEN as usize..].to_vec()));
            }
        }
        out
    }

    /// A host client connects to guest `port`; returns the stream and host port.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut c = UnixStream::connect(&self.uds).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.give_rx(1);
        let pkts = self.recv();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        let req = pkts[0].0;
        assert_eq!(req.op, Op::Request.raw());
        assert_eq!(
            (req.src_cid, req.dst_cid, req.dst_port, req.type_),
            (HOST_CID, CID, port, TYPE_STREAM)
        );
        let hp = req.src_port;
        self.send(guest_hdr(Op::Response, port, hp), &[]);
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while b[0] != b'\n' {
            c.read_exact(&mut b).unwrap();
            line.push(b[0]);
        }
        assert_eq!(line, format!("OK {hp}\n").into_bytes());
        (c, hp)
    }
}

fn data_of(pkts: &[(Header, Vec<u8>)]) -> Vec<u8> {
    pkts.iter()
        .filter(|(h, _)| h.op == Op::Rw.raw())
        .flat_map(|(_, d)| d.clone())
        .collect()
}

fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn assert_closed(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the stream closed, got {other:?}"),
    }
}

#[test]
fn host_initiated_handshake() {
    let mut h = Harness::new();
    let (_c, hp) = h.host_connect(1024);
    assert!(hp >= 1 << 30);
    assert_eq!(h.dev.connection_count(), 1);
}

#[test]
fn data_flows_both_ways() {
    let mut h = Harness::new();
    let (mut c, hp) = h.host_connect(1024);
    c.write_all(b"hello guest").unwrap();
    h.give_rx(4);
    let pkts = h.recv();
    assert_eq!(data_of(&pkts), b"hello guest");
    assert!(pkts
        .iter()
        .all(|(p, _)| p.src_port == hp && p.dst_port == 1024 && p.buf_alloc > 0));
    h.send(guest_hdr(Op::Rw, 1024, hp), b"hello host");
    assert_eq!(read_exactly(&mut c, 10), b"hello host");
}

#[test]
fn guest_credit_is_respected_and_resumes_after_credit_update() {
    let mut h = Harness::new();
    let mut c = UnixStream::connect(&h.uds).unwrap();
    c.write_all(b"CONNECT 7\n").unwrap();
    h.give_rx(1);
    let hp = h.recv()[0].0.src_port;
    let mut resp = guest_hdr(Op::Response, 7, hp);
    resp.buf_alloc = 10;
    h.send(resp, &[]);
    let mut ok = [0u8; 64];
    let _ = c.read(&mut ok).unwrap();

    c.write_all(&[7u8; 30]).unwrap();
    h.give_rx(8);
    assert_eq!(
        data_of(&h.recv()).len(),
        10,
        "only the guest's credit is sent"
    );
    assert!(h.recv().is_empty(), "nothing more without credit");

    let mut update = guest_hdr(Op::CreditUpdate, 7, hp);
    update.buf_alloc = 10;
    update.fwd_cnt = 10;
    h.send(update, &[]);
    assert_eq!(data_of(&h.recv()).len(), 10);
    update.fwd_cnt = 20;
    h.send(update, &[]);
    assert_eq!(data_of(&h.recv()).len(), 10);
}

#[test]
fn credit_request_is_answered_and_our_fwd_cnt_advances() {
    let mut h = Harness::new();
    let (mut c, hp) = h.host_connect(1024);
    h.send(guest_hdr(Op::Rw, 1024, hp), &[1u8; 100]);
    assert_eq!(read_exactly(&mut c, 100).len(), 100);
    h.send(guest_hdr(Op::CreditRequest, 1024, hp), &[]);
    h.give_rx(2);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, Op::CreditUpdate.raw());
    assert_eq!(pkts[0].0.fwd_cnt, 100);
}

#[test]
fn guest_initiated_connection_goes_to_port_socket() {
    let mut h = Harness::new();
    let path = PathBuf::from(format!("{}_52", h.uds.display()));
    let listener = UnixListener::bind(&path).unwrap();
    h.send(guest_hdr(Op::Request, 5000, 52), &[]);
    h.give_rx(2);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    let resp = pkts[0].0;
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (Op::Response.raw(), 52, 5000)
    );
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    h.send(guest_hdr(Op::Rw, 5000, 52), b"ping");
    assert_eq!(read_exactly(&mut s, 4), b"ping");
    s.write_all(b"pong").unwrap();
    h.give_rx(2);
    assert_eq!(data_of(&h.recv()), b"pong");
}

#[test]
fn guest_request_without_host_listener_is_reset() {
    let mut h = Harness::new();
    h.send(guest_hdr(Op::Request, 5000, 53), &[]);
    h.give_rx(2);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (Op::Rst.raw(), 5000));
    assert_eq!(h.dev.connection_count(), 0);
}

#[test]
fn host_close_sends_shutdown_then_guest_shutdown_gets_rst() {
    let mut h = Harness::new();
    let (c, hp) = h.host_connect(1024);
    drop(c);
    h.give_rx(4);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, Op::Shutdown.raw());
    assert_eq!(pkts[0].0.flags, SHUTDOWN_SEND);
    let mut shut = guest_hdr(Op::Shutdown, 1024, hp);
    shut.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(shut, &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, Op::Rst.raw());
    assert_eq!(h.dev.connection_count(), 0);
}

#[test]
fn guest_shutdown_send_gives_host_eof_after_data() {
    let mut h = Harness::new();
    let (mut c, hp) = h.host_connect(1024);
    h.send(guest_hdr(Op::Rw, 1024, hp), b"last words");
    let mut shut = guest_hdr(Op::Shutdown, 1024, hp);
    shut.flags = SHUTDOWN_SEND;
    h.send(shut, &[]);
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"last words");
    assert_eq!(h.dev.connection_count(), 1, "host may still send");
}

#[test]
fn guest_rst_closes_host_stream() {
    let mut h = Harness::new();
    let (mut c, hp) = h.host_connect(1024);
    h.send(guest_hdr(Op::Rst, 1024, hp), &[]);
    assert_eq!(h.dev.connection_count(), 0);
    assert_closed(&mut c);
    h.give_rx(2);
    assert!(h.recv().is_empty(), "a RST is never answered");
}

#[test]
fn guest_refusing_host_connect_closes_client() {
    let mut h = Harness::new();
    let mut c = UnixStream::connect(&h.uds).unwrap();
    c.write_all(b"CONNECT 9\n").unwrap();
    h.give_rx(1);
    let hp = h.recv()[0].0.src_port;
    h.send(guest_hdr(Op::Rst, 9, hp), &[]);
    assert_closed(&mut c);
}

#[test]
fn stalled_peers_do_not_stall_others() {
    let mut h = Harness::new();
    // A host peer that never reads what the guest sends.
    let (_deaf, deaf_port) = h.host_connect(1);
    // A connection whose guest reader has no credit left.
    let mut c = UnixStream::connect(&h.uds).unwrap();
    c.write_all(b"CONNECT 2\n").unwrap();
    h.give_rx(1);
    let full_port = h.recv()[0].0.src_port;
    let mut resp = guest_hdr(Op::Response, 2, full_port);
    resp.buf_alloc = 0;
    h.send(resp, &[]);
    c.write_all(&[0u8; 1000]).unwrap();
    // Plenty of healthy connections.
    let mut healthy: Vec<(UnixStream, u32)> = (0..20).map(|i| h.host_connect(100 + i)).collect();

    // Fill the deaf peer's socket and then our buffer, as far as the
    // guest's credit goes, like a well-behaved driver.
    let chunk = 16384u32;
    let (mut sent, mut fwd, mut buf_alloc) = (0u32, 0u32, super::connection::CONN_BUF_SIZE);
    for _ in 0..1000 {
        if buf_alloc - (sent - fwd) < chunk {
            h.give_rx(1);
            let before = fwd;
            for (p, _) in h.recv() {
                if p.src_port == deaf_port {
                    (fwd, buf_alloc) = (p.fwd_cnt, p.buf_alloc);
                }
            }
            if fwd == before {
                break;
            }
            continue;
        }
        h.send(guest_hdr(Op::Rw, 1, deaf_port), &[5u8; 16384]);
        sent += chunk;
    }
    assert!(
        sent - fwd >= buf_alloc - chunk,
        "the deaf peer's buffer is full"
    );
    assert!(h.dev.connection_count() == 22, "and it was not reset");
    for (i, (s, hp)) in healthy.iter_mut().enumerate() {
        let port = 100 + i as u32;
        s.write_all(b"up").unwrap();
        h.send(guest_hdr(Op::Rw, port, *hp), b"down");
        assert_eq!(read_exactly(s, 4), b"down");
    }
    h.give_rx(64);
    let pkts = h.recv();
    assert!(pkts
        .iter()
        .all(|(p, _)| p.src_port != full_port || p.op != Op::Rw.raw()));
    let up: usize = pkts
        .iter()
        .filter(|(p, _)| p.op == Op::Rw.raw())
        .map(|(_, d)| d.len())
        .sum();
    assert_eq!(up, 2 * healthy.len());
    assert_eq!(h.dev.connection_count(), 22);
}

#[test]
fn guest_exceeding_our_credit_is_reset() {
    let mut h = Harness::new();
    let (_deaf, hp) = h.host_connect(1);
    let mut reset = false;
    for _ in 0..64 {
        h.send(guest_hdr(Op::Rw, 1, hp), &[5u8; 65536]);
        h.give_rx(1);
        if h.recv().iter().any(|(p, _)| p.op == Op::Rst.raw()) {
            reset = true;
            break;
        }
    }
    assert!(reset, "a guest ignoring buf_alloc must be reset");
    assert_eq!(h.dev.connection_count(), 0);
}

#[test]
fn bad_headers_are_reset_or_dropped() {
    let mut h = Harness::new();
    let (_c, hp) = h.host_connect(1024);
    h.give_rx(16);

    // Foreign source CID: dropped silently.
    let mut spoof = guest_hdr(Op::Request, 1, 2);
    spoof.src_cid = 99;
    h.send(spoof, &[]);
    assert!(h.recv().is_empty());

    let mut cases = Vec::new();
    let mut wrong_type = guest_hdr(Op::Request, 10, 11);
    wrong_type.type_ = 2;
    cases.push(wrong_type);
    let mut wrong_dst = guest_hdr(Op::Request, 10, 11);
    wrong_dst.dst_cid = 4;
    cases.push(wrong_dst);
    let mut unknown_op = guest_hdr(Op::Request, 10, 11);
    unknown_op.op = 99;
    cases.push(unknown_op);
    cases.push(guest_hdr(Op::Rw, 10, 11));
    cases.push(guest_hdr(Op::Response, 10, 11));
    for hdr in cases {
        h.send(hdr, if hdr.op == Op::Rw.raw() { b"x" } else { &[] });
        let pkts = h.recv();
        assert_eq!(pkts.len(), 1, "{hdr:?}");
        assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (Op::Rst.raw(), 10));
    }
    // A duplicate REQUEST on a live connection resets it.
    h.send(guest_hdr(Op::Request, 1024, hp), &[]);
    assert_eq!(h.recv()[0].0.op, Op::Rst.raw());
    assert_eq!(h.dev.connection_count(), 0);
}

#[test]
fn malformed_tx_chains_are_returned_and_harmless() {
    let mut h = Harness::new();
    let (mut c, hp) = h.host_connect(1024);
    let hdr_at = h.alloc(4096);
    // Names no connection, so its chains are dropped without side effects.
    let mut big = guest_hdr(Op::Rw, 999, hp);
    big.len = 1 << 30;
    h.mem
        .write_slice(&header_bytes(&big), GuestAddress(hdr_at))
        .unwrap();
    let w = VRING_DESC_F_WRITE as u16;
    let n = VRING_DESC_F_NEXT as u16;
    let outside = MEM_SIZE as u64 + 0x1000;
    let next = |d: &DriverQueue, k: u16| (d.next_desc() + k) % QSIZE;
    let chains: Vec<Vec<(u64, u32, u16, u16)>> = vec![
        vec![(hdr_at, 0, 0, 0)],                                    // zero length
        vec![(hdr_at, HEADER_LEN, w, 0)],                           // device-writable TX buffer
        vec![(outside, HEADER_LEN, 0, 0)],                          // outside guest memory
        vec![(u64::MAX - 8, HEADER_LEN, 0, 0)],                     // address overflow
        vec![(hdr_at, HEADER_LEN, 0, 0)],                           // len 1 GiB, no data descriptor
        vec![(hdr_at, HEADER_LEN, n, 0), (hdr_at, u32::MAX, 0, 0)], // absurd data length
    ];
    for descs in chains {
        let mut descs = descs;
        if descs.len() == 2 {
            descs[0].3 = next(&h.txd, 1);
        }
        h.txd.publish_raw(&h.mem, &descs);
        h.kick_tx();
    }
    // A loop: the descriptor's next points at itself.
    let me = h.txd.next_desc();
    let mut looped = guest_hdr(Op::CreditUpdate, 1024, hp);
    looped.len = 0;
    h.mem
        .write_slice(&header_bytes(&looped), GuestAddress(hdr_at))
        .unwrap();
    h.txd.publish_raw(&h.mem, &[(hdr_at, HEADER_LEN, n, me)]);
    h.kick_tx();
    // An RX buffer the device cannot write to, then a good one.
    let ro = h.alloc(4096);
    h.rxd.publish_raw(&h.mem, &[(ro, HEADER_LEN + 16, 0, 0)]);
    h.rx_bufs
        .insert(h.rxd.next_desc().wrapping_sub(1) % QSIZE, ro);
    h.dev.process_rx(&h.mem, &mut h.rx);

    // The connection still works.
    h.send(guest_hdr(Op::Rw, 1024, hp), b"still fine");
    assert_eq!(read_exactly(&mut c, 10), b"still fine");
}

#[test]
fn payload_split_over_descriptors_is_reassembled() {
    let mut h = Harness::new();
    let (mut c, hp) = h.host_connect(1024);
    // Header and the first bytes in one descriptor, the rest in two more.
    let mut hdr = guest_hdr(Op::Rw, 1024, hp);
    hdr.len = 12;
    let a = h.alloc(4096);
    let mut head = header_bytes(&hdr);
    head.extend(b"abcd");
    h.mem.write_slice(&head, GuestAddress(a)).unwrap();
    let b = h.alloc(4096);
    h.mem.write_slice(b"efgh", GuestAddress(b)).unwrap();
    let d = h.alloc(4096);
    h.mem.write_slice(b"ijklZZZZ", GuestAddress(d)).unwrap();
    h.txd
        .publish(&h.mem, &[(a, HEADER_LEN + 4), (b, 4), (d, 8)], false);
    h.kick_tx();
    assert_eq!(read_exactly(&mut c, 12), b"abcdefghijkl");
    assert_eq!(h.dev.connection_count(), 1);
}

#[test]
fn malformed_rw_on_a_live_connection_resets_it() {
    let mut h = Harness::new();
    let (mut c, hp) = h.host_connect(1024);
    let at = h.alloc(4096);
    let mut hdr = guest_hdr(Op::Rw, 1024, hp);
    hdr.len = 100; // but no data descriptor follows
    h.mem
        .write_slice(&header_bytes(&hdr), GuestAddress(at))
        .unwrap();
    h.txd.publish(&h.mem, &[(at, HEADER_LEN)], false);
    h.kick_tx();
    h.give_rx(2);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (Op::Rst.raw(), 1024));
    assert_eq!(h.dev.connection_count(), 0);
    assert_closed(&mut c);
}

#[test]
fn host_garbage_and_long_lines_are_closed() {
    let mut h = Harness::new();
    let mut garbage = UnixStream::connect(&h.uds).unwrap();
    garbage.write_all(b"HELLO THERE\n").unwrap();
    let mut long = UnixStream::connect(&h.uds).unwrap();
    long.write_all(&[b'1'; MAX_CONNECT_LINE + 8]).unwrap();
    let mut bad_port = UnixStream::connect(&h.uds).unwrap();
    bad_port.write_all(b"CONNECT 99999999999\n").unwrap();
    h.give_rx(4);
    assert!(h.recv().is_empty(), "no request reaches the guest");
    assert_closed(&mut garbage);
    assert_closed(&mut long);
    assert_closed(&mut bad_port);
    assert_eq!(h.dev.connection_count(), 0);
}

#[test]
fn silent_host_clients_are_capped() {
    let mut h = Harness::new();
    let silent: Vec<UnixStream> = (0..MAX_HANDSHAKES)
        .map(|_| UnixStream::connect(&h.uds).unwrap())
        .collect();
    h.recv();
    let mut extra = UnixStream::connect(&h.uds).unwrap();
    h.recv();
    assert_closed(&mut extra);
    drop(silent);
    // Once they leave, new clients are served again.
    let _ = h.recv();
    let (_c, _) = h.host_connect(1024);
}

#[test]
fn reserved_cids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        assert!(
            VsockDevice::new(cid, &dir.path().join("s")).is_err(),
            "{cid}"
        );
    }
}

#[test]
fn socket_file_is_removed_on_drop() {
    let h = Harness::new();
    let path = h.uds.clone();
    assert!(path.exists());
    drop(h.dev);
    assert!(!path.exists());
}

#[test]
fn serve_vsock_listens_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let vhost = dir.path().join("vhost.sock");
    let uds = dir.path().join("vsock.sock");
    let mut handle = super::serve_vsock(&vhost, &uds, CID).unwrap();
    assert!(vhost.exists() && uds.exists());
    let _frontend = UnixStream::connect(&vhost).unwrap();
    handle.stop();
    assert!(!vhost.exists());
    assert!(!uds.exists(), "the device, and its socket, are gone");
}

mod mmio_face {
    use std::sync::Arc;

    use vm_memory::GuestMemoryAtomic;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::devices::vsock::VsockMmioDevice;
    use crate::test_support::InterruptRecorder;
    use crate::virtio::{Activation, ActiveQueue, InterruptKind, VirtioDevice};

    #[test]
    fn worker_serves_queues_and_host_events_until_reset() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mut dev = VsockMmioDevice::new(CID, &uds).unwrap();
        assert_eq!(dev.device_type(), 19);
        let mut cid = [0u8; 8];
        dev.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), CID);
        let mut past_end = [0xffu8; 4];
        dev.read_config(6, &mut past_end);
        assert_eq!(past_end, [0, 0, 0, 0]);

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut rxd = DriverQueue::new(0x1_0000);
        let txd = DriverQueue::new(0x2_0000);
        let rx_kick = EventFd::new(0).unwrap();
        let queues = vec![
            ActiveQueue {
                index: 0,
                queue: rxd.queue(),
                notifier: rx_kick.try_clone().unwrap(),
            },
            ActiveQueue {
                index: 1,
                queue: txd.queue(),
                notifier: EventFd::new(0).unwrap(),
            },
        ];
        let (interrupts, irqs) = InterruptRecorder::new();
        // Activation and reset run where the builtin VMM runs them: on a
        // thread under the vCPU filter.
        crate::seccomp::on_vcpu_thread(|| {
            dev.activate(Activation {
                mem: GuestMemoryAtomic::new(mem.clone()),
                acked_features: 1 << 32,
                queues,
                interrupt: Arc::new(interrupts),
            })
        })
        .unwrap();

        rxd.publish(&mem, &[(0x10_0000, HEADER_LEN + RX_BUF)], true);
        rx_kick.write(1).unwrap();
        let mut client = UnixStream::connect(&uds).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        let irq = irqs.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(irq, InterruptKind::Queue(0));
        assert_eq!(rxd.take_used(&mem).len(), 1);
        let mut raw = [0u8; HEADER_LEN as usize];
        mem.read_slice(&mut raw, GuestAddress(0x10_0000)).unwrap();
        let req = parse_header(&raw);
        assert_eq!((req.op, req.dst_port), (Op::Request.raw(), 1024));

        crate::seccomp::on_vcpu_thread(|| dev.reset());
        assert_closed(&mut client);
    }

    #[test]
    fn activation_without_tx_queue_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut dev = VsockMmioDevice::new(CID, &dir.path().join("s")).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rxd = DriverQueue::new(0x1_0000);
        let (interrupts, _irqs) = InterruptRecorder::new();
        let result = dev.activate(Activation {
            mem: GuestMemoryAtomic::new(mem),
            acked_features: 0,
            queues: vec![ActiveQueue {
                index: 0,
                queue: rxd.queue(),
                notifier: EventFd::new(0).unwrap(),
            }],
            interrupt: Arc::new(interrupts),
        });
        assert!(result.is_err());
    }
}
