//! The host side of the guest's network, in the container's network
//! namespace (where the sandbox process runs).
//!
//! - [`scan`]: what the namespace holds (links, addresses, routes,
//!   neighbours), by rtnetlink.
//! - [`tap`]: one tap per link, with the link's MTU, up.
//! - [`placeholder`]: a snapshot template's NICs, on taps in a namespace
//!   of their own, with placeholder MACs.
//! - [`tc`]: the link and its tap joined both ways by tc mirred redirects.
//! - [`agent`]: the scan as the agent's protocol messages.
//! - [`resolv`] and [`dns`]: the host half of the DNS relay, for loopback
//!   nameservers (Docker's 127.0.0.11) that only this namespace can reach.
//! - [`netlink`]: the small rtnetlink client under all of it.
//!
//! [`HostNetwork::wire`] does the scan, the taps and the tc setup before
//! the VM boots; [`HostNetwork::teardown`] (or dropping it) removes the tc
//! setup again. The taps go with their last fd.

pub mod agent;
pub mod dns;
pub use husk_netlink as netlink;
pub mod placeholder;
pub mod resolv;
pub mod scan;
pub mod tap;
pub mod tc;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use husk_vmm::devices::net::{NetConfig, Tap};

use netlink::Netlink;
use scan::{Link, Scan};

/// Errors wiring the namespace's links to the guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the namespace failed.
    #[error("reading the network namespace: {0}")]
    Scan(#[source] netlink::Error),
    /// A link's MTU is more than a virtio-net device carries.
    #[error("link {link}: MTU {mtu} is more than a guest NIC can have (65535)")]
    Mtu {
        /// The link's name.
        link: String,
        /// Its MTU.
        mtu: u32,
    },
    /// Its tap could not be made.
    #[error("the tap for link {link}: {source}")]
    Tap {
        /// The link's name.
        link: String,
        /// Why.
        source: tap::Error,
    },
    /// The tc redirects could not be set up.
    #[error("joining link {link} and {tap} by tc: {source}")]
    Tc {
        /// The link's name.
        link: String,
        /// The tap's name.
        tap: String,
        /// Why.
        source: netlink::Error,
    },
    /// The netlink socket.
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    /// The network namespace named by path could not be joined.
    #[error("network namespace {path}: {source}")]
    Namespace {
        /// Its path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One guest NIC's host side: a link of the namespace and its tap.
#[derive(Debug)]
pub struct Nic {
    /// The link, as scanned.
    pub link: Link,
    /// Its tap.
    pub tap: tap::GuestTap,
}

impl Nic {
    /// The device configuration of the guest NIC: the link's MAC and MTU.
    pub fn config(&self) -> NetConfig {
        NetConfig {
            mac: self.link.mac,
            // Checked by `wire`.
            mtu: u16::try_from(self.link.mtu).unwrap_or(u16::MAX),
        }
    }

    /// The tap, for the VM's net device.
    pub fn tap(&self) -> Arc<Tap> {
        Arc::clone(&self.tap.tap)
    }
}

/// The namespace's links wired to taps for the guest. Dropping it removes
/// the tc setup (as [`HostNetwork::teardown`] does).
#[derive(Debug)]
pub struct HostNetwork {
    scan: Scan,
    nics: Vec<Nic>,
    /// The namespace, when it is not the calling thread's own.
    netns: Option<Arc<File>>,
}

impl HostNetwork {
    /// Scans the calling thread's network namespace and wires each link it
    /// finds to a new tap. On failure nothing of it is left.
    pub fn wire() -> Result<Self, Error> {
        Self::wire_netns(None)
    }

    /// As [`HostNetwork::wire`], in the network namespace at `path` (a
    /// pod's, which containerd's CRI plugin made): the netlink work runs on
    /// a thread of its own that joins it, so no thread of the caller moves.
    pub fn wire_in(path: &Path) -> Result<Self, Error> {
        let ns = File::open(path).map_err(|e| Error::Namespace {
            path: path.to_owned(),
            source: e,
        })?;
        let ns = Arc::new(ns);
        let inner = Arc::clone(&ns);
        in_netns(Some(&ns), move || Self::wire_netns(Some(inner))).map_err(|e| {
            Error::Namespace {
                path: path.to_owned(),
                source: e,
            }
        })?
    }

    /// No NICs at all: the guest has only loopback.
    pub fn none() -> Self {
        Self {
            scan: Scan::default(),
            nics: Vec::new(),
            netns: None,
        }
    }

    fn wire_netns(netns: Option<Arc<File>>) -> Result<Self, Error> {
        let mut nl = Netlink::open()?;
        let scan = scan::scan(&mut nl).map_err(Error::Scan)?;
        if let Some(link) = scan.links.iter().find(|l| u16::try_from(l.mtu).is_err()) {
            return Err(Error::Mtu {
                link: link.name.clone(),
                mtu: link.mtu,
            });
        }
        let mut wired = Self {
            scan: Scan::default(),
            nics: Vec::new(),
            netns,
        };
        for link in &scan.links {
            // On an error `wired` is dropped, which undoes the links
            // joined so far.
            let tap = tap::create(&mut nl, link.mtu).map_err(|source| Error::Tap {
                link: link.name.clone(),
                source,
            })?;
            tc::join(&mut nl, link.index, tap.index).map_err(|source| Error::Tc {
                link: link.name.clone(),
                tap: tap.name.clone(),
                source,
            })?;
            wired.nics.push(Nic {
                link: link.clone(),
                tap,
            });
        }
        wired.scan = scan;
        Ok(wired)
    }

    /// What the namespace held.
    pub fn scan(&self) -> &Scan {
        &self.scan
    }

    /// The NICs, one per link of the scan, in its order.
    pub fn nics(&self) -> &[Nic] {
        &self.nics
    }

    /// Removes the tc setup from the links (the namespace's own stack sees
    /// their frames again). The taps go once the VM has closed them.
    pub fn teardown(mut self) {
        self.unwire();
    }

    fn unwire(&mut self) {
        if self.nics.is_empty() {
            return;
        }
        let nics: Vec<Nic> = self.nics.drain(..).collect();
        let netns = self.netns.clone();
        if let Err(e) = in_netns(netns.as_ref(), move || unwire(nics)) {
            tracing::warn!("removing the tc setup: joining the network namespace: {e}");
        }
    }
}

/// Removes the tc setup of `nics` in the calling thread's namespace.
fn unwire(nics: Vec<Nic>) {
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::warn!("removing the tc setup: {e}");
            return;
        }
    };
    for nic in nics {
        if let Err(e) = tc::remove_ingress(&mut nl, nic.link.index) {
            tracing::warn!(link = nic.link.name, "removing the tc setup: {e}");
        }
    }
}

/// Runs `f` in the network namespace `ns` (on a thread of its own that
/// joins it and then ends), or right here without one.
fn in_netns<T: Send + 'static>(
    ns: Option<&Arc<File>>,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let Some(ns) = ns else { return Ok(f()) };
    let ns = Arc::clone(ns);
    std::thread::Builder::new()
        .name("husk-netns".into())
        .spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            Ok(f())
        })?
        .join()
        .map_err(|_| std::io::Error::other("the network namespace thread panicked"))?
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        self.unwire();
    }
}
