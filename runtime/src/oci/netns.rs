//! The container's network namespace as the spec asks for it, checked
//! against what a container in a VM can have.
//!
//! The VM's network stack is the container's, fed from a host network
//! namespace of the container's own: husk mirrors every interface found
//! there into the guest and takes the interface's traffic away from that
//! namespace (docs/networking.md). So the spec must name a network
//! namespace, and a namespace it names by path must be one that nothing else
//! uses yet (Podman's, made for this container), never another container's
//! or the host's.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Why the spec's network namespace cannot be given to a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No network namespace: `--network host`.
    #[error("the spec has no network namespace (--network host): a container in a VM has the VM's own network stack and cannot share the host's; give it a network namespace (for example Docker's default bridge)")]
    HostNetwork,
    /// The path does not exist or cannot be opened.
    #[error("cannot open network namespace {path}")]
    Open {
        /// The spec's path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a namespace, or one of another type.
    #[error("network namespace {path} is {what}, not a network namespace")]
    NotNetwork {
        /// The spec's path.
        path: PathBuf,
        /// What it is instead.
        what: String,
    },
    /// Processes already live in the namespace (`--network container:X`).
    #[error("network namespace {path} is in use by process {pid} ({comm}) (--network container:X?): husk moves the namespace's interfaces into the container's VM, which would take them away from it; give the container a network namespace of its own")]
    InUse {
        /// The spec's path.
        path: PathBuf,
        /// A process in it.
        pid: i32,
        /// Its command name.
        comm: String,
    },
}

/// Where the container's host-side network namespace comes from.
#[derive(Debug)]
pub enum NetworkNamespace {
    /// A new one, made for the container (Docker, plain OCI specs).
    New,
    /// The one at this path, prepared by the caller (Podman, CNI).
    Join {
        /// The spec's path.
        path: PathBuf,
        /// It, opened.
        fd: OwnedFd,
    },
}

impl NetworkNamespace {
    /// The network namespace `spec` asks for, checked.
    pub fn from_spec(spec: &Spec) -> Result<Self, Error> {
        let entry = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|namespaces| {
                namespaces
                    .iter()
                    .find(|ns| ns.typ() == LinuxNamespaceType::Network)
            })
            .ok_or(Error::HostNetwork)?;
        match entry.path() {
            None => Ok(NetworkNamespace::New),
            Some(path) => {
                let fd = open_network_namespace(path)?;
                if let Some((pid, comm)) = process_in(&fd) {
                    return Err(Error::InUse {
                        path: path.clone(),
                        pid,
                        comm,
                    });
                }
                Ok(NetworkNamespace::Join {
                    path: path.clone(),
                    fd,
                })
            }
        }
    }
}

/// Opens `path` and checks it is a network namespace.
fn open_network_namespace(path: &Path) -> Result<OwnedFd, Error> {
    match super::namespaces::open(path, libc::CLONE_NEWNET) {
        Ok(file) => Ok(file.into()),
        Err(super::namespaces::Error::Open { source, .. }) => Err(Error::Open {
            path: path.to_owned(),
            source,
        }),
        Err(super::namespaces::Error::WrongType { what, .. }) => Err(Error::NotNetwork {
            path: path.to_owned(),
            what,
        }),
        Err(other) => Err(Error::NotNetwork {
            path: path.to_owned(),
            what: other.to_string(),
        }),
    }
}

/// A process other than this one whose network namespace is `ns`, if any.
fn process_in(ns: &OwnedFd) -> Option<(i32, String)> {
    let me = i32::try_from(std::process::id()).ok()?;
    let meta = File::from(ns.try_clone().ok()?).metadata().ok()?;
    let id = (meta.dev(), meta.ino());
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .find_map(|pid| {
            let m = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
            ((m.dev(), m.ino()) == id).then(|| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .unwrap_or_default()
                    .trim_end()
                    .to_owned();
                (pid, comm)
            })
        })
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder};

    use super::*;

    fn spec_with(namespaces: Vec<oci_spec::runtime::LinuxNamespace>) -> Spec {
        let mut spec = Spec::default();
        spec.set_linux(Some(
            LinuxBuilder::default()
                .namespaces(namespaces)
                .build()
                .unwrap(),
        ));
        spec
    }

    fn network(path: Option<&str>) -> oci_spec::runtime::LinuxNamespace {
        let mut b = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(p) = path {
            b = b.path(p);
        }
        b.build().unwrap()
    }

    #[test]
    fn no_network_namespace_is_the_host_network_and_refused() {
        let pid = LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Pid)
            .build()
            .unwrap();
        let err = NetworkNamespace::from_spec(&spec_with(vec![pid])).unwrap_err();
        assert!(matches!(err, Error::HostNetwork));
        assert!(err.to_string().contains("--network host"), "{err}");
    }

    #[test]
    fn a_namespace_without_path_is_new() {
        let ns = NetworkNamespace::from_spec(&spec_with(vec![network(None)])).unwrap();
        assert!(matches!(ns, NetworkNamespace::New));
    }

    #[test]
    fn a_missing_path_is_named() {
        let err = NetworkNamespace::from_spec(&spec_with(vec![network(Some("/run/netns/nope"))]))
            .unwrap_err();
        assert!(matches!(err, Error::Open { .. }));
        assert!(err.to_string().contains("/run/netns/nope"), "{err}");
    }

    #[test]
    fn a_plain_file_or_another_type_is_not_a_network_namespace() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let err = NetworkNamespace::from_spec(&spec_with(vec![network(Some(&path))])).unwrap_err();
        assert!(err.to_string().contains("not a namespace file"), "{err}");
        let err = NetworkNamespace::from_spec(&spec_with(vec![network(Some("/proc/self/ns/uts"))]))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("a uts namespace, not a network namespace"),
            "{err}"
        );
    }

    #[test]
    fn a_namespace_that_processes_live_in_is_refused() {
        // This test process's own namespace: it lives there (and so does
        // everything else on the machine's network).
        let err = NetworkNamespace::from_spec(&spec_with(vec![network(Some("/proc/self/ns/net"))]))
            .unwrap_err();
        assert!(matches!(err, Error::InUse { .. }), "{err}");
        assert!(err.to_string().contains("--network container:X"), "{err}");
    }
}
