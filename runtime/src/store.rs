//! Containers' records on the host: `<root>/<id>/state.json`.
//!
//! `create` makes the directory (its existence is the id's reservation),
//! the CLI verbs and the sandbox process update the record, `delete`
//! removes the directory. Records are replaced atomically (write, then
//! rename), so a reader never sees half a record.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Hooks;
use serde::{Deserialize, Serialize};

use crate::host_process::HostProcess;
use crate::oci::state::{State, Status, OCI_VERSION};
use crate::sandbox_dir::{self, MAX_ID_LEN};

/// The default `--root`.
pub const DEFAULT_ROOT: &str = "/run/husk";
const RECORD: &str = "state.json";

/// Errors of the container store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The id is not a valid container id.
    #[error("invalid container id {0:?}: use 1 to {MAX_ID_LEN} of [A-Za-z0-9_.-], not . or ..")]
    InvalidId(String),
    /// No container has this id.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// A container with this id exists already.
    #[error("container {0} already exists")]
    Exists(String),
    /// A record could not be read, parsed or written.
    #[error("container state {path}: {message}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// What husk keeps about one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The container id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The root file system on the host.
    pub rootfs: PathBuf,
    /// When `create` began (RFC 3339).
    pub created: String,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The status last recorded; `stopped` is derived from the init proxy.
    pub status: Status,
    /// The host process standing for the container's init (its `--pid-file` pid).
    pub init: Option<HostProcess>,
    /// The sandbox process that owns the VM.
    pub sandbox: Option<HostProcess>,
    /// The sandbox's VM directory (sockets, share, console).
    pub sandbox_dir: PathBuf,
    /// The hooks of the spec, run on the host.
    #[serde(default)]
    pub hooks: Option<Hooks>,
}

impl Record {
    /// The status now: a container whose init proxy has ended is stopped.
    pub fn current_status(&self) -> Status {
        match self.status {
            Status::Creating => Status::Creating,
            _ if !self.init.is_some_and(|p| p.is_alive()) => Status::Stopped,
            other => other,
        }
    }

    /// The hybrid vsock socket through which the sandbox's agent is reached.
    pub fn agent_socket(&self) -> PathBuf {
        crate::sandbox_dir::vsock_socket_in(&self.sandbox_dir)
    }

    /// The OCI state document.
    pub fn state(&self) -> State {
        let status = self.current_status();
        let pid = match status {
            Status::Stopped => 0,
            _ => self.init.map_or(0, |p| p.pid),
        };
        State {
            oci_version: OCI_VERSION.into(),
            id: self.id.clone(),
            status,
            pid,
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: owner_name(),
            annotations: self.annotations.clone(),
        }
    }
}

/// The containers under one `--root`.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of container `id`.
    pub fn dir(&self, id: &str) -> Result<PathBuf, Error> {
        check_id(id)?;
        Ok(self.root.join(id))
    }

    /// Reserves `id`: creates its directory, failing if it exists.
    pub fn reserve(&self, id: &str) -> Result<PathBuf, Error> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.dir(id)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.root)
            .map_err(|e| io_error(&self.root, e))?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::Exists(id.into())),
            Err(e) => Err(io_error(&dir, e)),
        }
    }

    /// Writes `record` (atomically).
    pub fn save(&self, record: &Record) -> Result<(), Error> {
        let dir = self.dir(&record.id)?;
        let path = dir.join(RECORD);
        let tmp = dir.join(".state.json.tmp");
        let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let write = || -> io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| io_error(&path, e))
    }

    /// Reads the record of `id`.
    pub fn load(&self, id: &str) -> Result<Record, Error> {
        let dir = self.dir(id)?;
        if !dir.is_dir() {
            return Err(Error::NotFound(id.into()));
        }
        let path = dir.join(RECORD);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            // Reserved, but `create` has not written the record yet (or died
            // before it did): nothing to show but its existence.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Io {
                    path,
                    message: "no state recorded (create did not finish)".into(),
                })
            }
            Err(e) => return Err(io_error(&path, e)),
        };
        serde_json::from_slice(&data).map_err(|e| Error::Io {
            path,
            message: e.to_string(),
        })
    }

    /// The ids of every container, sorted.
    pub fn ids(&self) -> Result<Vec<String>, Error> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&self.root, e)),
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| check_id(id).is_ok() && self.root.join(id).join(RECORD).exists())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Removes the directory of `id`; a missing one is fine.
    pub fn remove(&self, id: &str) -> Result<(), Error> {
        let dir = self.dir(id)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&dir, e)),
        }
    }
}

/// Checks a container id: the sandbox directory's rules.
pub fn check_id(id: &str) -> Result<(), Error> {
    sandbox_dir::validate_id(id).map_err(|_| Error::InvalidId(id.into()))
}

fn io_error(path: &Path, e: io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The name of the user running husk (runc reports the owner so).
fn owner_name() -> String {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            id: id.into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2026-01-01T00:00:00Z".into(),
            annotations: HashMap::new(),
            status: Status::Created,
            init: HostProcess::of(std::process::id() as i32),
            sandbox: None,
            sandbox_dir: "/run/husk/vm/x".into(),
            hooks: None,
        }
    }

    #[test]
    fn reserve_save_load_list_remove() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path().join("r"));
        assert!(store.ids().unwrap().is_empty());
        store.reserve("b").unwrap();
        store.reserve("a").unwrap();
        assert!(matches!(store.reserve("a"), Err(Error::Exists(_))));
        store.save(&record("a")).unwrap();
        store.save(&record("b")).unwrap();
        assert_eq!(store.load("a").unwrap(), record("a"));
        assert_eq!(store.ids().unwrap(), vec!["a", "b"]);
        store.remove("a").unwrap();
        assert!(matches!(store.load("a"), Err(Error::NotFound(_))));
        store.remove("a").unwrap();
    }

    #[test]
    fn bad_ids_are_refused_before_touching_the_disk() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        for id in ["", ".", "..", "a/b", "../x", &"x".repeat(65)] {
            assert!(
                matches!(store.reserve(id), Err(Error::InvalidId(_))),
                "{id:?}"
            );
        }
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_container_whose_init_proxy_ended_is_stopped_with_pid_0() {
        let mut r = record("c");
        assert_eq!(r.current_status(), Status::Created);
        assert_eq!(r.state().pid, std::process::id() as i32);
        r.init = r.init.map(|p| HostProcess {
            start_time: p.start_time + 1,
            ..p
        });
        assert_eq!(r.current_status(), Status::Stopped);
        let state = r.state();
        assert_eq!(state.pid, 0);
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["status"], "stopped");
        assert_eq!(json["ociVersion"], OCI_VERSION);
    }
}
