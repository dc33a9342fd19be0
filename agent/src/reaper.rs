//! Reaping every child (the agent is PID 1 in the guest, or a subreaper in
//! host tests) and handing exit statuses to whoever waits for them.
//!
//! The container engine forks and waits for its own helper processes, so the
//! reaper must not reap while it does: spawning happens under a
//! [`SpawnGuard`], which also registers the new process before the reaper can
//! see it exit. Any pid nobody registered is an orphan and is simply reaped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

/// The exit status of a process as a shell reports it: the exit code, or
/// 128+N when signal N killed it.
pub type ExitStatus = i32;

/// Receives a process's exit status once it has been reaped.
pub type ExitReceiver = watch::Receiver<Option<ExitStatus>>;

/// Reaps children and publishes the exit statuses of registered processes.
#[derive(Default)]
pub struct Reaper {
    /// Held while the container engine forks and waits on its own children.
    spawning: Mutex<()>,
    /// Registered processes that have not exited yet.
    waiting: Mutex<HashMap<i32, watch::Sender<Option<ExitStatus>>>>,
}

/// Held while the container engine runs; see the module documentation.
pub struct SpawnGuard<'a> {
    reaper: &'a Reaper,
    _lock: MutexGuard<'a, ()>,
}

impl SpawnGuard<'_> {
    /// Registers a process the engine just started: its exit status will be
    /// published on the returned receiver.
    pub fn register(&self, pid: i32) -> ExitReceiver {
        let (tx, rx) = watch::channel(None);
        lock(&self.reaper.waiting).insert(pid, tx);
        rx
    }
}

impl Reaper {
    /// A reaper with nothing registered.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Blocks reaping until the guard is dropped.
    pub fn spawn_guard(&self) -> SpawnGuard<'_> {
        SpawnGuard {
            reaper: self,
            _lock: lock(&self.spawning),
        }
    }

    /// Reaps every child that has exited, without blocking on live ones.
    pub fn reap_all(&self) {
        let _spawning = lock(&self.spawning);
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.publish(pid, code),
                Ok(WaitStatus::Signaled(pid, signal, _)) => self.publish(pid, 128 + signal as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(%err, "waitpid failed");
                    return;
                }
            }
        }
    }

    fn publish(&self, pid: Pid, status: ExitStatus) {
        match lock(&self.waiting).remove(&pid.as_raw()) {
            Some(tx) => {
                tracing::debug!(pid = pid.as_raw(), status, "process exited");
                let _ = tx.send(Some(status));
            }
            None => tracing::trace!(pid = pid.as_raw(), status, "reaped orphan"),
        }
    }

    /// Reaps on every SIGCHLD, forever.
    pub async fn run(self: Arc<Self>) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = signal(SignalKind::child())?;
        loop {
            // A child may have exited before the handler was installed.
            let reaper = Arc::clone(&self);
            if let Err(err) = tokio::task::spawn_blocking(move || reaper.reap_all()).await {
                tracing::error!(%err, "reaper task failed");
            }
            if sigchld.recv().await.is_none() {
                return Ok(());
            }
        }
    }
}

/// Locks a mutex, recovering the data if another thread panicked with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits for a registered process's exit status.
pub async fn wait(mut rx: ExitReceiver) -> Option<ExitStatus> {
    loop {
        if let Some(status) = *rx.borrow_and_update() {
            return Some(status);
        }
        if rx.changed().await.is_err() {
            // The sender is gone without a status: the process was never reaped.
            return *rx.borrow();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The reaper itself waits for these children (waitpid(-1)).
    #[allow(clippy::zombie_processes)]
    fn publishes_exit_code_and_signal_status() {
        let reaper = Reaper::new();
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("spawn sh");
        let rx = reaper.spawn_guard().register(child.id() as i32);
        let killed = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("spawn sleep");
        let rx_killed = reaper.spawn_guard().register(killed.id() as i32);
        nix::sys::signal::kill(
            Pid::from_raw(killed.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while (rx.borrow().is_none() || rx_killed.borrow().is_none())
                && std::time::Instant::now() < deadline
            {
                reaper.reap_all();
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(wait(rx).await, Some(7));
            assert_eq!(wait(rx_killed).await, Some(128 + 9));
        });
    }
}
