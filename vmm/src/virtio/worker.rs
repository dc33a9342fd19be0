//! The one worker thread a virtio-mmio device runs between activation and reset.
//!
//! Every builtin device serves its queues the same way: a thread that polls
//! the queue notifiers, its own host-side fds and a stop eventfd. [`Worker`]
//! owns that thread and the stop eventfd, so a device's `reset` (and `Drop`)
//! is one [`Worker::stop`].

use std::io;
use std::os::fd::RawFd;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::seccomp::spawner;

use super::{ActivateError, InterruptKind, VirtioInterrupt};

/// A running device worker: its thread and the eventfd that tells it to stop.
pub struct Worker {
    kind: &'static str,
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl Worker {
    /// Spawns `serve` on a thread named `husk-<kind>`, handing it the stop
    /// eventfd it must poll and return on once readable. The thread is created
    /// by the [`spawner`](crate::seccomp::spawner), so it does not inherit the
    /// filter of the (vCPU) thread that activates the device; `serve` installs
    /// its own before it touches a queue.
    pub fn spawn<F>(kind: &'static str, serve: F) -> Result<Self, ActivateError>
    where
        F: FnOnce(&EventFd) + Send + 'static,
    {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Backend)?;
        let worker_stop = stop.try_clone().map_err(ActivateError::Backend)?;
        let thread = spawner::spawn(format!("husk-{kind}"), move || serve(&worker_stop))
            .map_err(ActivateError::Backend)?;
        Ok(Worker { kind, stop, thread })
    }

    /// Tells the thread to stop and joins it. A panicked worker is logged,
    /// not propagated: reset must leave the device ready for a new activation.
    pub fn stop(self) {
        let _ = self.stop.write(1);
        if self.thread.join().is_err() {
            tracing::error!("virtio-{} worker panicked", self.kind);
        }
    }
}

/// Blocks until at least one of `fds` is readable (or hung up) and says
/// which are. An interrupted wait comes back as `ErrorKind::Interrupted`, so
/// the worker decides whether to run its queues again before waiting anew.
pub fn wait_readable<const N: usize>(fds: [RawFd; N]) -> io::Result<[bool; N]> {
    let mut pollfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `pollfds` is a valid array of pollfds that outlives the call.
    let n = unsafe { libc::poll(pollfds.as_mut_ptr(), N as libc::nfds_t, -1) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pollfds.map(|p| p.revents != 0))
}

/// Raises the used-buffer interrupt of `queue`. A failure is logged, not
/// returned: the worker keeps serving, and the guest sees the buffers on its
/// next interrupt or poll.
pub fn notify_queue(interrupt: &dyn VirtioInterrupt, kind: &str, queue: u16) {
    if let Err(e) = interrupt.notify(InterruptKind::Queue(queue)) {
        tracing::warn!("virtio-{kind}: cannot interrupt the guest: {e}");
    }
}
