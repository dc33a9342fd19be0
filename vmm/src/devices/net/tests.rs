//! Device tests against in-memory guest memory: a small split-queue "driver"
//! posts chains the way Linux's virtio-net does (and the ways a hostile one
//! might), and a real tap in a network namespace of the test's own, with a
//! packet socket on it as the peer, carries the frames.
//!
//! Taps need root and `/dev/net/tun`; without them those tests say so and
//! skip. Nothing here touches the machine's own network: every tap is made
//! in a fresh namespace (`unshare(CLONE_NEWNET)` in a helper thread) that
//! lives only as long as the test's sockets in it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::offloads_for;
use super::{Error, NetConfig, NetDevice, Tap, CONFIG_SPACE_LEN, VNET_HDR_LEN};
use crate::test_support::{write_descriptor, DriverQueue, QUEUE_SIZE as QSIZE};

const MEM_SIZE: usize = 8 << 20;
/// Where test buffers live (the rings are below).
const BUFS: u64 = 0x10_0000;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// A local experimental EtherType: nothing in the kernel answers it.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// RX queue at 0, TX queue at 64 KiB.
fn queues() -> (DriverQueue, DriverQueue) {
    (DriverQueue::new(0), DriverQueue::new(0x1_0000))
}

/// A test frame: broadcast, from the guest's MAC, our EtherType, then
/// `payload_len` bytes counting up from `seed`.
fn frame(payload_len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(MAC);
    f.extend(ETHERTYPE);
    f.extend((0..payload_len).map(|i| seed.wrapping_add(i as u8)));
    f
}

fn is_ours(f: &[u8]) -> bool {
    f.get(12..14) == Some(&ETHERTYPE[..])
}

/// The peer: a packet socket bound to the tap, in the tap's namespace.
struct Peer {
    sock: OwnedFd,
}

impl Peer {
    fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::send(self.sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "{}", io::Error::last_os_error());
    }

    /// The next frame of ours the tap's interface received, within 5 s.
    fn recv(&self) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 70_000];
        while Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 && is_ours(&buf[..n as usize]) {
                return Some(buf[..n as usize].to_vec());
            }
        }
        None
    }

    /// Whether a frame of ours arrives within `wait`.
    fn nothing_within(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 70_000];
        while Instant::now() < deadline {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 && is_ours(&buf[..n as usize]) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    value: libc::c_int,
    _pad: [u8; 20],
}

fn ifreq(name: &str, value: libc::c_int) -> IfReq {
    let mut req = IfReq {
        name: [0; 16],
        value,
        _pad: [0; 20],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    req
}

/// A tap (MTU `mtu`, up) in a new network namespace, and its peer; `None`
/// (the test skips) where this process cannot make namespaces or taps.
fn tap_in_netns(mtu: i32) -> Option<(Tap, Peer)> {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipping: cannot make a network namespace: {}",
                io::Error::last_os_error()
            );
            return None;
        }
        // No IPv6 chatter (router solicitations, DAD) on the test's tap.
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        let tap = match Tap::open("husktest%d") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipping: cannot open a tap: {e}");
                return None;
            }
        };
        // SAFETY: plain socket creation.
        let ctl = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(ctl >= 0);
        // SAFETY: `ctl` is a fresh fd we own.
        let ctl = unsafe { OwnedFd::from_raw_fd(ctl) };
        let mut req = ifreq(tap.name(), mtu);
        // SAFETY: SIOCSIFMTU reads an ifreq with the MTU in the union.
        assert_eq!(
            unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFMTU, &mut req) },
            0
        );
        let mut req = ifreq(
            tap.name(),
            (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_int,
        );
        // SAFETY: SIOCSIFFLAGS reads an ifreq with the flags in the union.
        assert_eq!(
            unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) },
            0
        );
        let name = std::ffi::CString::new(tap.name()).unwrap();
        // SAFETY: `name` is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0);
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket creation.
        let sock = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        assert!(sock >= 0);
        // SAFETY: `sock` is a fresh fd we own.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0);
        Some((tap, Peer { sock }))
    })
    .join()
    .unwrap()
}

fn config() -> NetConfig {
    NetConfig {
        mac: MAC,
        mtu: 1500,
    }
}

/// A device on a namespaced tap with `features` acked, and its peer.
fn device(features: u64, mtu: i32) -> Option<(NetDevice, Peer)> {
    let (tap, peer) = tap_in_netns(mtu)?;
    let mut dev = NetDevice::new(tap, config()).unwrap();
    dev.set_acked_features(features).unwrap();
    Some((dev, peer))
}

fn bit(f: u32) -> u64 {
    1 << f
}

const VERSION_1: u64 = 1 << 32;

/// Header bytes: flags 0, no GSO.
fn plain_header() -> [u8; VNET_HDR_LEN] {
    [0; VNET_HDR_LEN]
}

/// Runs RX until `want` used entries appeared (frames cross the tap
/// asynchronously) or 5 s passed.
fn rx_until(
    dev: &mut NetDevice,
    mem: &GuestMemoryMmap,
    rxq: &mut Queue,
    drv: &mut DriverQueue,
    want: usize,
) -> Vec<(u16, u32)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut used = Vec::new();
    while used.len() < want && Instant::now() < deadline {
        dev.process_rx(mem, rxq).unwrap();
        used.extend(drv.take_used(mem));
        if used.len() < want {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    used
}

fn readable(fd: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

#[test]
fn config_space_and_features() {
    let Some((dev, _peer)) = device(0, 1500) else {
        return;
    };
    let space = dev.config_space();
    assert_eq!(space.len(), CONFIG_SPACE_LEN);
    assert_eq!(&space[..6], &MAC);
    assert_eq!(u16::from_le_bytes([space[6], space[7]]), 1, "link up");
    assert_eq!(
        u16::from_le_bytes([space[8], space[9]]),
        1,
        "one queue pair"
    );
    assert_eq!(u16::from_le_bytes([space[10], space[11]]), 1500);
    let f = dev.features();
    for needed in [32, 0, 1, 3, 5, 7, 8, 11, 12, 15, 29] {
        assert!(f & (1 << needed) != 0, "feature {needed} not offered");
    }
    // No control queue, no multiqueue, no UFO.
    for absent in [17, 22, 10, 14] {
        assert!(f & (1 << absent) == 0, "feature {absent} offered");
    }
    assert!(dev.tap_name().starts_with("husktest"), "{}", dev.tap_name());
}

#[test]
fn tap_offloads_follow_what_the_guest_accepts() {
    assert_eq!(offloads_for(0), 0);
    // Segmentation without checksum offload counts for nothing.
    assert_eq!(offloads_for(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
    assert_eq!(offloads_for(bit(VIRTIO_NET_F_GUEST_CSUM)), libc::TUN_F_CSUM);
    assert_eq!(
        offloads_for(
            bit(VIRTIO_NET_F_GUEST_CSUM)
                | bit(VIRTIO_NET_F_GUEST_TSO4)
                | bit(VIRTIO_NET_F_GUEST_TSO6)
                | bit(VIRTIO_NET_F_GUEST_ECN)
        ),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
    );
}

#[test]
fn bad_configs_and_tap_names_are_refused() {
    for name in ["", "a-name-far-too-long", "nul\0"] {
        assert!(
            matches!(Tap::open(name), Err(Error::TapName(_))),
            "{name:?}"
        );
    }
    let bad_mtu = NetConfig { mac: MAC, mtu: 67 };
    assert!(matches!(bad_mtu.validate(), Err(Error::InvalidConfig(_))));
    let multicast = NetConfig {
        mac: [0x01, 0, 0x5e, 0, 0, 1],
        mtu: 1500,
    };
    assert!(matches!(multicast.validate(), Err(Error::InvalidConfig(_))));
    assert!(config().validate().is_ok());
}

#[test]
fn tx_frame_reaches_the_tap_peer() {
    let Some((mut dev, peer)) = device(VERSION_1 | bit(VIRTIO_NET_F_CSUM), 1500) else {
        return;
    };
    let mem = memory();
    let (_, mut drv) = queues();
    let mut txq = drv.queue();
    let f = frame(300, 7);
    // Header and frame split the way Linux does: header alone, then the
    // frame over two descriptors.
    mem.write_slice(&plain_header(), GuestAddress(BUFS))
        .unwrap();
    mem.write_slice(&f[..100], GuestAddress(BUFS + 0x1000))
        .unwrap();
    mem.write_slice(&f[100..], GuestAddress(BUFS + 0x2000))
        .unwrap();
    let head = drv.publish(
        &mem,
        &[
            (BUFS, VNET_HDR_LEN as u32),
            (BUFS + 0x1000, 100),
            (BUFS + 0x2000, (f.len() - 100) as u32),
        ],
        false,
    );
    assert!(
        dev.process_tx(&mem, &mut txq).unwrap(),
        "driver must be told"
    );
    assert_eq!(drv.take_used(&mem), [(head, 0)]);
    assert_eq!(peer.recv().as_deref(), Some(&f[..]));
    let s = dev.stats();
    assert_eq!(
        (s.tx_frames, s.tx_bytes, s.bad_chains),
        (1, f.len() as u64, 0)
    );

    // Header and frame in one descriptor, as with indirect-less small sends.
    let f2 = frame(60, 9);
    let mut both = plain_header().to_vec();
    both.extend(&f2);
    mem.write_slice(&both, GuestAddress(BUFS + 0x3000)).unwrap();
    let head = drv.publish(&mem, &[(BUFS + 0x3000, both.len() as u32)], false);
    dev.process_tx(&mem, &mut txq).unwrap();
    assert_eq!(drv.take_used(&mem), [(head, 0)]);
    assert_eq!(peer.recv().as_deref(), Some(&f2[..]));
}

#[test]
fn tx_through_an_indirect_table() {
    let Some((mut dev, peer)) = device(VERSION_1, 1500) else {
        return;
    };
    let mem = memory();
    let (_, mut drv) = queues();
    let mut txq = drv.queue();
    let f = frame(200, 3);
    mem.write_slice(&plain_header(), GuestAddress(BUFS))
        .unwrap();
    mem.write_slice(&f, GuestAddress(BUFS + 0x1000)).unwrap();
    // The indirect table: two descriptors.
    let table = BUFS + 0x8000;
    write_descriptor(
        &mem,
        table,
        0,
        (BUFS, VNET_HDR_LEN as u32, VRING_DESC_F_NEXT as u16, 1),
    );
    write_descriptor(&mem, table, 1, (BUFS + 0x1000, f.len() as u32, 0, 0));
    let head = drv.publish_raw(&mem, &[(table, 32, VRING_DESC_F_INDIRECT as u16, 0)]);
    dev.process_tx(&mem, &mut txq).unwrap();
    assert_eq!(drv.take_used(&mem), [(head, 0)]);
    assert_eq!(peer.recv().as_deref(), Some(&f[..]));
}

#[test]
fn hostile_tx_chains_are_refused_and_the_queue_keeps_working() {
    let Some((mut dev, peer)) = device(VERSION_1, 1500) else {
        return;
    };
    let mem = memory();
    let (_, mut drv) = queues();
    let mut txq = drv.queue();
    let f = frame(100, 1);
    let mut pkt = plain_header().to_vec();
    pkt.extend(&f);
    mem.write_slice(&pkt, GuestAddress(BUFS)).unwrap();
    let len = pkt.len() as u32;
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    let mut gso = pkt.clone();
    gso[1] = 1; // TCPv4 segmentation, not negotiated
    mem.write_slice(&gso, GuestAddress(BUFS + 0x1_0000))
        .unwrap();

    let heads = vec![
        // A device-writable descriptor in a TX chain.
        drv.publish_raw(&mem, &[(BUFS, len, write, 0)]),
        // Longer than any frame: 2 x 40 KiB.
        drv.publish(&mem, &[(BUFS, 40 << 10), (BUFS, 40 << 10)], false),
        // Outside guest memory, and straddling its end.
        drv.publish(&mem, &[(1 << 40, len)], false),
        drv.publish(&mem, &[(MEM_SIZE as u64 - 8, len)], false),
        // A loop: the descriptor names itself as next.
        {
            let me = drv.next_desc();
            drv.publish_raw(&mem, &[(BUFS, len, next, me)])
        },
        // Next out of the table.
        drv.publish_raw(&mem, &[(BUFS, len, next, 999)]),
        // Shorter than a header, and a header without an Ethernet header.
        drv.publish(&mem, &[(BUFS, 6)], false),
        drv.publish(&mem, &[(BUFS, VNET_HDR_LEN as u32 + 4)], false),
        // Segmentation the driver did not negotiate.
        drv.publish(&mem, &[(BUFS + 0x1_0000, len)], false),
    ];
    // Finally a good one.
    let good = drv.publish(&mem, &[(BUFS, len)], false);

    dev.process_tx(&mem, &mut txq).unwrap();
    let used = drv.take_used(&mem);
    let mut expected: Vec<(u16, u32)> = heads.iter().map(|&h| (h, 0)).collect();
    expected.push((good, 0));
    assert_eq!(used, expected, "each chain returned exactly once");
    assert_eq!(dev.stats().bad_chains, heads.len() as u64);
    assert_eq!(dev.stats().tx_frames, 1);
    assert_eq!(peer.recv().as_deref(), Some(&f[..]));
    assert!(peer.nothing_within(Duration::from_millis(100)));
}

#[test]
fn an_avail_entry_naming_no_descriptor_is_skipped() {
    let Some((mut dev, _peer)) = device(VERSION_1, 1500) else {
        return;
    };
    let mem = memory();
    let (_, mut drv) = queues();
    let mut txq = drv.queue();
    drv.publish_head(&mem, QSIZE + 3);
    dev.process_tx(&mem, &mut txq).unwrap();
    assert!(drv.take_used(&mem).is_empty());
    assert_eq!(dev.stats().bad_chains, 1);
}

#[test]
fn an_avail_index_beyond_the_queue_stops_it() {
    let Some((mut dev, _peer)) = device(VERSION_1, 1500) else {
        return;
    };
    let mem = memory();
    let (rx, tx) = queues();
    let (mut rxq, mut txq) = (rx.queue(), tx.queue());
    mem.write_obj(QSIZE + 1, GuestAddress(tx.avail() + 2))
        .unwrap();
    mem.write_obj(QSIZE + 1, GuestAddress(rx.avail() + 2))
        .unwrap();
    assert!(matches!(
        dev.process_tx(&mem, &mut txq),
        Err(Error::Queue(_))
    ));
    assert!(matches!(
        dev.process_rx(&mem, &mut rxq),
        Err(Error::Queue(_))
    ));
}

#[test]
fn rx_frame_lands_in_a_guest_buffer_with_its_header() {
    let Some((mut dev, peer)) = device(VERSION_1 | bit(VIRTIO_NET_F_MRG_RXBUF), 1500) else {
        return;
    };
    let mem = memory();
    let (mut drv, _) = queues();
    let mut rxq = drv.queue();
    let heads: Vec<u16> = (0..4)
        .map(|i| drv.publish(&mem, &[(BUFS + i * 0x1000, 2048)], true))
        .collect();
    // Dirty the num_buffers field: the device must write it.
    mem.write_obj(0xffffu16, GuestAddress(BUFS + 10)).unwrap();
    let f = frame(100, 42);
    peer.send(&f);
    let used = rx_until(&mut dev, &mem, &mut rxq, &mut drv, 1);
    assert_eq!(used, [(heads[0], (VNET_HDR_LEN + f.len()) as u32)]);
    let mut got = vec![0u8; VNET_HDR_LEN + f.len()];
    mem.read_slice(&mut got, GuestAddress(BUFS)).unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(got[1], 0, "no GSO");
    assert_eq!(&got[VNET_HDR_LEN..], &f[..]);
    assert_eq!(dev.stats().rx_frames, 1);
    assert_eq!(dev.stats().rx_bytes, f.len() as u64);
}

#[test]
fn a_big_rx_frame_spreads_over_mergeable_buffers() {
    let Some((mut dev, peer)) = device(VERSION_1 | bit(VIRTIO_NET_F_MRG_RXBUF), 9000) else {
        return;
    };
    let mem = memory();
    let (mut drv, _) = queues();
    let mut rxq = drv.queue();
    let heads: Vec<u16> = (0..8)
        .map(|i| drv.publish(&mem, &[(BUFS + i * 0x1000, 2048)], true))
        .collect();
    let f = frame(5000, 5);
    peer.send(&f);
    let total = VNET_HDR_LEN + f.len();
    let used = rx_until(&mut dev, &mem, &mut rxq, &mut drv, 3);
    assert_eq!(
        used,
        [
            (heads[0], 2048),
            (heads[1], 2048),
            (heads[2], (total - 4096) as u32)
        ]
    );
    let mut got = Vec::new();
    for (i, &(_, len)) in used.iter().enumerate() {
        let mut part = vec![0u8; len as usize];
        mem.read_slice(&mut part, GuestAddress(BUFS + i as u64 * 0x1000))
            .unwrap();
        got.extend(part);
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..], &f[..]);
}

#[test]
fn a_frame_waits_in_the_device_until_the_guest_posts_enough_buffers() {
    let Some((mut dev, peer)) = device(VERSION_1 | bit(VIRTIO_NET_F_MRG_RXBUF), 9000) else {
        return;
    };
    let mem = memory();
    let (mut drv, _) = queues();
    let mut rxq = drv.queue();
    // No buffer at all: the tap is not even read.
    peer.send(&frame(3000, 1));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!dev.process_rx(&mem, &mut rxq).unwrap());
    assert_eq!(dev.stats().rx_frames + dev.stats().rx_dropped, 0);
    assert!(
        !readable(dev.host_event_fd()),
        "no tap wakeups while the guest has no buffer"
    );
    // One buffer, too small for the frame: it is held, nothing is used.
    let h0 = drv.publish(&mem, &[(BUFS, 2048)], true);
    assert!(!dev.process_rx(&mem, &mut rxq).unwrap());
    assert!(drv.take_used(&mem).is_empty());
    assert_eq!(dev.stats().rx_frames + dev.stats().rx_dropped, 0);
    assert!(!readable(dev.host_event_fd()));
    // The second buffer completes it.
    let h1 = drv.publish(&mem, &[(BUFS + 0x1000, 2048)], true);
    let used = rx_until(&mut dev, &mem, &mut rxq, &mut drv, 2);
    assert_eq!(
        used,
        [(h0, 2048), (h1, (VNET_HDR_LEN + 3014 - 2048) as u32)]
    );
    assert_eq!(dev.stats().rx_dropped, 0);
}

#[test]
fn without_mergeable_buffers_a_frame_too_big_for_the_buffer_is_dropped_and_counted() {
    let Some((mut dev, peer)) = device(VERSION_1, 9000) else {
        return;
    };
    let mem = memory();
    let (mut drv, _) = queues();
    let mut rxq = drv.queue();
    let head = drv.publish(&mem, &[(BUFS, 1600)], true);
    peer.send(&frame(4000, 1));
    let small = frame(500, 2);
    peer.send(&small);
    let used = rx_until(&mut dev, &mem, &mut rxq, &mut drv, 1);
    assert_eq!(used, [(head, (VNET_HDR_LEN + small.len()) as u32)]);
    assert_eq!(dev.stats().rx_dropped, 1);
    let mut got = vec![0u8; VNET_HDR_LEN + small.len()];
    mem.read_slice(&mut got, GuestAddress(BUFS)).unwrap();
    assert_eq!(
        u16::from_le_bytes([got[10], got[11]]),
        1,
        "num_buffers is 1"
    );
    assert_eq!(&got[VNET_HDR_LEN..], &small[..]);
}

#[test]
fn hostile_rx_chains_are_returned_empty_and_the_frame_goes_to_a_good_one() {
    let Some((mut dev, peer)) = device(VERSION_1 | bit(VIRTIO_NET_F_MRG_RXBUF), 1500) else {
        return;
    };
    let mem = memory();
    let (mut drv, _) = queues();
    let mut rxq = drv.queue();
    let write = VRING_DESC_F_WRITE as u16;
    let next = VRING_DESC_F_NEXT as u16;
    let bad = [
        // Device-readable.
        drv.publish(&mem, &[(BUFS, 2048)], false),
        // Outside guest memory, and straddling its end.
        drv.publish(&mem, &[(1 << 40, 2048)], true),
        drv.publish(&mem, &[(MEM_SIZE as u64 - 100, 2048)], true),
        // A loop.
        {
            let me = drv.next_desc();
            drv.publish_raw(&mem, &[(BUFS, 2048, write | next, me)])
        },
        // No bytes at all.
        drv.publish(&mem, &[(BUFS, 0)], true),
    ];
    let good = drv.publish(&mem, &[(BUFS + 0x4000, 2048)], true);
    let f = frame(200, 9);
    peer.send(&f);
    let used = rx_until(&mut dev, &mem, &mut rxq, &mut drv, bad.len() + 1);
    let mut expected: Vec<(u16, u32)> = bad.iter().map(|&h| (h, 0)).collect();
    expected.push((good, (VNET_HDR_LEN + f.len()) as u32));
    assert_eq!(used, expected);
    assert_eq!(dev.stats().bad_chains, bad.len() as u64);
    let mut got = vec![0u8; f.len()];
    mem.read_slice(&mut got, GuestAddress(BUFS + 0x4000 + VNET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(got, f);
}

#[test]
fn a_guest_reposting_one_tiny_buffer_cannot_make_the_device_hold_chains_forever() {
    let Some((mut dev, peer)) = device(VERSION_1 | bit(VIRTIO_NET_F_MRG_RXBUF), 1500) else {
        return;
    };
    let mem = memory();
    let (mut drv, _) = queues();
    let mut rxq = drv.queue();
    // One 1-byte descriptor published QSIZE times: more chains than the
    // queue holds would be needed for the frame.
    let head = drv.publish(&mem, &[(BUFS, 1)], true);
    for _ in 1..QSIZE {
        drv.publish_head(&mem, head);
    }
    peer.send(&frame(1000, 1));
    let used = rx_until(&mut dev, &mem, &mut rxq, &mut drv, QSIZE as usize);
    assert_eq!(used.len(), QSIZE as usize);
    assert!(used.iter().all(|&(h, len)| h == head && len == 0));
    assert_eq!(dev.stats().rx_dropped, 1);
}

#[test]
fn rx_and_tx_both_ways_with_offloads_negotiated() {
    let features = VERSION_1
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_MRG_RXBUF);
    let Some((mut dev, peer)) = device(features, 1500) else {
        return;
    };
    let mem = memory();
    let (mut rx, mut tx) = queues();
    let (mut rxq, mut txq) = (rx.queue(), tx.queue());
    for i in 0..16 {
        rx.publish(&mem, &[(BUFS + i * 0x1000, 2048)], true);
    }
    // 10 frames each way.
    for i in 0..10u8 {
        let f = frame(64 + usize::from(i), i);
        let mut pkt = plain_header().to_vec();
        pkt.extend(&f);
        let at = BUFS + 0x10_0000 + u64::from(i) * 0x1000;
        mem.write_slice(&pkt, GuestAddress(at)).unwrap();
        tx.publish(&mem, &[(at, pkt.len() as u32)], false);
        peer.send(&frame(80, 100 + i));
    }
    dev.process_tx(&mem, &mut txq).unwrap();
    assert_eq!(tx.take_used(&mem).len(), 10);
    for i in 0..10u8 {
        assert_eq!(peer.recv(), Some(frame(64 + usize::from(i), i)));
    }
    let used = rx_until(&mut dev, &mem, &mut rxq, &mut rx, 10);
    assert_eq!(used.len(), 10);
    for (n, &(head, len)) in used.iter().enumerate() {
        assert_eq!(len as usize, VNET_HDR_LEN + 94);
        let mut got = vec![0u8; 94];
        mem.read_slice(
            &mut got,
            GuestAddress(BUFS + u64::from(head) * 0x1000 + VNET_HDR_LEN as u64),
        )
        .unwrap();
        assert_eq!(got, frame(80, 100 + n as u8));
    }
}

#[test]
fn the_stats_handle_reads_the_counters_of_a_device_the_vm_owns() {
    use std::sync::Arc;

    use vm_memory::GuestMemoryAtomic;
    use vmm_sys_util::eventfd::EventFd;

    use crate::test_support::InterruptRecorder;
    use crate::virtio::{Activation, ActiveQueue, InterruptKind, VirtioDevice};

    let Some((tap, peer)) = tap_in_netns(1500) else {
        return;
    };
    let device = super::NetMmioDevice::new(tap, config()).unwrap();
    let handle = device.stats_handle();
    // From here the device is only reachable as the VM holds it.
    let mut device: Box<dyn VirtioDevice> = Box::new(device);
    let mem = memory();
    let (rx_drv, mut tx_drv) = queues();
    let f = frame(200, 3);
    let mut packet = plain_header().to_vec();
    packet.extend(&f);
    mem.write_slice(&packet, GuestAddress(BUFS)).unwrap();
    let head = tx_drv.publish(&mem, &[(BUFS, packet.len() as u32)], false);
    let (interrupts, irqs) = InterruptRecorder::new();
    let tx_kick = EventFd::new(0).unwrap();
    let activation = Activation {
        mem: GuestMemoryAtomic::new(mem.clone()),
        acked_features: VERSION_1,
        queues: vec![
            ActiveQueue {
                index: 0,
                queue: rx_drv.queue(),
                notifier: EventFd::new(0).unwrap(),
            },
            ActiveQueue {
                index: 1,
                queue: tx_drv.queue(),
                notifier: tx_kick.try_clone().unwrap(),
            },
        ],
        interrupt: Arc::new(interrupts),
    };
    crate::seccomp::on_vcpu_thread(|| device.activate(activation)).unwrap();
    tx_kick.write(1).unwrap();
    assert_eq!(peer.recv().as_deref(), Some(&f[..]));
    assert_eq!(
        irqs.recv_timeout(Duration::from_secs(5)),
        Ok(InterruptKind::Queue(1))
    );
    assert_eq!(tx_drv.take_used(&mem), [(head, 0)]);
    let s = handle.stats();
    assert_eq!((s.tx_frames, s.tx_bytes), (1, f.len() as u64));
    assert_eq!((s.rx_frames, s.bad_chains), (0, 0));
    // The counters outlive a reset (the VM's end), for the last report.
    crate::seccomp::on_vcpu_thread(|| device.reset());
    assert_eq!(handle.stats().tx_frames, 1);
}
