//! An OCI bundle: `config.json` and the root file system it names.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// Errors loading a bundle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle directory is missing.
    #[error("bundle {0} does not exist")]
    MissingBundle(PathBuf),
    /// `config.json` is missing.
    #[error("{0} not found")]
    MissingConfig(PathBuf),
    /// `config.json` is unreadable or not a valid OCI spec.
    #[error("{path}: {message}")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The root file system is missing.
    #[error("rootfs {0} does not exist or is not a directory")]
    MissingRootfs(PathBuf),
    /// The process asks for a Linux security module the guest kernel lacks.
    #[error("{field} {value:?}: the container runs in a VM whose kernel has no {lsm}, so it cannot be applied")]
    UnsupportedLsm {
        /// The spec field, e.g. `process.apparmorProfile`.
        field: &'static str,
        /// The profile or label asked for.
        value: String,
        /// The security module.
        lsm: &'static str,
    },
}

/// A loaded bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory (absolute).
    pub dir: PathBuf,
    /// Its spec.
    pub spec: Spec,
    /// The root file system on the host (absolute).
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Loads and checks the bundle at `dir` (relative to the current directory).
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        if !dir.is_dir() {
            return Err(Error::MissingBundle(dir));
        }
        let config = dir.join("config.json");
        let text = match std::fs::read_to_string(&config) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MissingConfig(config))
            }
            Err(e) => {
                return Err(Error::BadConfig {
                    path: config,
                    message: e.to_string(),
                })
            }
        };
        let spec: Spec = serde_json::from_str(&text).map_err(|e| Error::BadConfig {
            path: config.clone(),
            message: e.to_string(),
        })?;
        let root = spec.root().as_ref().ok_or_else(|| Error::BadConfig {
            path: config.clone(),
            message: "no root".into(),
        })?;
        if spec.process().is_none() {
            return Err(Error::BadConfig {
                path: config,
                message: "no process".into(),
            });
        }
        let rootfs = dir.join(root.path());
        if !rootfs.is_dir() {
            return Err(Error::MissingRootfs(rootfs));
        }
        check_lsm(&spec)?;
        Ok(Self { dir, spec, rootfs })
    }
}

/// Refuses an AppArmor profile or SELinux label: the guest kernel has
/// neither module, and running the process unconfined would silently drop
/// the confinement asked for. runc fails the same way on a host without
/// the module; failing here, at load, leaves nothing to undo.
fn check_lsm(spec: &Spec) -> Result<(), Error> {
    let Some(process) = spec.process() else {
        return Ok(());
    };
    let asked = [
        (
            "process.apparmorProfile",
            "AppArmor",
            process.apparmor_profile(),
        ),
        ("process.selinuxLabel", "SELinux", process.selinux_label()),
    ];
    for (field, lsm, value) in asked {
        // An empty string is the spec's "none", as runc reads it.
        if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
            return Err(Error::UnsupportedLsm {
                field,
                value: value.clone(),
                lsm,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_bundle_and_names_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(matches!(
            Bundle::load(&dir.join("nope")),
            Err(Error::MissingBundle(_))
        ));
        assert!(matches!(Bundle::load(dir), Err(Error::MissingConfig(_))));
        std::fs::write(dir.join("config.json"), "{not json").unwrap();
        let err = Bundle::load(dir).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        let spec = serde_json::to_string(&Spec::default()).unwrap();
        std::fs::write(dir.join("config.json"), spec).unwrap();
        assert!(matches!(Bundle::load(dir), Err(Error::MissingRootfs(_))));
        std::fs::create_dir(dir.join("rootfs")).unwrap();
        let bundle = Bundle::load(dir).unwrap();
        assert_eq!(bundle.rootfs, dir.join("rootfs"));
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_selinux_label(Some("system_u:system_r:container_t:s0".into()));
        spec.set_process(Some(process));
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string(&spec).unwrap(),
        )
        .unwrap();
        let err = Bundle::load(dir).unwrap_err().to_string();
        assert!(err.starts_with("process.selinuxLabel"), "{err}");
        assert!(err.contains("SELinux"), "{err}");
    }
}
