//! Host processes a container's state refers to, named by pid and start
//! time so that a recycled pid is never taken for the original process.

use serde::{Deserialize, Serialize};

/// A host process, as recorded when it was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostProcess {
    /// Its pid.
    pub pid: i32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

impl HostProcess {
    /// The running process `pid`, if there is one.
    pub fn of(pid: i32) -> Option<Self> {
        let stat = Stat::read(pid)?;
        Some(Self {
            pid,
            start_time: stat.start_time,
        })
    }

    /// Whether this very process still runs (a zombie has ended).
    pub fn is_alive(&self) -> bool {
        Stat::read(self.pid).is_some_and(|s| s.start_time == self.start_time && !s.has_ended())
    }

    /// Waits up to `timeout` for this process to end; whether it did.
    pub fn wait_gone(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.is_alive() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }

    /// Sends `signal`, if the process still runs.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        // The check and the kill race with the pid being recycled only if
        // the process ends and its pid is reused in between: a window of
        // microseconds that runc accepts too.
        // SAFETY: kill(2) has no memory effects.
        self.is_alive() && unsafe { libc::kill(self.pid, signal) } == 0
    }
}

/// The fields of `/proc/<pid>/stat` husk uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (R, S, D, Z, X, ...).
    pub state: char,
    /// The parent's pid.
    pub ppid: i32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

impl Stat {
    /// Reads `/proc/<pid>/stat`; `None` if the process is gone.
    pub fn read(pid: i32) -> Option<Self> {
        if pid <= 0 {
            return None;
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Self::parse(&text)
    }

    /// Parses a stat line. The command name is in parentheses and may itself
    /// contain ") ", so fields are counted after the last ')'.
    pub fn parse(text: &str) -> Option<Self> {
        let (_, rest) = text.rsplit_once(')')?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        // Field 3 is the state, 4 the parent; 22 the start time, 18 further on.
        let ppid = fields.next()?.parse().ok()?;
        let start_time = fields.nth(17)?.parse().ok()?;
        Some(Self {
            state,
            ppid,
            start_time,
        })
    }

    /// Whether the process has ended (zombie or dead).
    pub fn has_ended(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_tricky_command_name() {
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = Stat::parse(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.start_time, 987654);
        assert!(Stat::parse("garbage").is_none());
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = HostProcess::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let other = HostProcess {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
        assert!(HostProcess::of(-1).is_none());
    }

    #[test]
    fn an_unreaped_child_has_ended() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let process = HostProcess::of(child.id() as i32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process.is_some_and(|p| p.is_alive()) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().unwrap();
    }
}
