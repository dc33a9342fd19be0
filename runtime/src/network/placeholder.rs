//! The NICs a sandbox template's VM is booted with: one tap per NIC the
//! key's sandboxes will have, made in a network namespace of their own
//! that nothing else is in, with fixed placeholder MACs.
//!
//! The template's guest probes its virtio-net devices at boot and caches
//! what their configuration space says (MAC, MTU), so a restored guest
//! still has the template's MACs: the agent gives each link its sandbox's
//! MAC, found by [`mac`] of its index, before configuring it. The links
//! stay down in the template (the agent configures no NIC before the host
//! asks), so no frame ever leaves through a placeholder tap.
//!
//! The namespace is made by a short-lived thread of its own
//! (`unshare(CLONE_NEWNET)` changes only the calling thread's namespace,
//! never that of a tokio worker or the main thread); the taps' fds work
//! from any thread, and the namespace goes away with the last of them, so
//! a template VM's NICs leave nothing on the host once it is stopped.

use husk_vmm::devices::net::NetConfig;

use super::netlink::Netlink;
use super::tap;
use crate::hypervisor::NicSpec;

/// The placeholder MACs' first five bytes: locally administered unicast,
/// then "husk" in ASCII; the last byte is the NIC's index.
pub const MAC_PREFIX: [u8; 5] = [0x02, 0x68, 0x75, 0x73, 0x6b];

/// The placeholder MAC of the template's NIC `index` (the guest's
/// enumeration order, which is the spec's).
pub fn mac(index: usize) -> [u8; 6] {
    let [a, b, c, d, e] = MAC_PREFIX;
    // MAX_NICS is far below 256; wrapping keeps the function total.
    [a, b, c, d, e, index as u8]
}

/// Errors making the placeholder NICs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thread could not get a network namespace of its own.
    #[error("cannot make a network namespace for the template's NICs: {0}")]
    Namespace(std::io::Error),
    /// A tap (or the netlink socket to set it up) failed.
    #[error("template NIC: {0}")]
    Tap(#[from] tap::Error),
    /// The thread panicked or could not be started.
    #[error("the template NICs' thread failed: {0}")]
    Thread(String),
}

/// One NIC per entry of `mtus`, each on a tap with that MTU (up, as the
/// real taps are) in a fresh network namespace, with placeholder MAC
/// [`mac`]`(i)`. Blocks until the taps exist (run it off the async
/// workers). On error nothing is left: the namespace dies with its thread
/// and any taps already made.
pub fn nics(mtus: &[u16]) -> Result<Vec<NicSpec>, Error> {
    if mtus.is_empty() {
        return Ok(Vec::new());
    }
    let wanted = mtus.to_vec();
    let taps = std::thread::Builder::new()
        .name("husk-template-nics".into())
        .spawn(move || -> Result<Vec<tap::GuestTap>, Error> {
            // SAFETY: unshare with CLONE_NEWNET only changes this thread's
            // network namespace; the thread ends right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(Error::Namespace(std::io::Error::last_os_error()));
            }
            let mut nl = Netlink::open().map_err(|e| Error::Tap(e.into()))?;
            wanted
                .iter()
                .map(|&mtu| tap::create(&mut nl, mtu.into()).map_err(Error::from))
                .collect()
        })
        .map_err(|e| Error::Thread(e.to_string()))?
        .join()
        .map_err(|_| Error::Thread("it panicked".into()))??;
    Ok(taps
        .into_iter()
        .zip(mtus)
        .enumerate()
        .map(|(i, (t, &mtu))| NicSpec {
            tap: t.tap,
            config: NetConfig { mac: mac(i), mtu },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::{AsFd, AsRawFd, FromRawFd};

    use super::*;
    use crate::network::tap::index_of;
    use crate::network::testutil::{in_new_netns, link_names, mtu_and_up};

    /// `TUNGETDEVNETNS`: an fd of the tap's network namespace.
    const TUNGETDEVNETNS: libc::c_ulong = 0x54e3;

    #[test]
    fn placeholder_macs_are_local_unicast_and_one_per_index() {
        for i in 0..crate::hypervisor::MAX_NICS {
            let m = mac(i);
            assert_eq!(m[0] & 1, 0, "unicast");
            assert_eq!(m[0] & 2, 2, "locally administered");
            assert_eq!(usize::from(m[5]), i);
            assert_eq!(&m[1..5], b"husk");
        }
        assert_eq!(
            husk_vmm::devices::net::format_mac(&mac(1)),
            "02:68:75:73:6b:01"
        );
        assert!(nics(&[]).unwrap().is_empty());
    }

    /// The taps live in a namespace of their own, with the MTUs asked for,
    /// up; the caller's namespace gains nothing; the taps vanish with the
    /// NICs.
    #[test]
    fn taps_exist_only_in_their_throwaway_namespace() {
        in_new_netns(|| {
            // This thread's namespace stands for the host's.
            let mut host = Netlink::open().unwrap();
            let before = link_names(&mut host);
            let made = nics(&[1500, 9000]).expect("placeholder NICs (tests run as root)");
            assert_eq!(link_names(&mut host), before, "the host gained a link");
            assert_eq!(made.len(), 2);
            for (i, nic) in made.iter().enumerate() {
                assert_eq!(nic.config.mac, mac(i));
                // The device refuses what a guest cannot have.
                husk_vmm::devices::net::NetMmioDevice::new(
                    nic.tap.try_clone().unwrap(),
                    nic.config,
                )
                .unwrap();
            }
            assert_eq!(made[1].config.mtu, 9000);
            // SAFETY: a plain ioctl on an open tap fd; it returns a new fd.
            let fd = unsafe { libc::ioctl(made[0].tap.as_raw_fd(), TUNGETDEVNETNS) };
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            // SAFETY: the ioctl returned a new fd that nothing else owns.
            let ns = unsafe { File::from_raw_fd(fd) };
            let names: Vec<String> = made.iter().map(|n| n.tap.name().to_owned()).collect();
            let in_ns = |ns: &File, f: fn(&mut Netlink, &[String])| {
                let ns = ns.try_clone().unwrap();
                let names = names.clone();
                std::thread::spawn(move || {
                    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    f(&mut Netlink::open().unwrap(), &names)
                })
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
            };
            in_ns(&ns, |nl, names| {
                let mut all = link_names(nl);
                all.sort();
                let mut want: Vec<String> = names.to_vec();
                want.push("lo".into());
                want.sort();
                assert_eq!(all, want, "only the taps (and lo) in their namespace");
                for (name, mtu) in names.iter().zip([1500, 9000]) {
                    let index = index_of(nl, name).unwrap();
                    assert_eq!(mtu_and_up(nl, index), (mtu, true), "{name}");
                }
            });
            drop(made);
            in_ns(&ns, |nl, _| {
                // Another test's fork may hold a copy of the fds until its
                // exec: give that a moment.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while link_names(nl) != ["lo"] && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                assert_eq!(link_names(nl), ["lo"], "the taps went with their fds");
            });
        });
    }
}
