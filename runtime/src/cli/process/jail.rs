//! What the sandbox process gives up before it starts any thread.
//!
//! Capabilities, the bounding set and `no_new_privs` are per thread and
//! inherited by threads and children created afterwards, so this runs
//! first thing in the sandbox process, while it has one thread: everything
//! it starts later (the tokio workers, the VMM's vCPU and device threads,
//! QEMU) holds at most [`KEPT`], and no exec can raise that again (set-uid
//! files and file capabilities are ignored under `no_new_privs`).

use std::collections::HashSet;

use caps::{CapSet, Capability};

/// What the sandbox process still uses, and why:
/// - `SYS_ADMIN`: bind-mounting the container's rootfs and volumes into the
///   share, and unmounting them when the sandbox goes down;
/// - `NET_ADMIN`: the taps and the tc redirection between veth and tap;
/// - `CHOWN`, `DAC_OVERRIDE`, `DAC_READ_SEARCH`, `FOWNER`, `FSETID`,
///   `SETUID`, `SETGID`, `MKNOD`: the virtio-fs server acts on the share as
///   the guest's users (files created as the caller, any owner's files);
/// - `SYS_CHROOT`: each virtio-fs thread chroots into the share;
/// - `KILL`: ending QEMU and the sandbox's own children on the way down;
/// - `SYS_RESOURCE`: QEMU and the VMM may raise the fd and memlock limits.
pub const KEPT: [Capability; 13] = [
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_MKNOD,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_SYS_RESOURCE,
];

/// Why the process could not be restricted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// More than one thread: what follows would bind this thread only.
    #[error("the sandbox process has {0} threads before its restriction")]
    Threads(usize),
    /// A capability call failed.
    #[error("capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
}

/// Reduces the calling (only) thread to [`KEPT`] in every capability set,
/// including the bounding set, clears the ambient and inheritable sets and
/// sets `no_new_privs`.
pub fn restrict() -> Result<(), Error> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 {
        return Err(Error::Threads(threads));
    }
    let kept: HashSet<Capability> = KEPT.into_iter().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes
    // with the permitted set below.
    for cap in caps::read(None, CapSet::Bounding)? {
        if !kept.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let keep = |set: CapSet| -> Result<(), Error> {
        let now = caps::read(None, set)?;
        caps::set(None, set, &now.intersection(&kept).copied().collect())?;
        Ok(())
    };
    keep(CapSet::Effective)?;
    keep(CapSet::Permitted)?;
    // SAFETY: a plain prctl on the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `restrict` in a forked child (it cannot be undone) and returns
    /// the child's `/proc/self/status` lines, or the error.
    fn restricted_status() -> Result<String, String> {
        let (read, write) = nix::unistd::pipe().unwrap();
        let (mut read, write) = (std::fs::File::from(read), std::fs::File::from(write));
        // SAFETY: the child only makes syscalls, writes to the pipe and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            use std::io::Write;
            let mut write = write;
            // The test harness runs tests on threads; the child has one.
            let out = match restrict() {
                Ok(()) => std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
                Err(e) => format!("error: {e}"),
            };
            let _ = write.write_all(out.as_bytes());
            // SAFETY: ends the child without the parent's atexit handlers.
            unsafe { libc::_exit(0) };
        }
        drop(write);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut read, &mut out).unwrap();
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        match out.strip_prefix("error: ") {
            Some(e) => Err(e.to_owned()),
            None => Ok(out),
        }
    }

    fn field(status: &str, name: &str) -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let value = line.split_whitespace().nth(1).unwrap();
        u64::from_str_radix(value, 16).unwrap_or_else(|_| value.parse().unwrap())
    }

    #[test]
    fn the_sandbox_process_keeps_only_what_it_uses_and_sets_no_new_privs() {
        if !caps::has_cap(None, CapSet::Permitted, Capability::CAP_SETPCAP).unwrap_or(false) {
            eprintln!("skipped: needs CAP_SETPCAP (run as root)");
            return;
        }
        let status = restricted_status().unwrap();
        let kept: u64 = KEPT.iter().map(Capability::bitmask).sum();
        for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(field(&status, set) & !kept, 0, "{set} {status}");
        }
        let sys_admin = Capability::CAP_SYS_ADMIN.bitmask();
        assert_ne!(field(&status, "CapEff:") & sys_admin, 0, "{status}");
        assert_eq!(field(&status, "CapInh:"), 0);
        assert_eq!(field(&status, "CapAmb:"), 0);
        assert_eq!(field(&status, "NoNewPrivs:"), 1);
    }
}
