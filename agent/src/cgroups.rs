//! Cgroup operations on a container: statistics, resource updates, process
//! lists and OOM-kill events.
//!
//! In the guest the agent mounts cgroup v2; in host tests the host's own
//! hierarchy (v1 here) is used through the same `libcgroups` managers.

use std::path::{Path, PathBuf};

use husk_protocol::agent::{CpuStats, IoStats, MemoryStats, PidsStats, StatsContainerResponse};
use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt,
};
use libcontainer::oci_spec::runtime::LinuxResources;
use tokio::sync::mpsc;

use crate::engine::cgroup_path;
use crate::error::{AgentError, Result};

/// Where the agent mounts cgroup v2 in the guest.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn manager(container_id: &str) -> Result<AnyCgroupManager> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: cgroup_path(container_id),
        systemd_cgroup: false,
        container_name: container_id.to_owned(),
    })
    .map_err(|e| AgentError::Cgroup(e.to_string()))
}

fn is_unified() -> bool {
    matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified))
}

/// The container's cgroup statistics.
pub fn stats(container_id: &str) -> Result<StatsContainerResponse> {
    let stats = manager(container_id)?
        .stats()
        .map_err(|e| AgentError::Cgroup(e.to_string()))?;
    // cgroup v2 reports CPU time in microseconds, v1 in nanoseconds.
    let to_usec = |value: u64| if is_unified() { value } else { value / 1000 };
    let mut response = StatsContainerResponse::new();
    response.cpu = Some(CpuStats {
        usage_usec: to_usec(stats.cpu.usage.usage_total),
        user_usec: to_usec(stats.cpu.usage.usage_user),
        system_usec: to_usec(stats.cpu.usage.usage_kernel),
        nr_periods: stats.cpu.throttling.periods,
        nr_throttled: stats.cpu.throttling.throttled_periods,
        throttled_usec: to_usec(stats.cpu.throttling.throttled_time),
        ..Default::default()
    })
    .into();
    response.memory = Some(MemoryStats {
        usage_bytes: stats.memory.memory.usage,
        max_usage_bytes: stats.memory.memory.max_usage,
        limit_bytes: stats.memory.memory.limit,
        swap_usage_bytes: stats.memory.memswap.usage,
        cache_bytes: stats.memory.cache,
        oom_kills: oom_kills(&unified_dir(container_id)).unwrap_or(0),
        ..Default::default()
    })
    .into();
    response.pids = Some(PidsStats {
        current: stats.pids.current,
        limit: stats.pids.limit,
        ..Default::default()
    })
    .into();
    let sum = |entries: &[libcgroups::stats::BlkioDeviceStat], op: &str| -> u64 {
        entries
            .iter()
            .filter(|e| {
                e.op_type
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case(op))
            })
            .map(|e| e.value)
            .sum()
    };
    response.io = Some(IoStats {
        read_bytes: sum(&stats.blkio.service_bytes, "read"),
        write_bytes: sum(&stats.blkio.service_bytes, "write"),
        read_ops: sum(&stats.blkio.serviced, "read"),
        write_ops: sum(&stats.blkio.serviced, "write"),
        ..Default::default()
    })
    .into();
    Ok(response)
}

/// Applies new OCI resources to the container's cgroup.
pub fn update(container_id: &str, resources: &LinuxResources) -> Result<()> {
    manager(container_id)?
        .apply(&ControllerOpt {
            resources,
            disable_oom_killer: resources
                .memory()
                .as_ref()
                .and_then(|m| m.disable_oom_killer())
                .unwrap_or(false),
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| AgentError::Cgroup(e.to_string()))
}

/// Every process in the container's cgroup.
pub fn pids(container_id: &str) -> Result<Vec<i32>> {
    let pids = manager(container_id)?
        .get_all_pids()
        .map_err(|e| AgentError::Cgroup(e.to_string()))?;
    Ok(pids.into_iter().map(|p| p.as_raw()).collect())
}

/// Removes the agent's `/husk` parent cgroup once no container is left in
/// it (on cgroup v1, in every hierarchy). Busy directories stay.
pub fn remove_parent() {
    let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) else {
        return;
    };
    let mut dirs = vec![Path::new(CGROUP_ROOT).join("husk")];
    dirs.extend(entries.flatten().map(|e| e.path().join("husk")));
    for dir in dirs {
        // rmdir removes only an empty cgroup; anything else is left alone.
        let _ = std::fs::remove_dir(dir);
    }
}

/// The container's cgroup v2 directory.
fn unified_dir(container_id: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(format!("husk/{container_id}"))
}

/// The `oom_kill` count of a cgroup v2 `memory.events` file.
fn oom_kills(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("memory.events")).ok()?;
    parse_oom_kills(&text)
}

fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// Watches a container's cgroup v2 `memory.events` and sends the container
/// id each time the kernel OOM-kills one of its processes. Ends when the
/// cgroup is removed. Does nothing on cgroup v1 (host tests).
pub fn watch_oom(container_id: String, events: mpsc::UnboundedSender<String>) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    if !is_unified() {
        return;
    }
    let dir = unified_dir(&container_id);
    let file = dir.join("memory.events");
    let inotify = match Inotify::init(InitFlags::IN_CLOEXEC) {
        Ok(inotify) => inotify,
        Err(err) => {
            tracing::warn!(%err, "inotify for OOM events");
            return;
        }
    };
    if let Err(err) = inotify.add_watch(&file, AddWatchFlags::IN_MODIFY) {
        tracing::warn!(%err, path = %file.display(), "watching OOM events");
        return;
    }
    std::thread::Builder::new()
        .name(format!("oom-{container_id}"))
        .spawn(move || {
            let mut seen = oom_kills(&dir).unwrap_or(0);
            loop {
                let Ok(batch) = inotify.read_events() else {
                    return;
                };
                if batch
                    .iter()
                    .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
                {
                    return;
                }
                let Some(now) = oom_kills(&dir) else { return };
                if now > seen {
                    seen = now;
                    if events.send(container_id.clone()).is_err() {
                        return;
                    }
                }
            }
        })
        .map(drop)
        .unwrap_or_else(|err| tracing::warn!(%err, "starting OOM watcher"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_events() {
        let text = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(text), Some(1));
        assert_eq!(parse_oom_kills("low 0\n"), None);
        assert_eq!(parse_oom_kills("oom_kill x\n"), None);
    }
}
