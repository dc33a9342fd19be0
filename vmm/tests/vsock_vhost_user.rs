//! The vsock device served over vhost-user, driven by an in-process frontend
//! (vhost's `Frontend`, as QEMU would): memory table from a shared file, vring
//! addresses, kick and call eventfds, then a host-initiated connection.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use husk_vmm::devices::vsock::{serve_vsock, HOST_CID, RX_QUEUE, TX_QUEUE};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM: usize = 1 << 20;
const QSIZE: u16 = 16;
const HDR: u32 = 44;
const GUEST_CID: u64 = 3;

/// Ring layout of queue `q` in guest physical memory.
fn ring(q: usize) -> (u64, u64, u64) {
    let base = 0x1_0000 * (q as u64 + 1);
    (base, base + 0x1000, base + 0x2000)
}

/// Publishes a one-descriptor chain at slot 0 of queue `q`.
fn publish(mem: &GuestMemoryMmap, q: usize, addr: u64, len: u32, write: bool) {
    let (desc, avail, _) = ring(q);
    mem.write_obj(addr, GuestAddress(desc)).unwrap();
    mem.write_obj(len, GuestAddress(desc + 8)).unwrap();
    mem.write_obj(if write { 2u16 } else { 0 }, GuestAddress(desc + 12))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
}

fn header(op: u16, src_port: u32, dst_port: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(GUEST_CID.to_le_bytes());
    b.extend(HOST_CID.to_le_bytes());
    b.extend(src_port.to_le_bytes());
    b.extend(dst_port.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // len
    b.extend(1u16.to_le_bytes()); // type STREAM
    b.extend(op.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // flags
    b.extend((64u32 * 1024).to_le_bytes()); // buf_alloc
    b.extend(0u32.to_le_bytes()); // fwd_cnt
    b
}

fn wait_event(fd: &EventFd) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1, "the backend signalled the queue");
    fd.read().unwrap();
}

#[test]
fn frontend_connects_and_host_reaches_guest_port() {
    let dir = tempfile::tempdir().unwrap();
    let vhost_path = dir.path().join("vhost.sock");
    let uds = dir.path().join("vsock.sock");
    let mut handle = serve_vsock(&vhost_path, &uds, GUEST_CID).unwrap();

    let mut frontend = Frontend::connect(&vhost_path, 3).unwrap();
    frontend.set_owner().unwrap();
    let features = frontend.get_features().unwrap();
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1");
    frontend.set_features(features).unwrap();
    let proto = frontend.get_protocol_features().unwrap();
    assert!(proto.contains(VhostUserProtocolFeatures::CONFIG));
    frontend
        .set_protocol_features(VhostUserProtocolFeatures::CONFIG)
        .unwrap();
    let (_, cid) = frontend
        .get_config(0, 8, VhostUserConfigFlags::empty(), &[0u8; 8])
        .unwrap();
    assert_eq!(cid, GUEST_CID.to_le_bytes());

    let file: File = tempfile::tempfile().unwrap();
    file.set_len(MEM as u64).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
        GuestAddress(0),
        MEM,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap();
    let va = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    let region =
        VhostUserMemoryRegionInfo::from_guest_region(mem.find_region(GuestAddress(0)).unwrap())
            .unwrap();
    frontend.set_mem_table(&[region]).unwrap();

    let mut kicks = Vec::new();
    let mut calls = Vec::new();
    for q in 0..3 {
        let (desc, avail, used) = ring(q);
        frontend.set_vring_num(q, QSIZE).unwrap();
        let config = VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: va + desc,
            used_ring_addr: va + used,
            avail_ring_addr: va + avail,
            log_addr: None,
        };
        frontend.set_vring_addr(q, &config).unwrap();
        frontend.set_vring_base(q, 0).unwrap();
        let (kick, call) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
        frontend.set_vring_call(q, &call).unwrap();
        frontend.set_vring_kick(q, &kick).unwrap();
        frontend.set_vring_enable(q, true).unwrap();
        kicks.push(kick);
        calls.push(call);
    }

    // The guest posts an RX buffer; a host program connects to port 1024.
    publish(&mem, RX_QUEUE, 0x8_0000, HDR + 4096, true);
    kicks[RX_QUEUE].write(1).unwrap();
    let mut client = UnixStream::connect(&uds).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();

    wait_event(&calls[RX_QUEUE]);
    let (_, _, rx_used) = ring(RX_QUEUE);
    assert_eq!(mem.read_obj::<u16>(GuestAddress(rx_used + 2)).unwrap(), 1);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(rx_used + 8)).unwrap(), HDR);
    let op: u16 = mem.read_obj(GuestAddress(0x8_0000 + 30)).unwrap();
    let dst_port: u32 = mem.read_obj(GuestAddress(0x8_0000 + 20)).unwrap();
    let host_port: u32 = mem.read_obj(GuestAddress(0x8_0000 + 16)).unwrap();
    assert_eq!((op, dst_port), (1, 1024), "a REQUEST for port 1024");

    // The guest accepts: RESPONSE on the TX queue.
    mem.write_slice(&header(2, 1024, host_port), GuestAddress(0x9_0000))
        .unwrap();
    publish(&mem, TX_QUEUE, 0x9_0000, HDR, false);
    kicks[TX_QUEUE].write(1).unwrap();
    let expected = format!("OK {host_port}\n");
    let mut line = vec![0u8; expected.len()];
    client.read_exact(&mut line).unwrap();
    assert_eq!(line, expected.as_bytes());
    wait_event(&calls[TX_QUEUE]);

    drop(frontend);
    handle.stop();
    assert!(!vhost_path.exists() && !uds.exists());
}
