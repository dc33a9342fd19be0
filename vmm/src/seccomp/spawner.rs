//! Starts threads on behalf of filtered threads.
//!
//! A thread inherits the seccomp filters of the thread that creates it, and filters only
//! add up. The virtio device workers are started when the driver sets `DRIVER_OK`, which
//! happens on a vCPU thread: started there, a worker would run under the vCPU's list as well
//! as its own, and the vCPU's list would have to allow everything every worker does.
//! Instead, the vCPU thread asks the spawner, a thread created (without a filter) before the
//! vCPUs start, which creates the worker; the worker then installs its own filter.
//!
//! The spawner only runs `std::thread::Builder::spawn` for closures the VMM's own code hands
//! it; nothing from the guest reaches it but the request to start a worker.

use std::io;
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Request {
    name: String,
    job: Job,
    reply: SyncSender<io::Result<JoinHandle<()>>>,
}

/// A thread that starts threads; it ends when the `Spawner` is dropped.
pub struct Spawner {
    requests: Mutex<Sender<Request>>,
}

impl Spawner {
    /// Starts a spawner thread (`husk-spawner`) from the calling thread, whose filters
    /// (if any) the threads it starts inherit.
    pub fn start() -> io::Result<Spawner> {
        let (tx, rx) = channel::<Request>();
        std::thread::Builder::new()
            .name("husk-spawner".into())
            .spawn(move || {
                for req in rx {
                    let spawned = std::thread::Builder::new().name(req.name).spawn(req.job);
                    let _ = req.reply.send(spawned);
                }
            })?;
        Ok(Spawner {
            requests: Mutex::new(tx),
        })
    }

    /// Starts `job` on a new thread named `name`, created by the spawner thread.
    pub fn spawn<F>(&self, name: String, job: F) -> io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        let gone = || io::Error::other("the thread spawner has stopped");
        let (reply, answer) = sync_channel(1);
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(Request {
                name,
                job: Box::new(job),
                reply,
            })
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

static GLOBAL: OnceLock<Spawner> = OnceLock::new();

/// Starts the process's spawner if it is not running yet. Call it from a thread without a
/// filter, before starting filtered threads that will need [`spawn`].
pub fn init() -> io::Result<()> {
    if GLOBAL.get().is_none() {
        // Two racing callers may both start one; the loser's ends with its `Spawner`.
        let _ = GLOBAL.set(Spawner::start()?);
    }
    Ok(())
}

/// Starts `job` on a new thread named `name`, created by the process's spawner (started on
/// first use if [`init`] was not called; that first use must then come from an unfiltered
/// thread).
pub fn spawn<F>(name: String, job: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    init()?;
    GLOBAL
        .get()
        .ok_or_else(|| io::Error::other("the thread spawner is not running"))?
        .spawn(name, job)
}
