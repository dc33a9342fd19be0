//! Mount propagation the spec asks for on a container's mounts (`shared`,
//! `rslave`, `private`, ... among a mount's options), applied after the
//! engine made them.
//!
//! libcontainer folds those flags into the mount call that makes the bind
//! mount, where the kernel ignores them (a propagation change is a call of
//! its own), so a bind asked to be `rshared` stayed private. runc makes the
//! second call; here the agent makes it, from a child that joins the
//! created container's mount namespace (setns on a mount namespace needs a
//! single-threaded caller, which the agent is not), before the container
//! starts.

use std::ffi::CString;
use std::os::fd::AsRawFd;

use libcontainer::oci_spec::runtime::Spec;
use nix::mount::MsFlags;

use crate::error::{AgentError, Result};

/// The propagation flags of one option, if it is one.
fn flags_of(option: &str) -> Option<MsFlags> {
    Some(match option {
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// The spec's mounts with propagation options: (destination, flags) in
/// the spec's order.
pub fn wanted(spec: &Spec) -> Vec<(String, MsFlags)> {
    let mut out = Vec::new();
    for mount in spec.mounts().as_deref().unwrap_or_default() {
        let Some(destination) = mount.destination().to_str() else {
            continue;
        };
        for option in mount.options().as_deref().unwrap_or_default() {
            if let Some(flags) = flags_of(option) {
                out.push((destination.to_owned(), flags));
            }
        }
    }
    out
}

/// Applies `wanted` in the mount namespace of process `pid` (the created
/// container's init, which waits for its start). Must be called where no
/// reaper takes the child's exit (under the engine's spawn guard).
pub fn apply(pid: i32, wanted: &[(String, MsFlags)]) -> Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| AgentError::io(format!("opening the mount namespace of {pid}"), e))?;
    // The container's root: setns leaves the caller at the namespace's
    // bottom mount, under the container's root when the engine moved it
    // there instead of pivoting.
    let root = std::fs::File::open(format!("/proc/{pid}/root"))
        .map_err(|e| AgentError::io(format!("opening the root of {pid}"), e))?;
    let root_fd = root.as_raw_fd();
    // Everything the child touches is made before the fork: after it only
    // async-signal-safe system calls run.
    let targets: Vec<(CString, MsFlags)> = wanted
        .iter()
        .map(|(path, flags)| {
            CString::new(path.as_bytes())
                .map(|c| (c, *flags))
                .map_err(|_| AgentError::InvalidArgument(format!("mount destination {path:?}")))
        })
        .collect::<Result<_>>()?;
    let fd = ns.as_raw_fd();
    // SAFETY: the child only calls setns, mount and _exit, all
    // async-signal-safe, on memory prepared before the fork.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: raw system calls on valid fds and C strings.
            unsafe {
                if libc::setns(fd, libc::CLONE_NEWNS) != 0
                    || libc::fchdir(root_fd) != 0
                    || libc::chroot(c".".as_ptr()) != 0
                {
                    libc::_exit(100);
                }
                for (index, (target, flags)) in targets.iter().enumerate() {
                    let done = libc::mount(
                        std::ptr::null(),
                        target.as_ptr(),
                        std::ptr::null(),
                        flags.bits(),
                        std::ptr::null(),
                    );
                    if done != 0 {
                        // The failing mount's index, for the error.
                        libc::_exit(i32::try_from(index).unwrap_or(99).min(99));
                    }
                }
                libc::_exit(0)
            }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let status = nix::sys::wait::waitpid(child, None)
                .map_err(|e| AgentError::errno("waiting for the propagation helper", e))?;
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                nix::sys::wait::WaitStatus::Exited(_, 100) => Err(AgentError::Engine(format!(
                    "joining the mount namespace of {pid} to set mount propagation"
                ))),
                nix::sys::wait::WaitStatus::Exited(_, index) => {
                    let path = usize::try_from(index)
                        .ok()
                        .and_then(|i| wanted.get(i))
                        .map(|(path, _)| path.as_str())
                        .unwrap_or_default();
                    Err(AgentError::Engine(format!(
                        "setting the propagation of mount {path} failed"
                    )))
                }
                other => Err(AgentError::Engine(format!(
                    "the propagation helper ended with {other:?}"
                ))),
            }
        }
        Err(e) => Err(AgentError::errno("forking the propagation helper", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcontainer::oci_spec::runtime::MountBuilder;

    #[test]
    fn propagation_options_are_picked_per_mount_in_order() {
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![
            MountBuilder::default()
                .destination("/a")
                .options(vec!["rbind".into(), "rshared".into()])
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/b")
                .options(vec!["ro".into()])
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/c")
                .options(vec!["slave".into()])
                .build()
                .unwrap(),
        ]));
        assert_eq!(
            wanted(&spec),
            vec![
                ("/a".to_owned(), MsFlags::MS_SHARED | MsFlags::MS_REC),
                ("/c".to_owned(), MsFlags::MS_SLAVE),
            ]
        );
    }
}
