//! The spec the guest agent receives, and the host paths it needs shared.
//!
//! The container's root file system and every bind mount's source live on
//! the host; the guest sees them through the virtio-fs share. So each is
//! bind-mounted under `<sandbox>/shared/<id>/` on the host and its path in
//! the spec is rewritten to the same place under [`GUEST_SHARE`]. What only
//! makes sense on the host is taken out: hooks (husk runs them on the host),
//! namespace paths (host namespaces cannot be joined from a VM) and the
//! network namespace: the VM's network stack, which holds the interfaces
//! husk mirrors from the container's host network namespace, *is* the
//! container's network namespace, so the container stays in it.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hooks, LinuxNamespaceType, Mount, Spec};

/// Where the agent mounts the sandbox share in the guest.
pub const GUEST_SHARE: &str = "/run/husk/shared";

/// Errors translating a spec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bind mount's source is missing on the host.
    #[error("mount source {0} does not exist")]
    MissingSource(PathBuf),
    /// A bind mount's source is not an absolute path.
    #[error("mount source {0} is not an absolute path")]
    RelativeSource(PathBuf),
}

/// One host path to bind under the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareBind {
    /// The host path.
    pub source: PathBuf,
    /// Where it goes, relative to the share's root.
    pub target: PathBuf,
    /// Whether it is a directory (else a file).
    pub is_dir: bool,
    /// Bind it read-only.
    pub readonly: bool,
}

/// The guest's spec for container `id` and the binds it relies on.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// The spec to send to the agent.
    pub spec: Spec,
    /// The container's root in the guest.
    pub rootfs: String,
    /// Host paths to bind under the share, rootfs first.
    pub binds: Vec<ShareBind>,
}

/// Translates `spec` (whose root is `rootfs` on the host) for the guest.
pub fn translate(spec: &Spec, id: &str, rootfs: &Path) -> Result<GuestSpec, Error> {
    let mut spec = spec.clone();
    let base = PathBuf::from(id);
    let guest = |rel: &Path| format!("{GUEST_SHARE}/{}", rel.display());
    let root_rel = base.join("rootfs");
    let mut binds = vec![ShareBind {
        source: rootfs.to_owned(),
        target: root_rel.clone(),
        is_dir: true,
        readonly: false,
    }];
    let rootfs_guest = guest(&root_rel);
    if let Some(mut root) = spec.root().clone() {
        root.set_path(PathBuf::from(&rootfs_guest));
        spec.set_root(Some(root));
    }

    if let Some(mounts) = spec.mounts().clone() {
        let mut out = Vec::with_capacity(mounts.len());
        for (index, mount) in mounts.into_iter().enumerate() {
            if !is_bind(&mount) {
                out.push(mount);
                continue;
            }
            let Some(source) = mount.source().clone() else {
                out.push(mount);
                continue;
            };
            if !source.is_absolute() {
                return Err(Error::RelativeSource(source));
            }
            let meta =
                std::fs::metadata(&source).map_err(|_| Error::MissingSource(source.clone()))?;
            // The source keeps its own name as the last component, so the
            // guest's mountinfo shows `.../etc`, not just an index.
            let name = source
                .file_name()
                .map_or_else(|| PathBuf::from("root"), PathBuf::from);
            let target = base.join("mounts").join(index.to_string()).join(name);
            let mut mount = mount;
            mount.set_source(Some(PathBuf::from(guest(&target))));
            binds.push(ShareBind {
                readonly: has_option(&mount, "ro"),
                source,
                target,
                is_dir: meta.is_dir(),
            });
            out.push(mount);
        }
        spec.set_mounts(Some(out));
    }

    // Only startContainer hooks run in the guest (see `oci::hooks`).
    let start_container = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.start_container().clone());
    spec.set_hooks(start_container.map(|hooks| {
        let mut guest_hooks = Hooks::default();
        guest_hooks.set_start_container(Some(hooks));
        guest_hooks
    }));
    if let Some(mut linux) = spec.linux().clone() {
        if let Some(namespaces) = linux.namespaces().clone() {
            let namespaces = namespaces
                .into_iter()
                .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
                .map(|mut ns| {
                    ns.set_path(None);
                    ns
                })
                .collect();
            linux.set_namespaces(Some(namespaces));
        }
        spec.set_linux(Some(linux));
    }
    Ok(GuestSpec {
        spec,
        rootfs: rootfs_guest,
        binds,
    })
}

fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || has_option(mount, "bind")
        || has_option(mount, "rbind")
}

fn has_option(mount: &Mount, option: &str) -> bool {
    mount
        .options()
        .as_ref()
        .is_some_and(|o| o.iter().any(|x| x == option))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        HookBuilder, HooksBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder,
    };

    #[test]
    fn binds_move_into_the_share_and_host_only_parts_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("hosts");
        std::fs::write(&file, "").unwrap();
        let mut spec = Spec::default();
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(
            MountBuilder::default()
                .destination("/data")
                .typ("bind")
                .source(tmp.path())
                .options(vec!["rbind".into(), "ro".into()])
                .build()
                .unwrap(),
        );
        mounts.push(
            MountBuilder::default()
                .destination("/etc/hosts")
                .source(&file)
                .options(vec!["bind".into()])
                .build()
                .unwrap(),
        );
        let n = mounts.len();
        spec.set_mounts(Some(mounts));
        spec.set_hooks(Some(
            HooksBuilder::default()
                .prestart(vec![HookBuilder::default()
                    .path("/bin/true")
                    .build()
                    .unwrap()])
                .start_container(vec![HookBuilder::default()
                    .path("/bin/in-the-rootfs")
                    .build()
                    .unwrap()])
                .build()
                .unwrap(),
        ));
        let mut linux = spec.linux().clone().unwrap();
        linux.set_namespaces(Some(vec![
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path("/proc/1/ns/net")
                .build()
                .unwrap(),
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Ipc)
                .path("/proc/1/ns/ipc")
                .build()
                .unwrap(),
        ]));
        spec.set_linux(Some(linux));

        let g = translate(&spec, "c1", Path::new("/host/rootfs")).unwrap();
        assert_eq!(g.rootfs, "/run/husk/shared/c1/rootfs");
        assert_eq!(g.spec.root().as_ref().unwrap().path(), Path::new(&g.rootfs));
        assert_eq!(g.binds.len(), 3);
        assert_eq!(g.binds[0].source, Path::new("/host/rootfs"));
        let dir_name = tmp.path().file_name().unwrap().to_string_lossy();
        assert_eq!(
            g.binds[1].target,
            Path::new(&format!("c1/mounts/{}/{dir_name}", n - 2))
        );
        assert!(g.binds[1].readonly && g.binds[1].is_dir);
        assert!(!g.binds[2].readonly && !g.binds[2].is_dir);
        let out = g.spec.mounts().as_ref().unwrap();
        assert_eq!(
            out[n - 1].source().as_deref(),
            Some(Path::new(&format!(
                "/run/husk/shared/c1/mounts/{}/hosts",
                n - 1
            )))
        );
        // proc and friends are untouched.
        assert_eq!(out[0], spec.mounts().as_ref().unwrap()[0]);
        // Host hooks stay on the host; startContainer hooks go to the guest.
        let hooks = g.spec.hooks().as_ref().unwrap();
        assert!(hooks.prestart().is_none());
        let start = hooks.start_container().as_ref().unwrap();
        assert_eq!(start[0].path(), Path::new("/bin/in-the-rootfs"));
        // The container stays in the VM's network namespace; other
        // namespaces are new ones in the guest.
        let namespaces = g
            .spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap();
        assert_eq!(namespaces.len(), 1, "{namespaces:?}");
        assert_eq!(namespaces[0].typ(), LinuxNamespaceType::Ipc);
        assert!(namespaces[0].path().is_none());
    }

    #[test]
    fn a_missing_or_relative_bind_source_is_named() {
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![MountBuilder::default()
            .destination("/x")
            .typ("bind")
            .source("/nonexistent/husk-src")
            .build()
            .unwrap()]));
        let err = translate(&spec, "c", Path::new("/r")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/husk-src"));
        spec.set_mounts(Some(vec![MountBuilder::default()
            .destination("/x")
            .typ("bind")
            .source("rel")
            .build()
            .unwrap()]));
        assert!(matches!(
            translate(&spec, "c", Path::new("/r")),
            Err(Error::RelativeSource(_))
        ));
    }
}
