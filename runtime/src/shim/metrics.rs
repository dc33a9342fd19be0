//! The guest's cgroup statistics of a container as containerd's
//! `io.containerd.cgroups.v2.Metrics`, which `ctr task metrics` prints and
//! the CRI plugin turns into ContainerStats.

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use husk_protocol::agent::StatsContainerResponse;

/// The type URL containerd decodes cgroup v2 metrics by.
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// The agent's statistics as cgroup v2 metrics.
pub fn metrics(stats: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    if let Some(cpu) = stats.cpu.as_ref() {
        m.cpu = MessageField::some(CPUStat {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        });
    }
    if let Some(memory) = stats.memory.as_ref() {
        m.memory = MessageField::some(MemoryStat {
            usage: memory.usage_bytes,
            max_usage: memory.max_usage_bytes,
            usage_limit: memory.limit_bytes,
            swap_usage: memory.swap_usage_bytes,
            file: memory.cache_bytes,
            ..Default::default()
        });
        m.memory_events = MessageField::some(MemoryEvents {
            oom_kill: memory.oom_kills,
            ..Default::default()
        });
    }
    if let Some(pids) = stats.pids.as_ref() {
        m.pids = MessageField::some(PidsStat {
            current: pids.current,
            limit: pids.limit,
            ..Default::default()
        });
    }
    if let Some(io) = stats.io.as_ref() {
        m.io = MessageField::some(IOStat {
            usage: vec![IOEntry {
                rbytes: io.read_bytes,
                wbytes: io.write_bytes,
                rios: io.read_ops,
                wios: io.write_ops,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    m
}

/// `metrics` packed for a StatsResponse.
pub fn to_any(metrics: &Metrics) -> Result<Any, containerd_shim::protos::protobuf::Error> {
    Ok(Any {
        type_url: METRICS_TYPE_URL.to_owned(),
        value: metrics.write_to_bytes()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::agent::{CpuStats, MemoryStats};

    #[test]
    fn guest_statistics_become_cgroup_v2_metrics_containerd_decodes() {
        let stats = StatsContainerResponse {
            cpu: Some(CpuStats {
                usage_usec: 1500,
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStats {
                usage_bytes: 4 << 20,
                limit_bytes: 32 << 20,
                oom_kills: 1,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let any = to_any(&metrics(&stats)).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        let back = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.cpu.usage_usec, 1500);
        assert_eq!(back.memory.usage, 4 << 20);
        assert_eq!(back.memory.usage_limit, 32 << 20);
        assert_eq!(back.memory_events.oom_kill, 1);
        assert!(back.pids.is_none());
    }
}
