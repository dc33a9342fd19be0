//! Validation of the network configuration the host sends: every field is
//! parsed into a typed value here, so the netlink code below never sees an
//! unchecked string.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use husk_protocol::agent::{Interface, IpAddress, Neighbor, Route};

use crate::error::{AgentError, Result};

/// Most addresses accepted on one interface.
pub const MAX_ADDRESSES: usize = 64;
/// Most routes accepted in one `UpdateRoutes`.
pub const MAX_ROUTES: usize = 1024;
/// Most neighbours accepted in one `AddArpNeighbors`.
pub const MAX_NEIGHBORS: usize = 1024;
/// The kernel's IFNAMSIZ less the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;
/// Smallest MTU the kernel accepts for IPv4 (RFC 791).
pub const MIN_MTU: u32 = 68;
/// Largest MTU (the netdevice MTU is an unsigned int, but nothing a host
/// network namespace has goes beyond 64 KiB).
pub const MAX_MTU: u32 = 65535;

fn invalid(msg: String) -> AgentError {
    AgentError::InvalidArgument(msg)
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = AgentError;

    /// Parses `aa:bb:cc:dd:ee:ff` (either case).
    fn from_str(s: &str) -> Result<Mac> {
        let bad = || {
            invalid(format!(
                "MAC {s:?}: expected six hex pairs like 02:42:ac:11:00:02"
            ))
        };
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            // from_str_radix alone would take "+a".
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// An IP address with a prefix length that fits its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length (≤ 32 or ≤ 128).
    pub prefix_len: u8,
}

impl IpNet {
    /// Checks `prefix_len` against the family of `addr`.
    pub fn new(addr: IpAddr, prefix_len: u32) -> Result<IpNet> {
        let max = max_prefix(&addr);
        if prefix_len > u32::from(max) {
            return Err(invalid(format!(
                "prefix length {prefix_len} of {addr}: at most {max}"
            )));
        }
        Ok(IpNet {
            addr,
            prefix_len: prefix_len as u8,
        })
    }

    /// Whether no bit after the prefix is set (what a route destination
    /// must be; the kernel refuses `10.0.0.1/24` as a route).
    pub fn is_network(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => {
                let host = u32::MAX.checked_shr(self.prefix_len.into()).unwrap_or(0);
                u32::from(a) & host == 0
            }
            IpAddr::V6(a) => {
                let host = u128::MAX.checked_shr(self.prefix_len.into()).unwrap_or(0);
                u128::from(a) & host == 0
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

fn max_prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Whether `addr` is an IPv6 link-local address (fe80::/10), which the
/// guest's kernel makes for itself.
pub fn is_ipv6_link_local(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

/// Parses a textual IPv4 or IPv6 address.
pub fn parse_ip(what: &str, s: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| invalid(format!("{what} {s:?} is not an IPv4 or IPv6 address")))
}

/// Checks an interface name the way the kernel's `dev_valid_name` does,
/// so a bad name fails here with a clear message rather than as EINVAL.
pub fn ifname(what: &str, name: &str) -> Result<String> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(invalid(format!(
            "{what} {name:?}: must be 1 to {MAX_IFNAME_LEN} bytes"
        )));
    }
    if name == "." || name == ".." {
        return Err(invalid(format!("{what} {name:?} is not allowed")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '/' | ':'))
    {
        return Err(invalid(format!(
            "{what} {name:?} contains {c:?}: only printable ASCII other than '/' and ':' is allowed"
        )));
    }
    Ok(name.to_owned())
}

/// A validated `Interface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// The name to give the NIC.
    pub name: String,
    /// The MAC the NIC ends up with; how it is found unless `current_mac`
    /// is given.
    pub mac: Mac,
    /// The MAC the NIC has now, if it is to be changed to `mac`.
    pub current_mac: Option<Mac>,
    /// The MTU to set, if any.
    pub mtu: Option<u32>,
    /// Every address the NIC ends up with (link-local IPv6 aside).
    pub addresses: Vec<IpNet>,
}

impl InterfaceSpec {
    /// Validates what the host sent.
    pub fn parse(iface: &Interface) -> Result<InterfaceSpec> {
        let name = ifname("interface name", &iface.name)?;
        let mac = unicast_mac("interface MAC", &iface.mac)?;
        let current_mac = match iface.current_mac.as_str() {
            "" => None,
            m => Some(unicast_mac("current MAC", m)?),
        };
        let mtu = match iface.mtu {
            0 => None,
            m if (MIN_MTU..=MAX_MTU).contains(&m) => Some(m),
            m => {
                return Err(invalid(format!(
                    "MTU {m} of {name}: must be between {MIN_MTU} and {MAX_MTU}"
                )))
            }
        };
        if iface.addresses.len() > MAX_ADDRESSES {
            return Err(invalid(format!(
                "{} addresses for {name}: at most {MAX_ADDRESSES}",
                iface.addresses.len()
            )));
        }
        let addresses = iface
            .addresses
            .iter()
            .map(interface_address)
            .collect::<Result<Vec<_>>>()?;
        Ok(InterfaceSpec {
            name,
            mac,
            current_mac,
            mtu,
            addresses,
        })
    }
}

/// A NIC's own address: unicast and not all zeros (which is what loopback
/// has, so this also keeps `lo` out of reach).
fn unicast_mac(what: &str, text: &str) -> Result<Mac> {
    let mac: Mac = text.parse()?;
    if mac.0 == [0; 6] || mac.0[0] & 1 != 0 {
        return Err(invalid(format!(
            "{what} {mac} is not a unicast Ethernet address"
        )));
    }
    Ok(mac)
}

fn interface_address(a: &IpAddress) -> Result<IpNet> {
    let addr = parse_ip("interface address", &a.address)?;
    if addr.is_unspecified() || addr.is_multicast() {
        return Err(invalid(format!(
            "interface address {addr} is not a unicast address"
        )));
    }
    IpNet::new(addr, a.prefix_len)
}

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// A validated `Route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// IPv4 or IPv6.
    pub family: Family,
    /// The destination; `None` is the default route.
    pub destination: Option<IpNet>,
    /// The next hop; `None` for a link route.
    pub gateway: Option<IpAddr>,
    /// The output interface's name.
    pub device: Option<String>,
    /// The preferred source address.
    pub source: Option<IpAddr>,
    /// rtnetlink scope.
    pub scope: u8,
    /// Route priority (0: the kernel's default).
    pub metric: u32,
}

impl RouteSpec {
    /// Validates what the host sent; every address must be of one family.
    pub fn parse(route: &Route) -> Result<RouteSpec> {
        let destination = match route.destination.as_str() {
            "" => None,
            d => Some(parse_cidr("route destination", d)?),
        };
        let optional_ip = |what: &str, s: &str| -> Result<Option<IpAddr>> {
            if s.is_empty() {
                Ok(None)
            } else {
                parse_ip(what, s).map(Some)
            }
        };
        let gateway = optional_ip("route gateway", &route.gateway)?;
        let source = optional_ip("route source", &route.source)?;
        let device = match route.device.as_str() {
            "" => None,
            d => Some(ifname("route device", d)?),
        };
        let scope = u8::try_from(route.scope)
            .map_err(|_| invalid(format!("route scope {}: at most 255", route.scope)))?;

        let named = match route.family {
            0 => None,
            4 => Some(Family::V4),
            6 => Some(Family::V6),
            f => return Err(invalid(format!("route family {f}: expected 4 or 6"))),
        };
        let seen = [destination.map(|d| d.addr), gateway, source]
            .into_iter()
            .flatten()
            .map(|a| Family::of(&a));
        let mut family = named;
        for f in seen {
            match family {
                None => family = Some(f),
                Some(g) if g != f => {
                    return Err(invalid(format!(
                        "route to {:?} via {:?}: mixes IPv4 and IPv6 (family {})",
                        route.destination, route.gateway, route.family
                    )))
                }
                Some(_) => {}
            }
        }
        let family = family.ok_or_else(|| {
            invalid("a default route without a gateway needs its family (4 or 6)".into())
        })?;
        if gateway.is_none() && device.is_none() {
            return Err(invalid(format!(
                "route to {:?}: needs a gateway or a device",
                route.destination
            )));
        }
        Ok(RouteSpec {
            family,
            destination,
            gateway,
            device,
            source,
            scope,
            metric: route.metric,
        })
    }
}

/// Parses `address/prefix` (a bare address is a host route) that names a
/// network (no host bits set).
fn parse_cidr(what: &str, s: &str) -> Result<IpNet> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => {
            let p: u32 = p
                .parse()
                .map_err(|_| invalid(format!("{what} {s:?}: bad prefix length")))?;
            (parse_ip(what, a)?, p)
        }
        None => {
            let a = parse_ip(what, s)?;
            (a, u32::from(max_prefix(&a)))
        }
    };
    let net = IpNet::new(addr, prefix)?;
    if !net.is_network() {
        return Err(invalid(format!(
            "{what} {s:?} has bits set after its prefix"
        )));
    }
    Ok(net)
}

/// A validated `Neighbor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborSpec {
    /// The neighbour's IP address.
    pub address: IpAddr,
    /// Its MAC address.
    pub mac: Mac,
    /// The interface it is reached through.
    pub device: String,
}

impl NeighborSpec {
    /// Validates what the host sent.
    pub fn parse(n: &Neighbor) -> Result<NeighborSpec> {
        let address = parse_ip("neighbour address", &n.address)?;
        if address.is_unspecified() || address.is_multicast() {
            return Err(invalid(format!(
                "neighbour address {address} is not a unicast address"
            )));
        }
        Ok(NeighborSpec {
            address,
            mac: n.mac.parse()?,
            device: ifname("neighbour device", &n.device)?,
        })
    }
}

/// Checks a list's length before any of it is parsed.
pub fn bounded<T>(what: &str, items: &[T], max: usize) -> Result<()> {
    if items.len() > max {
        return Err(invalid(format!(
            "{} {what}: at most {max} at once",
            items.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, mac: &str, mtu: u32, addrs: &[(&str, u32)]) -> Interface {
        Interface {
            name: name.into(),
            mac: mac.into(),
            mtu,
            addresses: addrs
                .iter()
                .map(|(a, p)| IpAddress {
                    address: (*a).into(),
                    prefix_len: *p,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn macs() {
        let mac: Mac = "02:42:AC:11:00:02".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0x42, 0xac, 0x11, 0, 2]);
        assert_eq!(mac.to_string(), "02:42:ac:11:00:02");
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "2:42:ac:11:00:02",
            "02-42-ac-11-00-02",
            "0g:42:ac:11:00:02",
            "+2:42:ac:11:00:02",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_names() {
        for good in ["eth0", "a", "enp0s3-long.x_y", "123456789012345"] {
            assert!(ifname("n", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:1",
            "a b",
            "1234567890123456",
            "é",
            "a\n",
        ] {
            assert!(ifname("n", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn interfaces() {
        let spec = InterfaceSpec::parse(&iface(
            "eth0",
            "02:42:ac:11:00:02",
            1450,
            &[("172.17.0.2", 16), ("fd00::2", 64)],
        ))
        .unwrap();
        assert_eq!(spec.mtu, Some(1450));
        assert_eq!(spec.addresses[1].to_string(), "fd00::2/64");
        assert_eq!(
            InterfaceSpec::parse(&iface("eth0", "02:42:ac:11:00:02", 0, &[]))
                .unwrap()
                .mtu,
            None
        );
        let bad = [
            iface("eth0", "00:00:00:00:00:00", 0, &[]),
            iface("eth0", "01:00:5e:00:00:01", 0, &[]),
            iface("eth0", "02:42:ac:11:00:02", 67, &[]),
            iface("eth0", "02:42:ac:11:00:02", 65536, &[]),
            iface("eth0", "02:42:ac:11:00:02", 0, &[("10.0.0.1", 33)]),
            iface("eth0", "02:42:ac:11:00:02", 0, &[("fd00::1", 129)]),
            iface("eth0", "02:42:ac:11:00:02", 0, &[("0.0.0.0", 8)]),
            iface("eth0", "02:42:ac:11:00:02", 0, &[("224.0.0.1", 8)]),
            iface("eth0", "02:42:ac:11:00:02", 0, &[("10.0.0.1/8", 8)]),
            iface("eth0/x", "02:42:ac:11:00:02", 0, &[]),
        ];
        for b in bad {
            assert!(InterfaceSpec::parse(&b).is_err(), "{b:?}");
        }
        let many: Vec<(String, u32)> = (0..=MAX_ADDRESSES)
            .map(|i| (format!("10.0.{}.{}", i / 200, i % 200 + 1), 24))
            .collect();
        let many: Vec<(&str, u32)> = many.iter().map(|(a, p)| (a.as_str(), *p)).collect();
        let err = InterfaceSpec::parse(&iface("eth0", "02:42:ac:11:00:02", 0, &many)).unwrap_err();
        assert!(err.to_string().contains("at most 64"), "{err}");
    }

    #[test]
    fn a_current_mac_is_optional_and_checked_like_the_mac() {
        let mut i = iface("eth0", "02:42:ac:11:00:02", 0, &[]);
        assert_eq!(InterfaceSpec::parse(&i).unwrap().current_mac, None);
        i.current_mac = "02:68:75:73:6B:00".into();
        assert_eq!(
            InterfaceSpec::parse(&i).unwrap().current_mac,
            Some(Mac([0x02, 0x68, 0x75, 0x73, 0x6b, 0]))
        );
        for bad in [
            "00:00:00:00:00:00",
            "01:00:5e:00:00:01",
            "02:68:75:73:6b",
            "02:68:75:73:6b:00:00",
            " 02:68:75:73:6b:00",
        ] {
            i.current_mac = bad.into();
            let err = InterfaceSpec::parse(&i).unwrap_err();
            assert!(err.to_string().contains("MAC"), "{bad}: {err}");
        }
        let long = "02:".repeat(100_000);
        i.current_mac = long;
        assert!(InterfaceSpec::parse(&i).is_err());
    }

    fn route(dst: &str, gw: &str, dev: &str, family: u32) -> Route {
        Route {
            destination: dst.into(),
            gateway: gw.into(),
            device: dev.into(),
            family,
            ..Default::default()
        }
    }

    #[test]
    fn routes() {
        let r = RouteSpec::parse(&route("", "172.17.0.1", "eth0", 4)).unwrap();
        assert_eq!((r.family, r.destination), (Family::V4, None));
        let r = RouteSpec::parse(&route("fd00::/64", "", "eth0", 0)).unwrap();
        assert_eq!(r.family, Family::V6);
        let r = RouteSpec::parse(&route("10.1.2.3", "", "eth0", 4)).unwrap();
        assert_eq!(r.destination.unwrap().prefix_len, 32);
        let r = RouteSpec::parse(&route("", "", "eth0", 6)).unwrap();
        assert_eq!(r.family, Family::V6);
        let bad = [
            route("", "", "eth0", 0),              // family unknown
            route("", "", "", 4),                  // neither gateway nor device
            route("10.0.0.1/24", "", "eth0", 4),   // host bits
            route("10.0.0.0/33", "", "eth0", 4),   // prefix
            route("10.0.0.0/x", "", "eth0", 4),    // prefix
            route("", "fd00::1", "eth0", 4),       // family mismatch
            route("10.0.0.0/8", "fd00::1", "", 0), // mixed
            route("", "10.0.0.1", "", 5),          // family
            route("", "10.0.0.1", "bad/dev", 4),   // device
            route("", "gateway", "", 4),           // gateway
        ];
        for b in bad {
            assert!(RouteSpec::parse(&b).is_err(), "{b:?}");
        }
        let mut r = route("", "10.0.0.1", "", 4);
        r.scope = 256;
        assert!(RouteSpec::parse(&r).is_err());
    }

    #[test]
    fn networks() {
        let net = |a: &str, p| IpNet::new(a.parse().unwrap(), p).unwrap();
        assert!(net("0.0.0.0", 0).is_network());
        assert!(net("10.0.0.0", 8).is_network());
        assert!(!net("10.0.0.1", 8).is_network());
        assert!(net("10.0.0.1", 32).is_network());
        assert!(net("fd00::", 64).is_network());
        assert!(!net("fd00::1", 64).is_network());
        assert!(net("::", 0).is_network());
        assert!(is_ipv6_link_local(&"fe80::1".parse().unwrap()));
        assert!(is_ipv6_link_local(&"febf::1".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"fec0::1".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn neighbours() {
        let n = |a: &str, m: &str, d: &str| Neighbor {
            address: a.into(),
            mac: m.into(),
            device: d.into(),
            ..Default::default()
        };
        assert!(NeighborSpec::parse(&n("10.0.0.1", "02:00:00:00:00:01", "eth0")).is_ok());
        assert!(NeighborSpec::parse(&n("fd00::1", "02:00:00:00:00:01", "eth0")).is_ok());
        assert!(NeighborSpec::parse(&n("10.0.0.1", "02:00:00:00:00", "eth0")).is_err());
        assert!(NeighborSpec::parse(&n("10.0.0.1", "02:00:00:00:00:01", "")).is_err());
        assert!(NeighborSpec::parse(&n("ff02::1", "02:00:00:00:00:01", "eth0")).is_err());
        assert!(bounded("routes", &[0; 3], 2).is_err());
        assert!(bounded("routes", &[0; 2], 2).is_ok());
    }
}
