//! What the container's network namespace holds for the guest: its
//! Ethernet links with their addresses, the main table's routes through
//! them, and their permanent neighbours, read by rtnetlink.
//!
//! Only what the guest can and must be given is kept: the guest's kernel
//! makes its own loopback, IPv6 link-local addresses and the routes that
//! follow from an address ("proto kernel"), and a route or neighbour
//! through a link the guest does not get has nowhere to go there.

use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::{self, Netlink};

/// An IP address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length (0..=32 or 0..=128).
    pub prefix_len: u8,
}

/// A link of the namespace that the guest gets a NIC for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its interface index in the namespace.
    pub index: u32,
    /// Its name (`eth0`): the guest's NIC gets the same.
    pub name: String,
    /// Its MAC: the guest's NIC gets the same, so that the peers' ARP
    /// caches and Docker's records stay right.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// Its IPv4 and IPv6 addresses, IPv6 link-local ones left out.
    pub addresses: Vec<Address>,
}

/// A route of the main table through one of the [`Link`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination; `None` for a default route.
    pub destination: Option<Address>,
    /// The next hop, if any.
    pub gateway: Option<IpAddr>,
    /// The name of the link it goes out of.
    pub device: String,
    /// The preferred source address, if any.
    pub source: Option<IpAddr>,
    /// The rtnetlink scope (0 universe, 253 link, 254 host).
    pub scope: u8,
    /// Its priority (0: the kernel's default).
    pub metric: u32,
    /// 4 or 6.
    pub family: u8,
}

/// A permanent neighbour entry on one of the [`Link`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its MAC.
    pub mac: [u8; 6],
    /// The name of the link it is on.
    pub device: String,
}

/// What [`scan`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// The links that get a guest NIC, in interface index order.
    pub links: Vec<Link>,
    /// Their routes, link routes before routes through a gateway (the
    /// gateway must be reachable when its route is added).
    pub routes: Vec<Route>,
    /// Their permanent neighbours.
    pub neighbours: Vec<Neighbour>,
}

/// Reads the calling thread's network namespace through `nl`.
pub fn scan(nl: &mut Netlink) -> Result<Scan, netlink::Error> {
    let mut links: Vec<Link> = nl
        .dump(
            "listing links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => guest_link(&link),
            _ => None,
        })
        .collect();
    links.sort_by_key(|l| l.index);

    for message in nl.dump(
        "listing addresses",
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )? {
        let RouteNetlinkMessage::NewAddress(address) = message else {
            continue;
        };
        let Some(link) = links.iter_mut().find(|l| l.index == address.header.index) else {
            continue;
        };
        if let Some(address) = guest_address(&address) {
            if !link.addresses.contains(&address) {
                link.addresses.push(address);
            }
        }
    }

    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        for message in nl.dump("listing routes", RouteNetlinkMessage::GetRoute(request))? {
            if let RouteNetlinkMessage::NewRoute(route) = message {
                routes.extend(guest_route(&route, &links));
            }
        }
    }
    // Stable: within each kind the kernel's order stays.
    routes.sort_by_key(|r| r.gateway.is_some());

    let mut neighbours = Vec::new();
    for message in nl.dump(
        "listing neighbours",
        RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
    )? {
        if let RouteNetlinkMessage::NewNeighbour(neighbour) = message {
            neighbours.extend(guest_neighbour(&neighbour, &links));
        }
    }
    Ok(Scan {
        links,
        routes,
        neighbours,
    })
}

/// `message` as a link the guest gets, if it is one: an Ethernet link
/// other than loopback with a 6-byte MAC.
fn guest_link(message: &LinkMessage) -> Option<Link> {
    if message.header.link_layer_type != LinkLayerType::Ether {
        return None;
    }
    let mut name = None;
    let mut mac = None;
    let mut mtu = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            _ => {}
        }
    }
    let name = name.filter(|n| n != "lo" && !n.is_empty())?;
    Some(Link {
        index: message.header.index,
        name,
        mac: mac?,
        mtu: mtu?,
        addresses: Vec::new(),
    })
}

/// `message` as an address the guest gets, if it is one.
fn guest_address(message: &AddressMessage) -> Option<Address> {
    let mut address = None;
    let mut local = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Local(ip) => local = Some(*ip),
            _ => {}
        }
    }
    // IPv4: IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
    // peer's on a point-to-point link); IPv6 has IFA_ADDRESS only.
    let ip = local.or(address)?;
    if is_ipv6_link_local(ip) {
        return None;
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (message.header.prefix_len <= max).then_some(Address {
        ip,
        prefix_len: message.header.prefix_len,
    })
}

/// `message` as a route the guest gets, if it is one: a unicast route of
/// the main table out of one of `links` that the guest's kernel does not
/// make by itself.
fn guest_route(message: &RouteMessage, links: &[Link]) -> Option<Route> {
    let header = &message.header;
    let mut table = u32::from(header.table);
    let mut destination = None;
    let mut gateway = None;
    let mut oif = None;
    let mut source = None;
    let mut metric = 0;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => destination = route_ip(a),
            RouteAttribute::Gateway(a) => gateway = route_ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::PrefSource(a) => source = route_ip(a),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || header.kind != RouteType::Unicast
        // The routes an address brings (and fe80::/64) are the guest
        // kernel's own as soon as it has the address.
        || header.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let family = match header.address_family {
        AddressFamily::Inet => 4,
        AddressFamily::Inet6 => 6,
        _ => return None,
    };
    // Multipath routes have no single output link; the guest gets none.
    let device = links.iter().find(|l| Some(l.index) == oif)?.name.clone();
    let destination = match destination {
        Some(ip) => {
            if is_ipv6_link_local(ip) {
                return None;
            }
            Some(Address {
                ip,
                prefix_len: header.destination_prefix_length,
            })
        }
        None if header.destination_prefix_length == 0 => None,
        // A prefix without an address: not a route anyone can add.
        None => return None,
    };
    Some(Route {
        destination,
        gateway,
        device,
        source,
        scope: header.scope.into(),
        metric,
        family,
    })
}

/// `message` as a neighbour the guest gets: a permanent entry with a MAC on
/// one of `links`.
fn guest_neighbour(message: &NeighbourMessage, links: &[Link]) -> Option<Neighbour> {
    if message.header.state != NeighbourState::Permanent {
        return None;
    }
    let device = links
        .iter()
        .find(|l| l.index == message.header.ifindex)?
        .name
        .clone();
    let mut ip = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                ip = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    Some(Neighbour {
        ip: ip?,
        mac: mac?,
        device,
    })
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// fe80::/10: the guest's kernel makes its own from the MAC.
fn is_ipv6_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        IpAddr::V4(_) => false,
    }
}
