//! The tap a guest NIC's frames go through: made in the calling thread's
//! network namespace, given the link's MTU and brought up, by rtnetlink.
//!
//! The tap is not persistent: it vanishes with its last fd, which the VM's
//! net device holds, so it never outlives the sandbox process, even one
//! killed with SIGKILL.

use std::sync::Arc;

use husk_vmm::devices::net::Tap;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::netlink::{self, Netlink};

/// The name template of husk's taps: the kernel picks the number.
pub const TAP_NAME_TEMPLATE: &str = "husktap%d";

/// A tap made for one link.
#[derive(Debug)]
pub struct GuestTap {
    /// The tap itself, shared with the VM's net device.
    pub tap: Arc<Tap>,
    /// Its name (`husktap0`).
    pub name: String,
    /// Its interface index.
    pub index: u32,
}

/// Errors making a tap.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/net/tun` refused.
    #[error("cannot open a tap: {0}")]
    Open(String),
    /// Configuring it by rtnetlink failed.
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
}

/// Opens a tap, sets its MTU to `mtu` and brings it up.
pub fn create(nl: &mut Netlink, mtu: u32) -> Result<GuestTap, Error> {
    let tap = Tap::open(TAP_NAME_TEMPLATE).map_err(|e| Error::Open(e.to_string()))?;
    let name = tap.name().to_owned();
    let index = index_of(nl, &name)?;
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    message.attributes = vec![LinkAttribute::Mtu(mtu)];
    nl.change(
        &format!("setting {name}'s MTU to {mtu} and bringing it up"),
        RouteNetlinkMessage::SetLink(message),
        0,
    )?;
    Ok(GuestTap {
        tap: Arc::new(tap),
        name,
        index,
    })
}

/// The interface index of the link named `name`.
pub fn index_of(nl: &mut Netlink, name: &str) -> Result<u32, netlink::Error> {
    let mut request = LinkMessage::default();
    request.attributes = vec![LinkAttribute::IfName(name.to_owned())];
    let what = format!("looking up link {name}");
    nl.get(&what, RouteNetlinkMessage::GetLink(request))?
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
            _ => None,
        })
        .ok_or_else(|| netlink::Error::Refused {
            what,
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })
}
