//! The guest's network configuration, through rtnetlink: the host hands over
//! what the container's network namespace had (interfaces, routes,
//! neighbours), and the agent recreates it on the guest's NICs.
//!
//! Everything lives in the guest's root network namespace: the containers
//! share it, since the VM is their network namespace. Each submodule has one
//! job: [`link`], [`address`], [`route`], [`neighbour`]; [`spec`] validates
//! what the host sends before any of it reaches the kernel.
//!
//! The calls block (netlink to the kernel answers at once); the service runs
//! them on a blocking thread.

pub mod address;
pub mod link;
pub mod neighbour;
pub use husk_netlink as netlink;
pub mod route;
pub mod spec;
pub mod sysctl;

use husk_protocol::agent::{Interface, IpAddress, Neighbor, Route};

use self::link::Link;
use self::netlink::Netlink;
use self::spec::{
    bounded, is_ipv6_link_local, InterfaceSpec, NeighborSpec, RouteSpec, MAX_NEIGHBORS, MAX_ROUTES,
};
use crate::error::{AgentError, Result};

/// Configures the NIC whose MAC is the one given (or, with a current MAC,
/// the NIC that has that one, which first gets the given MAC): name, MTU,
/// addresses, up. Returns the interface as the kernel now has it.
pub fn update_interface(iface: &Interface) -> Result<Interface> {
    let spec = InterfaceSpec::parse(iface)?;
    let mut nl = Netlink::open()?;
    let links = link::list(&mut nl)?;
    let find = spec.current_mac.unwrap_or(spec.mac);
    let mut nic = links
        .iter()
        .find(|l| l.mac == Some(find) && !l.loopback)
        .cloned()
        .ok_or_else(|| AgentError::NotFound(format!("no network interface with MAC {find}")))?;
    if nic.mac != Some(spec.mac) {
        // A restored guest's NIC still has its template's placeholder MAC.
        // Down first: not every driver takes a new address while up.
        if let Some(other) = links
            .iter()
            .find(|l| l.mac == Some(spec.mac) && l.index != nic.index)
        {
            return Err(AgentError::AlreadyExists(format!(
                "MAC {} is already {}'s",
                spec.mac, other.name
            )));
        }
        link::set_up(&mut nl, &nic, false)?;
        link::set_mac(&mut nl, &nic, &spec.mac)?;
        tracing::info!(from = %find, to = %spec.mac, "network interface given its MAC");
        nic = link::by_index(&mut nl, nic.index)?;
    }

    if nic.name != spec.name {
        if let Some(other) = links.iter().find(|l| l.name == spec.name) {
            make_way(&mut nl, other, &spec.name)?;
        }
        // The kernel renames only links that are down.
        link::set_up(&mut nl, &nic, false)?;
        link::rename(&mut nl, &nic, &spec.name)?;
    }
    let nic = link::by_index(&mut nl, nic.index)?;
    if let Some(mtu) = spec.mtu {
        if mtu != nic.mtu {
            link::set_mtu(&mut nl, &nic, mtu)?;
        }
    }
    if !nic.up {
        link::set_up(&mut nl, &nic, true)?;
    }
    address::replace_all(&mut nl, nic.index, &spec.addresses)?;
    tracing::info!(name = %spec.name, mac = %spec.mac, "network interface configured");
    describe(&mut nl, nic.index)
}

/// Frees `name` for another NIC: the kernel may have named the NICs in
/// another order than the host's (eth0 and eth1 swapped), so an
/// unconfigured NIC holding the name gets a temporary one until its own
/// UpdateInterface. A configured one (up) or loopback keeps it: the host
/// asked for one name twice.
fn make_way(nl: &mut Netlink, other: &Link, name: &str) -> Result<()> {
    if other.up || other.loopback {
        return Err(AgentError::AlreadyExists(format!(
            "network interface name {name} is taken by a configured interface"
        )));
    }
    // "husk" + at most 10 digits fits IFNAMSIZ.
    link::rename(nl, other, &format!("husk{}", other.index))
}

/// The interface at `index` as the kernel has it (IPv6 link-local
/// addresses left out: the host never sends them).
fn describe(nl: &mut Netlink, index: u32) -> Result<Interface> {
    let link = link::by_index(nl, index)?;
    let addresses = address::list(nl, index)?
        .into_iter()
        .filter(|a| !is_ipv6_link_local(&a.addr))
        .map(|a| IpAddress {
            address: a.addr.to_string(),
            prefix_len: a.prefix_len.into(),
            ..Default::default()
        })
        .collect();
    Ok(Interface {
        name: link.name,
        mac: link.mac.map(|m| m.to_string()).unwrap_or_default(),
        mtu: link.mtu,
        addresses,
        ..Default::default()
    })
}

/// Adds routes to the main table: first those without a gateway, so that
/// every gateway is reachable when its route is added.
pub fn update_routes(routes: &[Route]) -> Result<()> {
    bounded("routes", routes, MAX_ROUTES)?;
    let mut specs = routes
        .iter()
        .map(RouteSpec::parse)
        .collect::<Result<Vec<_>>>()?;
    // Stable: the host's order holds within each group.
    specs.sort_by_key(|r| r.gateway.is_some());
    let mut nl = Netlink::open()?;
    let links = link::list(&mut nl)?;
    for r in &specs {
        let oif = match &r.device {
            None => None,
            Some(dev) => Some(index_of(&links, dev, "route")?),
        };
        route::add(&mut nl, r, oif)?;
    }
    if !specs.is_empty() {
        tracing::info!(count = specs.len(), "routes added");
    }
    Ok(())
}

/// Adds permanent neighbour entries.
pub fn add_neighbors(neighbors: &[Neighbor]) -> Result<()> {
    bounded("neighbours", neighbors, MAX_NEIGHBORS)?;
    let specs = neighbors
        .iter()
        .map(NeighborSpec::parse)
        .collect::<Result<Vec<_>>>()?;
    let mut nl = Netlink::open()?;
    let links = link::list(&mut nl)?;
    for n in &specs {
        let index = index_of(&links, &n.device, "neighbour")?;
        neighbour::add(&mut nl, n, index)?;
    }
    Ok(())
}

fn index_of(links: &[Link], name: &str, what: &str) -> Result<u32> {
    links
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.index)
        .ok_or_else(|| AgentError::NotFound(format!("{what} device {name:?}: no such interface")))
}

/// Brings the loopback interface up if it is not (the guest kernel leaves
/// it down; containers, and the DNS relay on 127.0.0.11, need it).
pub fn loopback_up() -> Result<()> {
    let mut nl = Netlink::open()?;
    let lo = link::by_name(&mut nl, "lo")?;
    if !lo.up {
        link::set_up(&mut nl, &lo, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own in a new, empty network namespace
    /// (only a down `lo`), so nothing here touches the machine's network.
    /// Needs root; skipped otherwise.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root for a network namespace");
            return None;
        }
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            f()
        })
        .join()
        .map(Some)
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    #[test]
    fn loopback_comes_up() {
        in_new_netns(|| {
            let mut nl = Netlink::open().unwrap();
            assert!(!link::by_name(&mut nl, "lo").unwrap().up);
            loopback_up().unwrap();
            assert!(link::by_name(&mut nl, "lo").unwrap().up);
            // Twice is fine.
            loopback_up().unwrap();
        });
    }

    #[test]
    fn unknown_mac_and_device_are_not_found() {
        in_new_netns(|| {
            let err = update_interface(&Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:09".into(),
                ..Default::default()
            })
            .unwrap_err();
            assert!(matches!(err, AgentError::NotFound(_)), "{err}");
            let err = update_routes(&[Route {
                destination: "10.0.0.0/8".into(),
                device: "eth9".into(),
                family: 4,
                ..Default::default()
            }])
            .unwrap_err();
            assert!(err.to_string().contains("eth9"), "{err}");
        });
    }
}
