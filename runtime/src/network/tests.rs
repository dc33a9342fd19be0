//! Scan, tc and the whole wiring, each in a network namespace the test
//! makes (see [`super::testutil`]), filled by netlink like Docker fills a
//! container's.

use std::net::IpAddr;

use super::netlink::Netlink;
use super::scan::{scan, Address, Route};
use super::tap::index_of;
use super::testutil::*;
use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
const GATEWAY_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x01];

/// eth0 as Docker leaves it: address, MTU, MAC, default route, and a few
/// things more (a second IPv4 route, IPv6, a permanent neighbour).
fn docker_like(nl: &mut Netlink) -> u32 {
    let (eth0, _peer) = veth(nl, "eth0", "peer0");
    set_link(nl, eth0, Some(1400), Some(MAC));
    add_address(nl, eth0, ip("172.18.0.2"), 16);
    add_address(nl, eth0, ip("fd00:18::2"), 64);
    add_route(nl, None, Some(ip("172.18.0.1")), eth0, None);
    add_route(
        nl,
        Some((ip("10.9.0.0"), 16)),
        Some(ip("172.18.0.254")),
        eth0,
        Some(50),
    );
    add_route(nl, Some((ip("10.8.0.0"), 16)), None, eth0, None);
    add_route(nl, None, Some(ip("fd00:18::1")), eth0, None);
    add_neighbour(nl, eth0, ip("172.18.0.1"), GATEWAY_MAC);
    eth0
}

#[test]
fn scan_finds_links_addresses_routes_and_neighbours_the_guest_needs() {
    let found = in_new_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let eth0 = docker_like(&mut nl);
        (eth0, scan(&mut nl).unwrap())
    });
    let (eth0, found) = found;
    // lo is not a guest NIC; both ends of the veth pair are Ethernet links.
    let names: Vec<_> = found.links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"eth0") && names.contains(&"peer0"));
    let link = found.links.iter().find(|l| l.name == "eth0").unwrap();
    assert_eq!((link.index, link.mac, link.mtu), (eth0, MAC, 1400));
    // No fe80:: address: the guest makes its own.
    assert_eq!(
        link.addresses,
        [
            Address {
                ip: ip("172.18.0.2"),
                prefix_len: 16
            },
            Address {
                ip: ip("fd00:18::2"),
                prefix_len: 64
            },
        ]
    );

    // Neither the connected routes (proto kernel) nor fe80::/64.
    let eth0_routes: Vec<&Route> = found.routes.iter().filter(|r| r.device == "eth0").collect();
    assert_eq!(eth0_routes.len(), 4, "{eth0_routes:#?}");
    assert_eq!(
        *eth0_routes[0],
        Route {
            destination: Some(Address {
                ip: ip("10.8.0.0"),
                prefix_len: 16
            }),
            gateway: None,
            device: "eth0".into(),
            source: None,
            scope: 253,
            metric: 0,
            family: 4,
        },
        "link routes come first"
    );
    let default_v4 = eth0_routes
        .iter()
        .find(|r| r.family == 4 && r.destination.is_none())
        .unwrap();
    assert_eq!(default_v4.gateway, Some(ip("172.18.0.1")));
    let via = eth0_routes
        .iter()
        .find(|r| r.destination.map(|d| d.ip) == Some(ip("10.9.0.0")))
        .unwrap();
    assert_eq!((via.gateway, via.metric), (Some(ip("172.18.0.254")), 50));
    let default_v6 = eth0_routes
        .iter()
        .find(|r| r.family == 6 && r.destination.is_none())
        .unwrap();
    assert_eq!(default_v6.gateway, Some(ip("fd00:18::1")));
    assert!(found.routes.iter().all(|r| r
        .destination
        .map_or(true, |d| d.ip != ip("172.18.0.0") && d.ip != ip("fe80::"))));

    assert_eq!(found.neighbours.len(), 1, "{:?}", found.neighbours);
    let n = &found.neighbours[0];
    assert_eq!(
        (n.ip, n.mac, n.device.as_str()),
        (ip("172.18.0.1"), GATEWAY_MAC, "eth0")
    );
}

#[test]
fn tc_joins_two_links_both_ways_and_removing_the_qdiscs_unjoins_them() {
    in_new_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let (link, _) = veth(&mut nl, "link0", "peer0");
        // A second veth stands in for the tap: tc does not care.
        let (tap, _) = veth(&mut nl, "tap0", "peer1");
        tc::join(&mut nl, link, tap).unwrap();
        assert_eq!(tc::redirects(&mut nl, link).unwrap(), [tap]);
        assert_eq!(tc::redirects(&mut nl, tap).unwrap(), [link]);

        tc::remove_ingress(&mut nl, link).unwrap();
        tc::remove_ingress(&mut nl, tap).unwrap();
        assert!(tc::redirects(&mut nl, link).unwrap().is_empty());
        assert!(tc::redirects(&mut nl, tap).unwrap().is_empty());
        // Removing what is gone already is fine.
        tc::remove_ingress(&mut nl, link).unwrap();
    });
}

#[test]
fn a_killed_sandboxs_redirect_on_the_link_is_replaced_and_others_are_kept() {
    in_new_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let (link, _) = veth(&mut nl, "link0", "peer0");
        let (tap, _) = veth(&mut nl, "tap0", "peer1");
        tc::join(&mut nl, link, tap).unwrap();
        // The tap vanishes (its sandbox was killed); the link's qdisc stays.
        let out = std::process::Command::new("ip")
            .args(["link", "del", "tap0"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let (tap, _) = veth(&mut nl, "tap1", "peer2");
        tc::join(&mut nl, link, tap).unwrap();
        assert_eq!(tc::redirects(&mut nl, link).unwrap(), [tap]);
        // A redirect to an interface that still exists is not ours to drop.
        let (other, _) = veth(&mut nl, "link1", "peer3");
        tc::add_ingress(&mut nl, other).unwrap();
        tc::redirect(&mut nl, other, tap).unwrap();
        tc::clear_stale(&mut nl, other).unwrap();
        assert_eq!(tc::redirects(&mut nl, other).unwrap(), [tap]);
    });
}

#[test]
fn a_join_that_fails_halfway_removes_only_what_it_added() {
    in_new_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let (link, _) = veth(&mut nl, "link0", "peer0");
        let (tap, _) = veth(&mut nl, "tap0", "peer1");
        // Someone else's ingress qdisc on the tap side.
        tc::add_ingress(&mut nl, tap).unwrap();
        let err = tc::join(&mut nl, link, tap).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        // The link's qdisc, added first, is gone again...
        tc::add_ingress(&mut nl, link).unwrap();
        // ...and the other one is still there.
        assert_eq!(
            tc::add_ingress(&mut nl, tap).unwrap_err().errno(),
            Some(libc::EEXIST)
        );
    });
}

#[test]
fn wire_makes_a_tap_per_link_joined_both_ways_and_teardown_unjoins() {
    in_new_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let eth0 = docker_like(&mut nl);
        let wired = HostNetwork::wire().unwrap();
        assert_eq!(wired.nics().len(), 2);
        let nic = wired.nics().iter().find(|n| n.link.index == eth0).unwrap();
        assert!(nic.tap.name.starts_with("husktap"), "{}", nic.tap.name);
        assert_eq!(index_of(&mut nl, &nic.tap.name).unwrap(), nic.tap.index);
        assert_eq!(mtu_and_up(&mut nl, nic.tap.index), (1400, true));
        assert_eq!((nic.config().mac, nic.config().mtu), (MAC, 1400));
        for nic in wired.nics() {
            assert_eq!(
                tc::redirects(&mut nl, nic.link.index).unwrap(),
                [nic.tap.index]
            );
            assert_eq!(
                tc::redirects(&mut nl, nic.tap.index).unwrap(),
                [nic.link.index]
            );
        }
        assert_eq!(wired.scan().links.len(), 2);

        let links: Vec<u32> = wired.nics().iter().map(|n| n.link.index).collect();
        wired.teardown();
        for link in links {
            assert!(tc::redirects(&mut nl, link).unwrap().is_empty());
        }
        // The taps went with their last fd.
        assert!(
            link_names(&mut nl)
                .iter()
                .all(|n| !n.starts_with("husktap")),
            "{:?}",
            link_names(&mut nl)
        );
    });
}

#[test]
fn wire_failing_on_a_later_link_leaves_nothing_of_the_earlier_ones() {
    in_new_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let (first, second) = veth(&mut nl, "eth0", "eth1");
        let (first, second) = (first.min(second), first.max(second));
        // Someone else's ingress qdisc on the link wired second.
        tc::add_ingress(&mut nl, second).unwrap();
        let err = HostNetwork::wire().unwrap_err();
        assert!(matches!(err, Error::Tc { .. }), "{err}");
        assert!(err.to_string().contains("by tc"), "{err}");
        assert!(tc::redirects(&mut nl, first).unwrap().is_empty());
        // The first link has no qdisc of ours left...
        tc::add_ingress(&mut nl, first).unwrap();
        // ...and the second one keeps its own.
        assert_eq!(
            tc::add_ingress(&mut nl, second).unwrap_err().errno(),
            Some(libc::EEXIST)
        );
        assert!(link_names(&mut nl)
            .iter()
            .all(|n| !n.starts_with("husktap")));
    });
}

#[test]
fn an_empty_namespace_wires_nothing() {
    in_new_netns(|| {
        let wired = HostNetwork::wire().unwrap();
        assert!(wired.nics().is_empty());
        assert_eq!(wired.scan(), &Scan::default());
    });
}

#[test]
fn frames_go_from_a_tap_out_of_its_link_and_from_a_link_into_its_tap() {
    use std::os::fd::AsRawFd;

    in_new_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let (eth0, peer0) = veth(&mut nl, "eth0", "peer0");
        let wired = HostNetwork::wire().unwrap();
        let tap_of = |link: u32| {
            wired
                .nics()
                .iter()
                .find(|n| n.link.index == link)
                .unwrap()
                .tap()
        };
        let (from, to) = (tap_of(eth0), tap_of(peer0));
        // What the guest sends on eth0's NIC: a virtio-net header, then a
        // broadcast Ethernet frame of an unassigned EtherType.
        let mut frame = vec![0u8; husk_vmm::devices::net::VNET_HDR_LEN];
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&MAC);
        frame.extend_from_slice(&[0x88, 0xb5]);
        frame.extend_from_slice(b"husk tc test frame, padded to the minimum length");
        nix::unistd::write(&*from, &frame).unwrap();
        // The tap's ingress sends it out of eth0, the veth hands it to
        // peer0, whose ingress sends it into peer0's tap: the "guest" of
        // peer0 reads it, and neither namespace stack saw it.
        let hdr = husk_vmm::devices::net::VNET_HDR_LEN;
        let mut buf = vec![0u8; 2048];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match nix::unistd::read(to.as_raw_fd(), &mut buf) {
                // eth0's own stack may send (IPv6 neighbour discovery):
                // those frames arrive at peer0's tap too.
                Ok(n) if buf.get(hdr..n) == frame.get(hdr..) => break,
                Ok(_) => {}
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => panic!("reading the tap: {e}"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the frame did not come through"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
}
