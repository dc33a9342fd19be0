//! Test helpers: a network namespace of the test's own, and netlink
//! requests that fill it (links, addresses, routes, neighbours) the way
//! Docker's libnetwork would. Nothing here touches the machine's own
//! namespace: every helper runs in the thread that [`in_new_netns`] moved.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::Netlink;
use super::tap::index_of;

/// Runs `f` on a new thread moved into a new network namespace (with `lo`
/// up), and returns what it returns; a panic in `f` fails the caller.
/// The namespace goes when the thread ends. Tests run as root.
pub fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) (the tests run as root)");
        let mut nl = Netlink::open().unwrap();
        let lo = index_of(&mut nl, "lo").unwrap();
        set_link(&mut nl, lo, None, None);
        f()
    });
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Makes the veth pair `name` - `peer`, both up; returns their indexes.
pub fn veth(nl: &mut Netlink, name: &str, peer: &str) -> (u32, u32) {
    let mut peer_message = LinkMessage::default();
    peer_message.attributes = vec![LinkAttribute::IfName(peer.to_owned())];
    let mut message = LinkMessage::default();
    message.attributes = vec![
        LinkAttribute::IfName(name.to_owned()),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
        ]),
    ];
    nl.change(
        "adding a veth pair",
        RouteNetlinkMessage::NewLink(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .unwrap();
    let a = index_of(nl, name).unwrap();
    let b = index_of(nl, peer).unwrap();
    set_link(nl, a, None, None);
    set_link(nl, b, None, None);
    (a, b)
}

/// Brings link `index` up, with `mtu` and `mac` if given.
pub fn set_link(nl: &mut Netlink, index: u32, mtu: Option<u32>, mac: Option<[u8; 6]>) {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    message.attributes.extend(mtu.map(LinkAttribute::Mtu));
    message
        .attributes
        .extend(mac.map(|m| LinkAttribute::Address(m.to_vec())));
    nl.change("setting a link", RouteNetlinkMessage::SetLink(message), 0)
        .unwrap();
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Adds `ip/prefix_len` to link `index`.
pub fn add_address(nl: &mut Netlink, index: u32, ip: IpAddr, prefix_len: u8) {
    let mut message = AddressMessage::default();
    message.header.family = family(ip);
    message.header.prefix_len = prefix_len;
    message.header.index = index;
    // No duplicate address detection: the address is usable at once.
    message.header.flags = AddressHeaderFlags::Nodad;
    message.attributes.push(AddressAttribute::Address(ip));
    if ip.is_ipv4() {
        message.attributes.push(AddressAttribute::Local(ip));
    }
    nl.change(
        "adding an address",
        RouteNetlinkMessage::NewAddress(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .unwrap();
}

/// Adds a static route of the main table to `destination/prefix_len`
/// (`None`: default) via `gateway` (or a link route) out of link `index`.
pub fn add_route(
    nl: &mut Netlink,
    destination: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    index: u32,
    metric: Option<u32>,
) {
    let ip = destination.map(|d| d.0).or(gateway).unwrap();
    let mut message = RouteMessage::default();
    message.header.address_family = family(ip);
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::Static;
    message.header.kind = RouteType::Unicast;
    message.header.scope = if gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if let Some((dst, len)) = destination {
        message.header.destination_prefix_length = len;
        message
            .attributes
            .push(RouteAttribute::Destination(dst.into()));
    }
    if let Some(gw) = gateway {
        message.attributes.push(RouteAttribute::Gateway(gw.into()));
    }
    message.attributes.push(RouteAttribute::Oif(index));
    message
        .attributes
        .extend(metric.map(RouteAttribute::Priority));
    nl.change(
        "adding a route",
        RouteNetlinkMessage::NewRoute(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .unwrap();
}

/// Adds a permanent neighbour `ip` at `mac` on link `index`.
pub fn add_neighbour(nl: &mut Netlink, index: u32, ip: IpAddr, mac: [u8; 6]) {
    let mut message = NeighbourMessage::default();
    message.header.family = family(ip);
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.attributes = vec![
        NeighbourAttribute::Destination(ip.into()),
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
    ];
    nl.change(
        "adding a neighbour",
        RouteNetlinkMessage::NewNeighbour(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .unwrap();
}

/// The names of every link of the namespace.
pub fn link_names(nl: &mut Netlink) -> Vec<String> {
    nl.dump(
        "listing links",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )
    .unwrap()
    .into_iter()
    .filter_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n),
            _ => None,
        }),
        _ => None,
    })
    .collect()
}

/// Link `index`'s MTU and whether it is up (administratively).
pub fn mtu_and_up(nl: &mut Netlink, index: u32) -> (u32, bool) {
    let mut request = LinkMessage::default();
    request.header.index = index;
    let answers = nl
        .get("getting a link", RouteNetlinkMessage::GetLink(request))
        .unwrap();
    let Some(RouteNetlinkMessage::NewLink(link)) = answers.into_iter().next() else {
        panic!("no link {index}");
    };
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap();
    (mtu, link.header.flags.contains(LinkFlags::Up))
}
