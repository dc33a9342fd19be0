//! Addresses: listing a link's, adding, deleting.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::Netlink;
use super::spec::{is_ipv6_link_local, IpNet};
use crate::error::{AgentError, Result};

fn family(addr: &IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The address an `AddressMessage` is about: IFA_LOCAL when present (the
/// interface's own address on point-to-point links), else IFA_ADDRESS.
fn address_of(m: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address
}

/// Every address of the link at `index`.
pub fn list(nl: &mut Netlink, index: u32) -> Result<Vec<IpNet>> {
    let replies = nl.dump(
        "listing addresses",
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(IpNet {
                addr: address_of(a)?,
                prefix_len: a.header.prefix_len,
            }),
            _ => None,
        })
        .collect())
}

/// Adds (or refreshes) an address. IPv6 addresses skip duplicate address
/// detection: they come from the host's namespace, where they were unique,
/// and must be usable as soon as the call returns (a tentative address
/// cannot be bound for about a second).
pub fn add(nl: &mut Netlink, index: u32, net: &IpNet) -> Result<()> {
    let mut m = AddressMessage::default();
    m.header.family = family(&net.addr);
    m.header.prefix_len = net.prefix_len;
    m.header.index = index;
    m.header.scope = scope(&net.addr);
    match net.addr {
        IpAddr::V4(a) => {
            m.attributes.push(AddressAttribute::Local(net.addr));
            m.attributes.push(AddressAttribute::Address(net.addr));
            // Like `ip addr add ... brd +`, which is what Docker's netns has.
            if net.prefix_len <= 30 {
                let host = u32::MAX >> net.prefix_len;
                let broadcast = u32::from(a) | host;
                m.attributes
                    .push(AddressAttribute::Broadcast(broadcast.into()));
            }
        }
        IpAddr::V6(_) => {
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes.push(AddressAttribute::Local(net.addr));
            m.attributes.push(AddressAttribute::Address(net.addr));
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    nl.change(
        &format!("adding address {net}"),
        RouteNetlinkMessage::NewAddress(m),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map_err(AgentError::from)
}

/// Deletes an address; one already gone is not an error (deleting a
/// primary IPv4 address takes its secondaries with it).
pub fn delete(nl: &mut Netlink, index: u32, net: &IpNet) -> Result<()> {
    let mut m = AddressMessage::default();
    m.header.family = family(&net.addr);
    m.header.prefix_len = net.prefix_len;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(net.addr));
    match nl.change(
        &format!("deleting address {net}"),
        RouteNetlinkMessage::DelAddress(m),
        0,
    ) {
        Err(e)
            if matches!(
                e.errno(),
                Some(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ESRCH)
            ) =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}

/// Makes `wanted` the link's addresses: the others go (IPv6 link-local
/// ones aside, which the kernel made and the link needs for neighbour
/// discovery), the wanted ones are added.
pub fn replace_all(nl: &mut Netlink, index: u32, wanted: &[IpNet]) -> Result<()> {
    for old in list(nl, index)? {
        if !is_ipv6_link_local(&old.addr) && !wanted.contains(&old) {
            delete(nl, index, &old)?;
        }
    }
    for net in wanted {
        add(nl, index, net)?;
    }
    Ok(())
}

/// The scope an address gets, as `ip addr add` would give it.
fn scope(addr: &IpAddr) -> AddressScope {
    match addr {
        IpAddr::V4(a) if a.is_loopback() => AddressScope::Host,
        IpAddr::V6(a) if a.is_loopback() => AddressScope::Host,
        a if is_ipv6_link_local(a) => AddressScope::Link,
        _ => AddressScope::Universe,
    }
}
