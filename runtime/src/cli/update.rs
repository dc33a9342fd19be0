//! `update`: new resource limits for a running container.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use husk_protocol::agent::UpdateContainerRequest;
use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};

use super::lifecycle::{block_on, connect};
use super::Global;
use crate::agent_client::{agent_message, ctx};
use crate::oci::state::Status;

/// `update`'s flags (runc's).
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// linux.resources as JSON, from a file or `-` for stdin.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit (bytes, or with k/m/g).
    #[arg(short, long)]
    pub memory: Option<String>,
    /// Memory plus swap limit (-1: unlimited).
    #[arg(long = "memory-swap")]
    pub memory_swap: Option<String>,
    /// Memory soft limit.
    #[arg(long = "memory-reservation")]
    pub memory_reservation: Option<String>,
    /// CPU shares (relative weight).
    #[arg(long = "cpu-shares")]
    pub cpu_shares: Option<u64>,
    /// CPU CFS period (µs).
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota (µs).
    #[arg(long = "cpu-quota")]
    pub cpu_quota: Option<i64>,
    /// CPUs allowed (0-3, 0,1).
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes allowed.
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    /// Most processes.
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    /// The container id.
    pub id: String,
}

/// `husk update`.
pub fn update(g: &Global, args: UpdateArgs) -> anyhow::Result<()> {
    let resources = resources(&args)?;
    let record = g.store().load(&args.id)?;
    let status = record.current_status();
    if !matches!(status, Status::Created | Status::Running | Status::Paused) {
        bail!("cannot update container {}: it is {status}", args.id);
    }
    let resources_json = serde_json::to_string(&resources)?;
    block_on(async {
        let agent = connect(&record).await?;
        agent
            .update_container(
                ctx(),
                &UpdateContainerRequest {
                    container_id: args.id.clone(),
                    resources_json,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow!("updating container {}: {}", args.id, agent_message(&e)))
    })??;
    Ok(())
}

fn resources(args: &UpdateArgs) -> anyhow::Result<LinuxResources> {
    let mut r = match &args.resources {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("resources {}", path.display()))?
            };
            serde_json::from_str(&text).map_err(|e| anyhow!("resources {}: {e}", path.display()))?
        }
        None => LinuxResources::default(),
    };
    let mut memory = r.memory().unwrap_or_default();
    let mut memory_set = r.memory().is_some();
    for (flag, value, set) in [
        (
            "--memory",
            &args.memory,
            LinuxMemory::set_limit as fn(&mut LinuxMemory, Option<i64>) -> &mut LinuxMemory,
        ),
        ("--memory-swap", &args.memory_swap, LinuxMemory::set_swap),
        (
            "--memory-reservation",
            &args.memory_reservation,
            LinuxMemory::set_reservation,
        ),
    ] {
        if let Some(text) = value {
            set(
                &mut memory,
                Some(parse_bytes(text).with_context(|| flag.to_owned())?),
            );
            memory_set = true;
        }
    }
    if memory_set {
        r.set_memory(Some(memory));
    }
    let mut cpu: LinuxCpu = r.cpu().clone().unwrap_or_default();
    let mut cpu_set = r.cpu().is_some();
    if let Some(v) = args.cpu_shares {
        cpu.set_shares(Some(v));
        cpu_set = true;
    }
    if let Some(v) = args.cpu_period {
        cpu.set_period(Some(v));
        cpu_set = true;
    }
    if let Some(v) = args.cpu_quota {
        cpu.set_quota(Some(v));
        cpu_set = true;
    }
    if let Some(v) = &args.cpuset_cpus {
        cpu.set_cpus(Some(v.clone()));
        cpu_set = true;
    }
    if let Some(v) = &args.cpuset_mems {
        cpu.set_mems(Some(v.clone()));
        cpu_set = true;
    }
    if cpu_set {
        r.set_cpu(Some(cpu));
    }
    if let Some(limit) = args.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        r.set_pids(Some(pids));
    }
    Ok(r)
}

/// `1024`, `64k`, `64m`, `1g` (binary units), or -1.
pub fn parse_bytes(text: &str) -> anyhow::Result<i64> {
    let bad = || anyhow!("invalid size {text:?}");
    if text == "-1" {
        return Ok(-1);
    }
    let lower = text.to_ascii_lowercase();
    let lower = lower.trim_end_matches('b');
    let (digits, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        Some('t') => (&lower[..lower.len() - 1], 40),
        _ => (lower, 0),
    };
    let n: i64 = digits.parse().map_err(|_| bad())?;
    if n < 0 {
        return Err(bad());
    }
    n.checked_mul(1 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("2kb").unwrap(), 2048);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        for bad in ["", "m", "-5", "1x", "99999999999999t"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
