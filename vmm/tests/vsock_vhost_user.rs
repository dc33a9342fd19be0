//! The vsock device served over vhost-user, driven by an in-process frontend
//! (vhost's `Frontend`, as QEMU would): memory table from a shared file, vring
//! addresses, kick and call eventfds, then a host-initiated connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use husk_vmm::devices::vsock::{serve_vsock, HOST_CID, RX_QUEUE, TX_QUEUE};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

mod frontend;
use frontend::{ring, setup_vrings, shared_memory, wait_event};

const HDR: u32 = 44;
const GUEST_CID: u64 = 3;

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

    let mem = shared_memory(&mut frontend);
    let (kicks, calls) = setup_vrings(&mut frontend, &mem, 3);

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
