//! The agent's duties as the guest's PID 1: the base file systems, cgroup v2
//! controllers, and powering off.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use crate::error::{AgentError, Result};

/// Whether this process is the init of its pid namespace.
pub fn is_init() -> bool {
    std::process::id() == 1
}

struct BaseMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const BASE_MOUNTS: &[BaseMount] = &[
    BaseMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    BaseMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    BaseMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    BaseMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    BaseMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    BaseMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    BaseMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
];

/// Moves the root off the initramfs (see [`crate::switch_root`]), mounts
/// /proc, /sys, /dev, /dev/pts, /dev/shm, /run and cgroup2, and enables
/// every cgroup controller for the containers' subtree.
pub fn setup_base_system() -> Result<()> {
    if crate::switch_root::on_initramfs() {
        crate::switch_root::leave_initramfs()?;
    }
    for m in BASE_MOUNTS {
        std::fs::create_dir_all(m.target)
            .map_err(|e| AgentError::io(format!("creating {}", m.target), e))?;
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) => {}
            // The kernel may have mounted devtmpfs already (DEVTMPFS_MOUNT).
            Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => return Err(AgentError::errno(format!("mounting {}", m.target), e)),
        }
    }
    // Programs expect /dev/ptmx to be the devpts instance's multiplexer.
    let _ = std::fs::remove_file("/dev/ptmx");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    enable_controllers(Path::new("/sys/fs/cgroup"))
}

/// Enables every available controller in the root cgroup's subtree.
fn enable_controllers(root: &Path) -> Result<()> {
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))
        .map_err(|e| AgentError::io("reading cgroup.controllers", e))?;
    let wanted: Vec<String> = available
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    // One write per controller, so one the kernel refuses does not cost the others.
    for controller in wanted {
        if let Err(err) = std::fs::write(root.join("cgroup.subtree_control"), &controller) {
            tracing::warn!(controller, %err, "enabling cgroup controller");
        }
    }
    Ok(())
}

/// Flushes file systems and powers the guest off (PID 1), or exits the
/// agent (host tests).
pub fn power_off() -> ! {
    nix::unistd::sync();
    if is_init() {
        // The microVM has no ACPI, so RB_POWER_OFF would only halt the vCPUs.
        // A restart ends the VM instead: with reboot=t QEMU -no-reboot exits
        // on the triple fault; with reboot=k the builtin VMM sees the i8042 reset.
        let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        tracing::error!(?err, "power off failed");
    }
    std::process::exit(0)
}
