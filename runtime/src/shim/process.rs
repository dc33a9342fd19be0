//! One task process as the shim tracks it: a container's init or an exec,
//! its phase, its stdio, and its exit, which any number of `Wait` calls
//! await.

use std::sync::Mutex;

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

use super::stdio::{Carried, StdioPaths};

/// How a process ended.
#[derive(Debug, Clone)]
pub struct Exit {
    /// Its exit status (128 + signal when a signal killed it).
    pub status: u32,
    /// When.
    pub at: Timestamp,
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Frozen (its container was paused).
    Paused,
    /// Exited.
    Stopped,
}

impl Phase {
    /// containerd's name for it.
    pub fn status(self) -> Status {
        match self {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Paused => Status::PAUSED,
            Phase::Stopped => Status::STOPPED,
        }
    }
}

/// A container's init or exec process.
#[derive(Debug)]
pub struct Proc {
    /// The container it belongs to.
    pub container_id: String,
    /// The agent's exec id (the init's is the sandbox layer's fixed one).
    pub agent_exec_id: String,
    /// containerd's exec id ("" for the init).
    pub exec_id: String,
    /// containerd's stdio paths.
    pub stdio: StdioPaths,
    /// An exec's OCI process as JSON (the init's comes with its spec).
    pub process_json: Option<String>,
    phase: Mutex<Phase>,
    exit: watch::Sender<Option<Exit>>,
    /// The stdio being carried, once the process exists in the guest.
    pub carried: tokio::sync::Mutex<Option<Carried>>,
}

impl Proc {
    /// A created process.
    pub fn new(
        container_id: &str,
        exec_id: &str,
        agent_exec_id: &str,
        stdio: StdioPaths,
        process_json: Option<String>,
    ) -> Self {
        Self {
            container_id: container_id.to_owned(),
            agent_exec_id: agent_exec_id.to_owned(),
            exec_id: exec_id.to_owned(),
            stdio,
            process_json,
            phase: Mutex::new(Phase::Created),
            exit: watch::channel(None).0,
            carried: tokio::sync::Mutex::new(None),
        }
    }

    /// Its phase.
    pub fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves it to `phase` (never out of Stopped).
    pub fn set_phase(&self, phase: Phase) {
        let mut current = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if *current != Phase::Stopped {
            *current = phase;
        }
    }

    /// Records its exit (the first one counts) and wakes every waiter.
    pub fn exited(&self, status: u32) -> Exit {
        self.set_phase(Phase::Stopped);
        self.exit.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(Exit {
                status,
                at: Timestamp::now(),
            });
            true
        });
        self.exit.borrow().clone().unwrap_or(Exit {
            status,
            at: Timestamp::now(),
        })
    }

    /// Its exit, if it has exited.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Resolves once it has exited.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(exit) = rx.borrow_and_update().clone() {
                return exit;
            }
            if rx.changed().await.is_err() {
                return Exit {
                    status: 255,
                    at: Timestamp::now(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiter_sees_the_first_exit_and_a_stopped_process_stays_stopped() {
        let p = std::sync::Arc::new(Proc::new("c", "", "init", StdioPaths::default(), None));
        assert_eq!(p.phase(), Phase::Created);
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait().await })
        };
        p.set_phase(Phase::Running);
        let first = p.exited(3);
        let second = p.exited(9);
        assert_eq!(first.status, 3);
        assert_eq!(second.status, 3);
        assert_eq!(waiter.await.unwrap().status, 3);
        p.set_phase(Phase::Running);
        assert_eq!(p.phase(), Phase::Stopped);
        assert_eq!(p.exit().unwrap().status, 3);
    }
}
