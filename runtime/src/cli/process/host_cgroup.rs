//! The host memory cgroup of a container's init proxy, through which a
//! guest OOM kill reaches containerd.
//!
//! containerd's runc shim learns of OOM kills from the host cgroup of the
//! pid in `--pid-file` (an eventfd on `memory.oom_control` under cgroup v1,
//! `memory.events` under v2), never from the runtime. So `create` puts the
//! init proxy in a memory cgroup of its own, and when the agent reports
//! that the container's init was OOM-killed in the guest, the proxy lowers
//! that cgroup's limit and touches memory until the host kernel OOM-kills
//! it: a real OOM event on the container's host cgroup, and exit status
//! 137, which is what Docker shows as `OOMKilled`.

use std::io;
use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The memory cgroup of one container's init proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCgroup {
    path: PathBuf,
    v2: bool,
}

impl HostCgroup {
    /// The cgroup for container `id` on this host, if the host has a memory
    /// controller (v1, or v2 with `memory` enabled at the root).
    pub fn for_container(id: &str) -> Option<Self> {
        let root = Path::new(CGROUP_ROOT);
        if root.join("cgroup.controllers").exists() {
            let controllers = std::fs::read_to_string(root.join("cgroup.subtree_control")).ok()?;
            controllers
                .split_whitespace()
                .any(|c| c == "memory")
                .then(|| Self {
                    path: root.join("husk").join(id),
                    v2: true,
                })
        } else {
            let memory = root.join("memory");
            memory.join("memory.limit_in_bytes").exists().then(|| Self {
                path: memory.join("husk").join(id),
                v2: false,
            })
        }
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the cgroup and moves `pid` into it.
    pub fn enter(&self, pid: i32) -> io::Result<()> {
        if let (true, Some(parent)) = (self.v2, self.path.parent()) {
            std::fs::create_dir_all(parent)?;
            // Children of husk/ need the memory controller handed down.
            std::fs::write(parent.join("cgroup.subtree_control"), "+memory")?;
        }
        std::fs::create_dir_all(&self.path)?;
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }

    /// Removes the cgroup (it must be empty); a missing one is fine.
    pub fn remove(&self) {
        match std::fs::remove_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(cgroup = %self.path.display(), "removing the proxy's cgroup: {e}")
            }
        }
    }

    /// Called by the proxy inside this cgroup: lowers the limit to just
    /// above its usage and touches memory until the kernel OOM-kills it.
    /// Returns only if that could not be arranged.
    pub fn die_of_oom(&self) -> io::Error {
        let (usage_file, limit_file) = if self.v2 {
            ("memory.current", "memory.max")
        } else {
            ("memory.usage_in_bytes", "memory.limit_in_bytes")
        };
        let usage: u64 = match std::fs::read_to_string(self.path.join(usage_file)) {
            Ok(text) => text.trim().parse().unwrap_or(0),
            Err(e) => return e,
        };
        let limit = usage + (2 << 20);
        if let Err(e) = std::fs::write(self.path.join(limit_file), limit.to_string()) {
            return e;
        }
        // Without swap, anonymous memory cannot be reclaimed: touching
        // more than the limit allows ends in the memory cgroup's OOM kill.
        let mut hog: Vec<Vec<u8>> = Vec::new();
        for _ in 0..1024 {
            let mut block = vec![0u8; 1 << 20];
            for i in (0..block.len()).step_by(4096) {
                block[i] = 1;
            }
            hog.push(std::hint::black_box(block));
        }
        io::Error::other("touched 1 GiB inside a lowered memory limit and lived")
    }
}
