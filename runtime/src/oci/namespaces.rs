//! Namespaces a spec names by path, other than the network's
//! ([`super::netns`]): checked as the spec asks ("the runtime MUST generate
//! an error if the path is not associated with a namespace of type
//! `type`"), then refused, because joining one means sharing a host
//! kernel's namespace with a container that runs in a VM's kernel.
//! (A pod's containers joining each other inside one VM is the shim's
//! business, [`crate::shim`].)

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// `ioctl(NS_GET_NSTYPE)`: the `CLONE_NEW*` type of a namespace fd.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
/// `statfs` type of the namespace file system.
const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

/// Why a namespace path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path does not exist or cannot be opened.
    #[error("cannot open {kind} namespace {path}")]
    Open {
        /// Its type.
        kind: &'static str,
        /// The spec's path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The path is not a namespace, or one of another type.
    #[error("{kind} namespace {path} is {what}, not a {kind} namespace")]
    WrongType {
        /// The type the spec says.
        kind: &'static str,
        /// The spec's path.
        path: PathBuf,
        /// What it is instead.
        what: String,
    },
    /// A valid namespace of the host, which a container in a VM cannot join.
    #[error("linux.namespaces: the {kind} namespace {path} belongs to the host's kernel and a container in a VM cannot join it (--{kind}=container:X or host?); give the container a {kind} namespace of its own")]
    HostNamespace {
        /// Its type.
        kind: &'static str,
        /// The spec's path.
        path: PathBuf,
    },
}

/// Opens `path` and checks it is a namespace of type `kind` (a
/// `CLONE_NEW*` flag).
pub fn open(path: &Path, kind: libc::c_int) -> Result<File, Error> {
    let name = type_name(kind);
    let file = File::open(path).map_err(|source| Error::Open {
        kind: name,
        path: path.to_owned(),
        source,
    })?;
    let wrong = |what: String| Error::WrongType {
        kind: name,
        path: path.to_owned(),
        what,
    };
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is an open fd; `fs` is valid for writes.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 || fs.f_type != NSFS_MAGIC {
        return Err(wrong("not a namespace file".into()));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
    let found = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if found != kind {
        return Err(wrong(format!("a {} namespace", type_name(found))));
    }
    Ok(file)
}

/// Checks every non-network namespace the spec names by path, and refuses
/// the first valid one.
pub fn check_paths(spec: &Spec) -> Result<(), Error> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in namespaces {
        let (Some(path), Some(kind)) = (ns.path(), clone_flag(ns.typ())) else {
            continue;
        };
        if kind == libc::CLONE_NEWNET {
            continue;
        }
        open(path, kind)?;
        return Err(Error::HostNamespace {
            kind: type_name(kind),
            path: path.clone(),
        });
    }
    Ok(())
}

fn clone_flag(typ: LinuxNamespaceType) -> Option<libc::c_int> {
    Some(match typ {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
    })
}

/// The name of a `CLONE_NEW*` namespace type.
pub fn type_name(kind: libc::c_int) -> &'static str {
    match kind {
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWTIME => "time",
        libc::CLONE_NEWNET => "network",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder};

    use super::*;

    fn spec_with(typ: LinuxNamespaceType, path: &str) -> Spec {
        let mut spec = Spec::default();
        spec.set_linux(Some(
            LinuxBuilder::default()
                .namespaces(vec![LinuxNamespaceBuilder::default()
                    .typ(typ)
                    .path(path)
                    .build()
                    .unwrap()])
                .build()
                .unwrap(),
        ));
        spec
    }

    #[test]
    fn a_missing_path_or_a_namespace_of_another_type_is_named() {
        let err =
            check_paths(&spec_with(LinuxNamespaceType::Ipc, "/nonexistent/ns/ipc")).unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/ns/ipc"), "{err}");
        let err =
            check_paths(&spec_with(LinuxNamespaceType::Ipc, "/proc/self/ns/uts")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ipc namespace /proc/self/ns/uts is a uts namespace, not a ipc namespace"
        );
        let err = check_paths(&spec_with(LinuxNamespaceType::Pid, "/etc/hostname")).unwrap_err();
        assert!(err.to_string().contains("not a namespace file"), "{err}");
    }

    #[test]
    fn a_valid_host_namespace_is_refused_by_name_and_network_is_left_to_netns() {
        let err =
            check_paths(&spec_with(LinuxNamespaceType::Uts, "/proc/self/ns/uts")).unwrap_err();
        assert!(
            matches!(err, Error::HostNamespace { kind: "uts", .. }),
            "{err}"
        );
        assert!(check_paths(&spec_with(LinuxNamespaceType::Network, "/proc/self/ns/net")).is_ok());
        assert!(check_paths(&Spec::default()).is_ok());
    }
}
