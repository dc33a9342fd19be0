//! Neighbours: permanent ARP (IPv4) and NDP (IPv6) entries.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::Netlink;
use super::spec::NeighborSpec;
use crate::error::{AgentError, Result};

/// Adds (or replaces) a permanent neighbour entry on the link at `index`.
pub fn add(nl: &mut Netlink, neighbor: &NeighborSpec, index: u32) -> Result<()> {
    let mut m = NeighbourMessage::default();
    m.header.ifindex = index;
    // Permanent: never probed or expired, as in the host's namespace.
    m.header.state = NeighbourState::Permanent;
    let destination = match neighbor.address {
        IpAddr::V4(a) => {
            m.header.family = AddressFamily::Inet;
            NeighbourAddress::Inet(a)
        }
        IpAddr::V6(a) => {
            m.header.family = AddressFamily::Inet6;
            NeighbourAddress::Inet6(a)
        }
    };
    m.attributes
        .push(NeighbourAttribute::Destination(destination));
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(
        neighbor.mac.0.to_vec(),
    ));
    nl.change(
        &format!(
            "adding neighbour {} lladdr {} dev {}",
            neighbor.address, neighbor.mac, neighbor.device
        ),
        RouteNetlinkMessage::NewNeighbour(m),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map_err(AgentError::from)
}
