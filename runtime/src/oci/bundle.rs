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
        Ok(Self { dir, spec, rootfs })
    }
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
    }
}
