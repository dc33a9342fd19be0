//! Links: listing them, renaming, MTU, up and down.

use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::netlink::Netlink;
use super::spec::Mac;
use crate::error::{AgentError, Result};

/// What the agent needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Current name.
    pub name: String,
    /// Its MAC, when it has an Ethernet one.
    pub mac: Option<Mac>,
    /// Current MTU.
    pub mtu: u32,
    /// Whether it is administratively up.
    pub up: bool,
    /// Whether it is a loopback device.
    pub loopback: bool,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            loopback: m.header.flags.contains(LinkFlags::Loopback),
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Address(a) => {
                    link.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(Mac)
                }
                _ => {}
            }
        }
        link
    }
}

/// Every link of the network namespace.
pub fn list(nl: &mut Netlink) -> Result<Vec<Link>> {
    let replies = nl.dump(
        "listing links",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
            _ => None,
        })
        .collect())
}

/// The link named `name`.
pub fn by_name(nl: &mut Netlink, name: &str) -> Result<Link> {
    list(nl)?
        .into_iter()
        .find(|l| l.name == name)
        .ok_or_else(|| AgentError::NotFound(format!("no network interface named {name:?}")))
}

/// The link at `index`.
pub fn by_index(nl: &mut Netlink, index: u32) -> Result<Link> {
    list(nl)?
        .into_iter()
        .find(|l| l.index == index)
        .ok_or_else(|| AgentError::NotFound(format!("no network interface with index {index}")))
}

fn set(
    nl: &mut Netlink,
    what: &str,
    index: u32,
    edit: impl FnOnce(&mut LinkMessage),
) -> Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    edit(&mut message);
    nl.change(what, RouteNetlinkMessage::SetLink(message), 0)
        .map_err(AgentError::from)
}

/// Brings a link up or down.
pub fn set_up(nl: &mut Netlink, link: &Link, up: bool) -> Result<()> {
    let what = format!("bringing {} {}", link.name, if up { "up" } else { "down" });
    set(nl, &what, link.index, |m| {
        // Only IFF_UP changes: the change mask says which flags count.
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
    })
}

/// Renames a link (the kernel refuses while it is up).
pub fn rename(nl: &mut Netlink, link: &Link, name: &str) -> Result<()> {
    let what = format!("renaming {} to {name}", link.name);
    set(nl, &what, link.index, |m| {
        m.attributes.push(LinkAttribute::IfName(name.to_owned()))
    })
}

/// Sets a link's MAC address (some drivers refuse while it is up).
pub fn set_mac(nl: &mut Netlink, link: &Link, mac: &Mac) -> Result<()> {
    let what = format!("setting the MAC of {} to {mac}", link.name);
    set(nl, &what, link.index, |m| {
        m.attributes.push(LinkAttribute::Address(mac.0.to_vec()))
    })
}

/// Sets a link's MTU.
pub fn set_mtu(nl: &mut Netlink, link: &Link, mtu: u32) -> Result<()> {
    let what = format!("setting the MTU of {} to {mtu}", link.name);
    set(nl, &what, link.index, |m| {
        m.attributes.push(LinkAttribute::Mtu(mtu))
    })
}
