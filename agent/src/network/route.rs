//! Routes: adding them to the main table.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::Netlink;
use super::spec::{Family, RouteSpec};
use crate::error::{AgentError, Result};

/// The output interface of a route, resolved to its index.
pub type Oif = Option<u32>;

/// Adds (or replaces) one route of the main table; `oif` is the index of
/// `route.device`.
pub fn add(nl: &mut Netlink, route: &RouteSpec, oif: Oif) -> Result<()> {
    let mut m = RouteMessage::default();
    m.header.address_family = match route.family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    };
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    // What `ip route add` marks its routes with: configured by an admin.
    m.header.protocol = RouteProtocol::Boot;
    m.header.kind = RouteType::Unicast;
    m.header.scope = match (route.scope, route.gateway, route.family) {
        // A route straight onto a link is link-scoped, as `ip route add`
        // makes it when no scope is given; IPv6 ignores the scope.
        (0, None, Family::V4) => RouteScope::Link,
        (s, _, _) => RouteScope::from(s),
    };
    if let Some(dst) = route.destination {
        m.header.destination_prefix_length = dst.prefix_len;
        if dst.prefix_len > 0 {
            m.attributes
                .push(RouteAttribute::Destination(address(dst.addr)));
        }
    }
    if let Some(gw) = route.gateway {
        m.attributes.push(RouteAttribute::Gateway(address(gw)));
    }
    if let Some(index) = oif {
        m.attributes.push(RouteAttribute::Oif(index));
    }
    if let Some(src) = route.source {
        m.attributes.push(RouteAttribute::PrefSource(address(src)));
    }
    if route.metric > 0 {
        m.attributes.push(RouteAttribute::Priority(route.metric));
    }
    nl.change(
        &format!("adding route {}", describe(route)),
        RouteNetlinkMessage::NewRoute(m),
        // Replace: a second UpdateRoutes with the same routes succeeds.
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map_err(AgentError::from)
}

fn address(a: IpAddr) -> RouteAddress {
    RouteAddress::from(a)
}

/// The route as `ip route` would print it, for error messages.
pub fn describe(route: &RouteSpec) -> String {
    let mut s = match route.destination {
        Some(d) => d.to_string(),
        None => "default".to_owned(),
    };
    if let Some(gw) = route.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(dev) = &route.device {
        s += &format!(" dev {dev}");
    }
    if let Some(src) = route.source {
        s += &format!(" src {src}");
    }
    if route.metric > 0 {
        s += &format!(" metric {}", route.metric);
    }
    s
}
