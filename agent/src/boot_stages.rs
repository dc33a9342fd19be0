//! When the guest reached each stage of its boot, on its own clock.
//!
//! CLOCK_BOOTTIME starts when the guest kernel starts keeping time, so it
//! reads "time since kernel entry" without any host clock. Each stage is
//! recorded once, the first time it is reached (a sandbox's first
//! container); `GetGuestDetails` reports them.

use std::sync::atomic::{AtomicU64, Ordering};

use husk_protocol::agent::BootStages;

/// A stage of the guest's boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The agent runs (as /init in the guest).
    Init,
    /// Base file systems mounted, cgroup controllers enabled.
    BaseSystem,
    /// The ttrpc server listens.
    Listening,
    /// The ready line went to the host.
    ReadySent,
    /// The first CreateSandbox finished.
    SandboxCreated,
    /// The first CreateContainer finished.
    ContainerCreated,
    /// The first StartContainer finished (the process exec'd).
    ContainerStarted,
}

const STAGES: usize = 7;

/// The time of each stage, in nanoseconds on CLOCK_BOOTTIME (0: not yet).
#[derive(Debug, Default)]
pub struct Timeline {
    at: [AtomicU64; STAGES],
}

/// This process's timeline.
pub static TIMELINE: Timeline = Timeline {
    at: [const { AtomicU64::new(0) }; STAGES],
};

/// Marks `stage` as reached now in this process's timeline.
pub fn mark(stage: Stage) {
    TIMELINE.mark_at(stage, now_ns());
}

/// Nanoseconds since the kernel started (CLOCK_BOOTTIME), at least 1 so
/// that a recorded stage is never mistaken for "not reached".
pub fn now_ns() -> u64 {
    let ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            (t.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(t.tv_nsec() as u64)
        })
        .unwrap_or(0);
    ns.max(1)
}

impl Timeline {
    /// Records `stage` at `ns` unless it was recorded before.
    pub fn mark_at(&self, stage: Stage, ns: u64) {
        let _ = self.at[stage as usize].compare_exchange(
            0,
            ns.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The stages so far, with `now_ns` as the reply's own time.
    pub fn report(&self, now_ns: u64) -> BootStages {
        let at = |stage: Stage| self.at[stage as usize].load(Ordering::Relaxed);
        BootStages {
            init_ns: at(Stage::Init),
            base_system_ns: at(Stage::BaseSystem),
            listening_ns: at(Stage::Listening),
            ready_sent_ns: at(Stage::ReadySent),
            sandbox_created_ns: at(Stage::SandboxCreated),
            container_created_ns: at(Stage::ContainerCreated),
            container_started_ns: at(Stage::ContainerStarted),
            now_ns,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_keeps_its_first_time_and_unreached_ones_are_zero() {
        let timeline = Timeline::default();
        timeline.mark_at(Stage::Init, 5);
        timeline.mark_at(Stage::ContainerCreated, 30);
        // A sandbox's second container does not move the stage.
        timeline.mark_at(Stage::ContainerCreated, 90);
        let report = timeline.report(100);
        assert_eq!(report.init_ns, 5);
        assert_eq!(report.container_created_ns, 30);
        assert_eq!(report.listening_ns, 0);
        assert_eq!(report.container_started_ns, 0);
        assert_eq!(report.now_ns, 100);
    }

    #[test]
    fn the_clock_is_the_guest_kernels_and_moves_forward() {
        let a = now_ns();
        let b = now_ns();
        assert!(a >= 1 && b >= a);
        // Since the kernel started: less than the uptime plus a margin.
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let secs = a as f64 / 1e9;
        assert!(
            secs <= uptime + 0.1 && secs > uptime - 5.0,
            "{a} ns vs uptime {uptime} s"
        );
    }
}
