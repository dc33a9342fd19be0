//! The scan's findings as the agent's protocol messages.

use husk_protocol::agent as proto;
use husk_vmm::devices::net::format_mac;

use super::scan::{Address, Link, Neighbour, Route};

fn ip_address(address: &Address) -> proto::IpAddress {
    proto::IpAddress {
        address: address.ip.to_string(),
        prefix_len: address.prefix_len.into(),
        ..Default::default()
    }
}

/// The guest NIC that stands for `link`: found by its MAC, given its name,
/// MTU and addresses.
pub fn interface(link: &Link) -> proto::Interface {
    proto::Interface {
        name: link.name.clone(),
        mac: format_mac(&link.mac),
        mtu: link.mtu,
        addresses: link.addresses.iter().map(ip_address).collect(),
        ..Default::default()
    }
}

/// `route` for the agent.
pub fn route(route: &Route) -> proto::Route {
    proto::Route {
        destination: route
            .destination
            .map(|d| format!("{}/{}", d.ip, d.prefix_len))
            .unwrap_or_default(),
        gateway: route.gateway.map(|g| g.to_string()).unwrap_or_default(),
        device: route.device.clone(),
        source: route.source.map(|s| s.to_string()).unwrap_or_default(),
        scope: route.scope.into(),
        metric: route.metric,
        family: route.family.into(),
        ..Default::default()
    }
}

/// `neighbour` for the agent.
pub fn neighbor(neighbour: &Neighbour) -> proto::Neighbor {
    proto::Neighbor {
        address: neighbour.ip.to_string(),
        mac: format_mac(&neighbour.mac),
        device: neighbour.device.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn links_routes_and_neighbours_become_the_agents_words() {
        let link = Link {
            index: 7,
            name: "eth0".into(),
            mac: [0x02, 0x42, 0xac, 0x11, 0x00, 0x02],
            mtu: 1500,
            addresses: vec![
                Address {
                    ip: "172.17.0.2".parse().unwrap(),
                    prefix_len: 16,
                },
                Address {
                    ip: "fd00::2".parse().unwrap(),
                    prefix_len: 64,
                },
            ],
        };
        let i = interface(&link);
        assert_eq!(
            (i.name.as_str(), i.mac.as_str(), i.mtu),
            ("eth0", "02:42:ac:11:00:02", 1500)
        );
        let addresses: Vec<_> = i
            .addresses
            .iter()
            .map(|a| (a.address.as_str(), a.prefix_len))
            .collect();
        assert_eq!(addresses, [("172.17.0.2", 16), ("fd00::2", 64)]);

        let default = route(&Route {
            destination: None,
            gateway: Some("172.17.0.1".parse().unwrap()),
            device: "eth0".into(),
            source: None,
            scope: 0,
            metric: 0,
            family: 4,
        });
        assert_eq!(default.destination, "");
        assert_eq!(default.gateway, "172.17.0.1");
        assert_eq!((default.device.as_str(), default.family), ("eth0", 4));
        let link_route = route(&Route {
            destination: Some(Address {
                ip: "fd01::".parse().unwrap(),
                prefix_len: 48,
            }),
            gateway: None,
            device: "eth0".into(),
            source: Some("fd00::2".parse().unwrap()),
            scope: 253,
            metric: 1024,
            family: 6,
        });
        assert_eq!(link_route.destination, "fd01::/48");
        assert_eq!(link_route.gateway, "");
        assert_eq!(link_route.source, "fd00::2");
        assert_eq!((link_route.scope, link_route.metric), (253, 1024));

        let n = neighbor(&Neighbour {
            ip: IpAddr::from([10, 0, 0, 9]),
            mac: [0xff; 6],
            device: "eth1".into(),
        });
        assert_eq!(
            (n.address.as_str(), n.mac.as_str(), n.device.as_str()),
            ("10.0.0.9", "ff:ff:ff:ff:ff:ff", "eth1")
        );
    }
}
