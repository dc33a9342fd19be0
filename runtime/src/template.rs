//! Sandbox templates on disk: what a template is keyed by, where it lives,
//! and the lock that keeps two sandboxes from making (or removing) one at
//! the same time.
//!
//! A template is a snapshot ([`SnapshotPaths`]) of a guest booted once
//! with its agent idle. It is only good for a sandbox whose guest would
//! have booted the same way, so its key names everything the saved guest
//! depends on ([`TemplateKey`]); the directory is
//! `<path>/<16 hex digits of the key's SHA-256>/`, and the full key is
//! saved in the state file, where the VMM checks it on load (so a hash
//! collision can only cost a cold boot, never a wrong guest).
//!
//! Making one goes through `<path>/<hash>.tmp/` renamed to the final name
//! under an exclusive `flock` on `<path>/<hash>.lock`: readers see either
//! no template or a whole one. Restoring holds the same lock shared while
//! the VMM reads the files, and a template that failed is removed under
//! the exclusive lock only if it is still the one that failed.
//!
//! A template that could not be made, or failed to restore, leaves
//! `<path>/<hash>.failed` (its reason): for a while after that, sandboxes
//! of the key boot cold without trying again ([`Template::recent_failure`]),
//! so a host where templates cannot work does not pay a template VM's boot
//! on top of every cold boot.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_vmm::machine::SnapshotPaths;
use sha2::{Digest, Sha256};

use crate::hypervisor::VmSpec;

/// Suffix of a template being made.
const MAKING_SUFFIX: &str = ".tmp";
/// Suffix of a template's lock file.
const LOCK_SUFFIX: &str = ".lock";
/// Suffix of the file saying why the template last failed.
const FAILED_SUFFIX: &str = ".failed";
/// The most of a failure's reason kept (and read back).
const FAILED_REASON_MAX: usize = 1024;

/// How long after a template failed (to be made, or to restore) sandboxes
/// of its key boot cold without trying it again: a host where templates
/// cannot work would otherwise pay a template VM's boot on top of every
/// sandbox's cold boot.
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(300);

/// Everything a saved guest depends on, as one line per item. Two specs
/// with the same key boot the same guest up to the point the template is
/// taken (the agent's ready line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateKey(String);

impl TemplateKey {
    /// The key of a guest booted for `spec` with the command line
    /// `cmdline` (the backend's whole line: husk's words and the
    /// configured ones). The kernel and initrd count by path, size, mtime,
    /// device and inode: hashing their contents (tens of MiB) would cost
    /// every sandbox start more than a restore saves on a slow disk, and a
    /// rebuilt or replaced file changes its mtime or inode. The husk binary
    /// counts the same way, so a rebuilt VMM or device model never restores
    /// a template an older build saved.
    pub fn new(spec: &VmSpec, cmdline: &str) -> io::Result<Self> {
        let mut key = String::from("husk-template 1\n");
        let _ = writeln!(key, "husk {}", env!("CARGO_PKG_VERSION"));
        // By /proc/self/exe, not by the path it names: stat follows the
        // link to the running file itself, where that path may not resolve
        // (a sandbox process in its own mount namespace under a chroot, as
        // in the nested layer's L1).
        for (what, path) in [
            ("binary", Path::new("/proc/self/exe")),
            ("kernel", spec.kernel.as_path()),
            ("initrd", spec.initrd.as_path()),
        ] {
            let _ = writeln!(key, "{what} {}", file_identity(path)?);
        }
        let _ = writeln!(key, "vcpus {}", spec.vcpus);
        let _ = writeln!(key, "memory_mib {}", spec.memory_mib);
        let _ = writeln!(key, "nics {}", spec.nics.len());
        // The guest's driver takes each NIC's MTU (its maximum, too) from
        // the device at probe; the MAC it is given afterwards.
        for (i, nic) in spec.nics.iter().enumerate() {
            let _ = writeln!(key, "nic {i} mtu {}", nic.config.mtu);
        }
        let _ = writeln!(key, "cmdline {cmdline}");
        Ok(Self(key))
    }

    /// The key's text, as saved in (and checked against) the state file.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The template directory's name: 16 hex digits of the key's SHA-256.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `<path> size=<bytes> mtime=<s>.<ns> dev=<dev> ino=<inode>`.
fn file_identity(path: &Path) -> io::Result<String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(format!(
        "{} size={} mtime={}.{:09} dev={} ino={}",
        path.display(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.dev(),
        meta.ino()
    ))
}

/// One template under the configured path: its key and its files.
#[derive(Debug, Clone)]
pub struct Template {
    root: PathBuf,
    key: TemplateKey,
    hash: String,
}

/// Which saved state a restore read: a template is removed only if it is
/// still that one (another sandbox may have remade it since).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateId {
    dev: u64,
    ino: u64,
    /// With the inode, since a removed file's inode may be reused.
    mtime_ns: i128,
}

/// A held `flock`; released when dropped (the file closes).
#[derive(Debug)]
pub struct TemplateLock(#[allow(dead_code)] File);

impl Template {
    /// The template for `key` under `root` (the configured `snapshot.path`).
    pub fn new(root: &Path, key: TemplateKey) -> Self {
        let hash = key.hash();
        Self {
            root: root.to_owned(),
            key,
            hash,
        }
    }

    /// The key.
    pub fn key(&self) -> &TemplateKey {
        &self.key
    }

    /// The short hash naming the template's directory.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The finished template's files.
    pub fn paths(&self) -> SnapshotPaths {
        SnapshotPaths::new(self.root.join(&self.hash))
    }

    /// Where the template is written before it is renamed into place.
    pub fn making_paths(&self) -> SnapshotPaths {
        SnapshotPaths::new(self.root.join(format!("{}{MAKING_SUFFIX}", self.hash)))
    }

    /// Whether a finished template is there (says nothing of its validity).
    pub fn exists(&self) -> bool {
        self.paths().exists()
    }

    /// The identity of the finished template's state file, if there is one.
    pub fn state_id(&self) -> Option<StateId> {
        let meta = std::fs::metadata(self.paths().state()).ok()?;
        Some(StateId {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }

    /// Takes the template's lock, exclusive (to make or remove it) or
    /// shared (to read it); blocks until it is had. Creates the templates'
    /// directory (mode 0700: a template holds a guest's memory) if needed.
    pub fn lock(&self, exclusive: bool) -> io::Result<TemplateLock> {
        self.create_root()?;
        let path = self.root.join(format!("{}{LOCK_SUFFIX}", self.hash));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            // SAFETY: `file` is open for the whole call.
            if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), op) } == 0 {
                return Ok(TemplateLock(file));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Moves a template made at [`making_paths`](Self::making_paths) into
    /// place (call with the exclusive lock held), and makes the rename
    /// durable.
    pub fn publish(&self) -> io::Result<()> {
        std::fs::rename(self.making_paths().dir, self.paths().dir)?;
        remove_file(&self.failed_path())?;
        File::open(&self.root)?.sync_all()
    }

    /// Creates the templates' directory if needed, mode 0700: a template
    /// holds a guest's memory.
    fn create_root(&self) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
    }

    fn failed_path(&self) -> PathBuf {
        self.root.join(format!("{}{FAILED_SUFFIX}", self.hash))
    }

    /// Records that the template could not be made or restored, and why
    /// (one line, at most 1 KiB kept); see [`recent_failure`](Self::recent_failure).
    pub fn record_failure(&self, why: &str) -> io::Result<()> {
        self.create_root()?;
        let line = why.split_whitespace().collect::<Vec<_>>().join(" ");
        let cut = (0..=line.len().min(FAILED_REASON_MAX))
            .rev()
            .find(|&i| line.is_char_boundary(i))
            .unwrap_or(0);
        std::fs::write(self.failed_path(), &line[..cut])
    }

    /// Why the template last failed, and how long ago, if that was less
    /// than `within` ago: sandboxes boot cold meanwhile instead of trying
    /// again.
    pub fn recent_failure(&self, within: Duration) -> Option<(String, Duration)> {
        read_failure(&self.failed_path(), within)
    }

    /// Removes what a maker that died left half made (call with the
    /// exclusive lock held).
    pub fn remove_unfinished(&self) -> io::Result<()> {
        remove_dir(&self.making_paths().dir)
    }

    /// Removes the template if its state file is still `failed` (the one a
    /// restore refused) and records `why` ([`record_failure`](Self::record_failure)),
    /// under the exclusive lock: sandboxes boot cold for a while, then one
    /// makes a new template. Does neither if another sandbox remade it
    /// meanwhile. Returns whether it removed anything.
    pub fn discard(&self, failed: Option<StateId>, why: &str) -> io::Result<bool> {
        let _lock = self.lock(true)?;
        if failed.is_some() && self.state_id() != failed {
            return Ok(false);
        }
        let dir = self.paths().dir;
        let removed = dir.exists();
        if removed {
            remove_dir(&dir)?;
        }
        self.record_failure(why)?;
        Ok(removed)
    }
}

/// The failure recorded at `path` (its reason and age), if younger than
/// `within`.
fn read_failure(path: &Path, within: Duration) -> Option<(String, Duration)> {
    let age = std::fs::metadata(path)
        .ok()?
        .modified()
        .ok()?
        .elapsed()
        .ok()?;
    if age >= within {
        return None;
    }
    let mut why = Vec::new();
    File::open(path)
        .ok()?
        .take(FAILED_REASON_MAX as u64)
        .read_to_end(&mut why)
        .ok()?;
    Some((String::from_utf8_lossy(&why).into_owned(), age))
}

/// The templates under `root` held back after a failure (see
/// [`RETRY_FAILED_AFTER`]): each one's hash, why it failed and how long
/// ago, sorted by hash.
pub fn held_back(root: &Path) -> Vec<(String, String, Duration)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let hash = name.strip_suffix(FAILED_SUFFIX)?.to_owned();
            let (why, age) = read_failure(&e.path(), RETRY_FAILED_AFTER)?;
            Some((hash, why, age))
        })
        .collect();
    found.sort();
    found
}

fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The finished templates under `root` (their directory names), sorted;
/// none when `root` does not exist.
pub fn list(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| SnapshotPaths::new(e.path()).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.ends_with(MAKING_SUFFIX))
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::test_support;

    fn spec(root: &Path) -> VmSpec {
        let spec = test_support::spec(root);
        std::fs::write(&spec.kernel, b"kernel").unwrap();
        std::fs::write(&spec.initrd, b"initrd").unwrap();
        spec
    }

    #[test]
    fn the_key_names_what_the_guest_depends_on() {
        let root = tempfile::tempdir().unwrap();
        let s = spec(root.path());
        let key = TemplateKey::new(&s, "console=ttyS0 quiet").unwrap();
        for word in [
            "husk ",
            "binary ",
            &format!("kernel {}", s.kernel.display()),
            &format!("initrd {}", s.initrd.display()),
            "vcpus ",
            "memory_mib ",
            "nics 0",
            "cmdline console=ttyS0 quiet",
        ] {
            assert!(key.as_str().contains(word), "{word:?} in {key:?}");
        }
        assert_eq!(key.hash().len(), 16);
        assert_eq!(key, TemplateKey::new(&s, "console=ttyS0 quiet").unwrap());

        let mut other = s.clone();
        other.vcpus += 1;
        let differs = |spec: &VmSpec, cmdline: &str| {
            TemplateKey::new(spec, cmdline).unwrap().hash() != key.hash()
        };
        assert!(differs(&other, "console=ttyS0 quiet"));
        let mut other = s.clone();
        other.memory_mib *= 2;
        assert!(differs(&other, "console=ttyS0 quiet"));
        assert!(differs(&s, "console=ttyS0"));
        // The NIC count and each NIC's MTU (the guest's driver keeps both).
        if let (Some(a), Some(b)) = (test_support::nic(1, 1500), test_support::nic(2, 9000)) {
            let mut one = s.clone();
            one.nics.push(a.clone());
            assert!(differs(&one, "console=ttyS0 quiet"));
            let one_key = TemplateKey::new(&one, "console=ttyS0 quiet").unwrap();
            assert!(one_key.as_str().contains("nics 1\nnic 0 mtu 1500\n"));
            let mut jumbo = s.clone();
            jumbo.nics.push(b.clone());
            assert_ne!(
                TemplateKey::new(&jumbo, "console=ttyS0 quiet").unwrap(),
                one_key
            );
            // Another MAC (every sandbox has its own) is the same template.
            let mut other_mac = one.clone();
            other_mac.nics[0].config.mac[5] = 9;
            assert_eq!(
                TemplateKey::new(&other_mac, "console=ttyS0 quiet").unwrap(),
                one_key
            );
            one.nics.push(b);
            assert!(differs(&one, "console=ttyS0 quiet"));
        }
        // A rebuilt initrd (same path, new inode and mtime).
        std::fs::remove_file(&s.initrd).unwrap();
        std::fs::write(&s.initrd, b"initrd 2").unwrap();
        assert!(differs(&s, "console=ttyS0 quiet"));
        std::fs::remove_file(&s.kernel).unwrap();
        let err = TemplateKey::new(&s, "").unwrap_err();
        assert!(err.to_string().contains("vmlinux"), "{err}");
    }

    /// Writes a fake finished template at `paths`.
    fn fake(paths: &SnapshotPaths) {
        std::fs::create_dir_all(&paths.dir).unwrap();
        std::fs::write(paths.memory(), b"m").unwrap();
        std::fs::write(paths.state(), b"s").unwrap();
    }

    #[test]
    fn a_template_appears_whole_and_is_listed_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("snapshots");
        let t = Template::new(&root, TemplateKey("k".into()));
        assert!(list(&root).is_empty());
        let lock = t.lock(true).unwrap();
        fake(&t.making_paths());
        assert!(!t.exists());
        assert!(list(&root).is_empty(), "{:?}", list(&root));
        t.publish().unwrap();
        drop(lock);
        assert!(t.exists());
        assert_eq!(list(&root), vec![t.hash().to_owned()]);
        assert!(!t.making_paths().dir.exists());

        // Leftovers of a maker that died are removed.
        fake(&t.making_paths());
        t.remove_unfinished().unwrap();
        assert!(!t.making_paths().dir.exists());
        t.remove_unfinished().unwrap();
    }

    #[test]
    fn a_failure_is_remembered_for_a_while_and_cleared_by_a_new_template() {
        let dir = tempfile::tempdir().unwrap();
        let t = Template::new(&dir.path().join("snapshots"), TemplateKey("k".into()));
        let minute = Duration::from_secs(60);
        assert!(t.recent_failure(minute).is_none());
        let long = format!("booting its VM:\n{}é", "x".repeat(2000));
        t.record_failure(&long).unwrap();
        let (why, age) = t.recent_failure(minute).expect("a recent failure");
        assert!(why.starts_with("booting its VM: xxx"), "{why}");
        assert!(why.len() <= FAILED_REASON_MAX && !why.contains('\n'));
        assert!(age < minute);
        assert!(
            t.recent_failure(Duration::ZERO).is_none(),
            "an old one counts for nothing"
        );
        // Another key's template is not held back.
        let other = Template::new(&dir.path().join("snapshots"), TemplateKey("other".into()));
        assert!(other.recent_failure(minute).is_none());
        let listed = held_back(&dir.path().join("snapshots"));
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].0, t.hash());
        assert_eq!(listed[0].1, why);
        let lock = t.lock(true).unwrap();
        fake(&t.making_paths());
        t.publish().unwrap();
        drop(lock);
        assert!(t.recent_failure(minute).is_none(), "a template made since");
    }

    #[test]
    fn only_the_template_that_failed_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let t = Template::new(dir.path(), TemplateKey("k".into()));
        fake(&t.paths());
        let failed = t.state_id();
        assert!(failed.is_some());
        // Another sandbox remade it meanwhile: a new state file (the old
        // one kept elsewhere, so its inode is not simply reused).
        std::fs::rename(t.paths().state(), dir.path().join("old")).unwrap();
        std::fs::write(t.paths().state(), b"new").unwrap();
        let minute = Duration::from_secs(60);
        assert!(!t.discard(failed, "old").unwrap());
        assert!(t.exists());
        assert!(
            t.recent_failure(minute).is_none(),
            "not the template that failed"
        );
        assert!(t.discard(t.state_id(), "checksum").unwrap());
        assert!(!t.paths().dir.exists());
        assert_eq!(t.recent_failure(minute).unwrap().0, "checksum");
        assert!(!t.discard(None, "again").unwrap(), "nothing left to remove");
    }

    #[test]
    fn an_exclusive_lock_waits_for_a_shared_one() {
        let dir = tempfile::tempdir().unwrap();
        let t = Template::new(dir.path(), TemplateKey("k".into()));
        let shared = t.lock(false).unwrap();
        let also_shared = t.lock(false).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t2 = t.clone();
        let waiter = std::thread::spawn(move || {
            let _lock = t2.lock(true).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(shared);
        drop(also_shared);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the exclusive lock once the readers left");
        waiter.join().unwrap();
    }
}
