//! Serving husk device backends to QEMU over vhost-user.
//!
//! [`serve`] runs any [`VhostUserBackend`] with `vhost-user-backend`'s
//! [`VhostUserDaemon`], in threads of the calling process, on a listening
//! Unix socket. It serves exactly one frontend connection (QEMU connects once
//! per device) and returns a [`ServeHandle`] that stops it cleanly.
//!
//! Using it for a new device:
//!
//! 1. Implement [`VhostUserBackend`] (usually `VhostUserBackendMut` wrapped in
//!    `Arc<RwLock<_>>`) with `Bitmap = ()` and `Vring = VringRwLock`. It
//!    **must** return an `EventConsumer`/`EventNotifier` pair from
//!    `exit_event` for every worker thread: without one the workers cannot
//!    be told to exit and stopping would hang joining them ([`ExitEvent`]
//!    keeps one pair to hand out). [`config_slice`] and [`is_live`] are the
//!    `get_config` and vring checks every device needs.
//! 2. Implement [`ServedBackend`] to list the extra host-side fds the worker
//!    thread must watch (each delivered to `handle_event` with its token; tokens
//!    must be greater than `num_queues()`).
//! 3. Call `serve("name", backend, socket_path)`, hand `socket_path` to QEMU
//!    (`-chardev socket,id=X,path=...`), and keep the handle. Dropping or
//!    [`ServeHandle::stop`]ping it ends the session: the frontend connection
//!    is shut down, every thread is joined and the socket file is removed.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockname, getsockopt, shutdown, sockopt, Shutdown, UnixAddr};
use vhost::vhost_user::Listener;
use vhost_user_backend::bitmap::BitmapReplace;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::mmap::NewBitmap;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::seccomp::{self, ThreadKind};

/// Errors starting a vhost-user server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be created.
    #[error("cannot listen on vhost-user socket {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: vhost::vhost_user::Error,
    },
    /// The vhost-user daemon could not be created.
    #[error("cannot create vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    /// A backend fd could not be added to the worker's epoll set.
    #[error("cannot watch backend fd: {0}")]
    RegisterFd(io::Error),
    /// A thread or eventfd could not be created.
    #[error("cannot start the vhost-user server: {0}")]
    Start(io::Error),
}

/// A backend that [`serve`] can run: a `VhostUserBackend` plus the host-side
/// fds its worker thread must watch.
pub trait ServedBackend: VhostUserBackend + Clone + 'static {
    /// Extra fds to watch, as `(fd, events, token)`. Each readiness is passed
    /// to `handle_event` as `device_event = token`; tokens must be greater
    /// than `num_queues()` (lower values are the queues and the exit event).
    /// The fds must stay open for as long as the backend lives.
    fn watched_fds(&self) -> Vec<(RawFd, EventSet, u16)> {
        Vec::new()
    }
}

/// The exit event of a backend with one worker thread: created once, so the
/// daemon's `send_exit_event` reaches the consumer the worker waits on.
pub struct ExitEvent {
    consumer: EventConsumer,
    notifier: EventNotifier,
}

impl ExitEvent {
    /// A new non-blocking consumer/notifier pair.
    pub fn new() -> io::Result<Self> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK)?;
        Ok(ExitEvent { consumer, notifier })
    }

    /// What `VhostUserBackend::exit_event` returns: duplicates of the pair.
    pub fn pair(&self) -> Option<(EventConsumer, EventNotifier)> {
        Some((
            self.consumer.try_clone().ok()?,
            self.notifier.try_clone().ok()?,
        ))
    }
}

/// What `VhostUserBackend::get_config` returns for a device whose
/// configuration space is `config`: the bytes from `offset` for `size`,
/// cut short at its end (the frontend's values are not trusted).
pub fn config_slice(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let start = (offset as usize).min(config.len());
    let end = start.saturating_add(size as usize).min(config.len());
    config
        .get(start..end)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// Whether the frontend both started (kick set) and enabled `vring`; a
/// backend must not touch a ring before.
pub fn is_live(vring: &VringRwLock) -> bool {
    let state = vring.get_ref();
    state.is_enabled() && state.get_queue().ready()
}

/// What the serving thread and [`ServeHandle::stop`] share.
#[derive(Default)]
struct Session {
    stopping: bool,
    /// A duplicate of the accepted frontend connection, kept so `stop` can
    /// shut it down and unblock the daemon's request loop.
    frontend: Option<OwnedFd>,
}

/// A running vhost-user server; stopping or dropping it ends the session.
pub struct ServeHandle {
    path: PathBuf,
    /// Whatever stands between the frontend and the daemon's socket (a
    /// relay), dropped first when stopping.
    front: Option<Box<dyn Send>>,
    session: Arc<Mutex<Session>>,
    stop_event: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl ServeHandle {
    /// The socket path the frontend connects to.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Whether the session has ended (frontend gone, or never coming after a stop).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().map_or(true, |t| t.is_finished())
    }

    /// Stops serving: shuts the frontend connection down, joins every thread
    /// and removes the socket file. Safe to call more than once.
    pub fn stop(&mut self) {
        drop(self.front.take());
        {
            let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
            session.stopping = true;
            if let Some(fd) = &session.frontend {
                let _ = shutdown(fd.as_raw_fd(), Shutdown::Both);
            }
        }
        let _ = self.stop_event.write(1);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(path = %self.path.display(), "vhost-user serving thread panicked");
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

impl ServeHandle {
    /// Puts `front` (listening on `path`, where the frontend now connects)
    /// in front of the daemon's own socket. It is dropped first on stop.
    pub(crate) fn with_front(mut self, path: PathBuf, front: Box<dyn Send>) -> Self {
        self.path = path;
        self.front = Some(front);
        self
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `backend` over vhost-user on a new listening socket at `socket`
/// (an existing socket file there is replaced), in threads of this process.
///
/// Returns once the socket is listening; one frontend connection is then
/// accepted and served until it disconnects or the handle is stopped.
pub fn serve<B>(name: &str, backend: B, socket: &Path) -> Result<ServeHandle, Error>
where
    B: ServedBackend,
    B::Bitmap: BitmapReplace + NewBitmap + Clone + Send + Sync,
    B::Vring: Clone + Send + Sync,
{
    // Before any thread of the session exists: a filter defect fails here,
    // and the session's clean-up needs the spawner.
    seccomp::prepare().map_err(|e| Error::Start(io::Error::other(e)))?;
    seccomp::spawner::init().map_err(Error::Start)?;
    let watched = backend.watched_fds();
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<B::Bitmap>::new());
    let daemon = VhostUserDaemon::new(name.to_owned(), backend, mem).map_err(Error::Daemon)?;
    // All watched fds go to the first worker thread, which owns the backend's
    // host-side event loop.
    if let Some(handler) = daemon.get_epoll_handlers().first() {
        for (fd, events, token) in watched {
            handler
                .register_listener(fd, events, u64::from(token))
                .map_err(Error::RegisterFd)?;
        }
    }

    let listener = Listener::new(socket, true).map_err(|source| Error::Listen {
        path: socket.to_owned(),
        source,
    })?;
    let stop_event = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(Error::Start)?);
    let session = Arc::new(Mutex::new(Session::default()));

    let thread = {
        let stop_event = stop_event.clone();
        let session = session.clone();
        let path = socket.to_owned();
        thread::Builder::new()
            .name(format!("vu-{name}"))
            .spawn(move || run_session(daemon, listener, &stop_event, &session, &path))
            .map_err(Error::Start)?
    };

    Ok(ServeHandle {
        path: socket.to_owned(),
        front: None,
        session,
        stop_event,
        thread: Some(thread),
    })
}

/// Waits for the frontend (or a stop), serves it, then stops the workers.
fn run_session<B>(
    mut daemon: VhostUserDaemon<B>,
    mut listener: Listener,
    stop_event: &EventFd,
    session: &Mutex<Session>,
    path: &Path,
) where
    B: VhostUserBackend + Clone + 'static,
    B::Bitmap: BitmapReplace + NewBitmap + Clone + Send + Sync,
    B::Vring: Clone + Send + Sync,
{
    // Opened before the filter, which allows no `openat`: where the accepted
    // connection will be looked for.
    let fd_dir = nix::dir::Dir::open(
        "/proc/self/fd",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    );
    // The request handler thread `daemon.start` creates inherits this filter. The device's
    // worker threads were created with the daemon; each installs its own filter on its first
    // event (`seccomp::apply_once` in the backends' `handle_event`).
    if let Err(e) = seccomp::apply(ThreadKind::VhostUser) {
        tracing::error!(path = %path.display(), "vhost-user session not started: {e}");
    } else if wait_readable(&listener, stop_event) {
        match daemon.start(&mut listener) {
            Ok(()) => {
                let frontend = match fd_dir {
                    Ok(mut dir) => find_accepted_connection(&mut dir, path),
                    Err(e) => {
                        tracing::warn!("cannot list /proc/self/fd: {e}");
                        None
                    }
                };
                if frontend.is_none() {
                    tracing::warn!(path = %path.display(), "cannot find the vhost-user connection; stop waits for the frontend");
                }
                {
                    let mut s = session.lock().unwrap_or_else(PoisonError::into_inner);
                    if let (true, Some(fd)) = (s.stopping, &frontend) {
                        let _ = shutdown(fd.as_raw_fd(), Shutdown::Both);
                    }
                    s.frontend = frontend;
                }
                match daemon.wait() {
                    Ok(())
                    | Err(vhost_user_backend::Error::HandleRequest(
                        vhost::vhost_user::Error::Disconnected
                        | vhost::vhost_user::Error::PartialMessage,
                    )) => tracing::debug!(path = %path.display(), "vhost-user frontend left"),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "vhost-user session failed: {e}")
                    }
                }
                // Let the frontend see the hang-up now, not when the handle drops.
                session
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .frontend = None;
            }
            Err(e) => tracing::warn!(path = %path.display(), "vhost-user accept failed: {e}"),
        }
    }
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    // Dropping the daemon drops the last handler reference, which joins the
    // workers, and with the last backend reference the backend's own
    // clean-up runs (removing its sockets), which this thread's filter
    // forbids: an unfiltered thread from the spawner does both, now, so the
    // backend's sockets go away when the session does.
    let cleanup = seccomp::spawner::spawn("vu-cleanup".into(), move || {
        drop(daemon);
        drop(listener);
    });
    match cleanup.map(JoinHandle::join) {
        Ok(Ok(())) => {}
        Ok(Err(_)) => tracing::error!(path = %path.display(), "vhost-user clean-up panicked"),
        Err(e) => tracing::error!(path = %path.display(), "vhost-user clean-up not started: {e}"),
    }
}

/// Blocks until the listener has a connection (true) or a stop was asked (false).
fn wait_readable(listener: &Listener, stop_event: &EventFd) -> bool {
    // SAFETY: both fds are owned by objects that outlive this function.
    let (lfd, sfd) = unsafe {
        (
            BorrowedFd::borrow_raw(listener.as_raw_fd()),
            BorrowedFd::borrow_raw(stop_event.as_raw_fd()),
        )
    };
    loop {
        let mut fds = [
            PollFd::new(lfd, PollFlags::POLLIN),
            PollFd::new(sfd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
                if fds.get(1).is_some_and(ready) {
                    return false;
                }
                if fds.first().is_some_and(ready) {
                    return true;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("poll on vhost-user listener failed: {e}");
                return false;
            }
        }
    }
}

/// Finds the connection the daemon accepted from the listener at `path` and
/// returns a duplicate of it.
///
/// `VhostUserDaemon` keeps the accepted socket to itself, and its request loop
/// only ends when that socket fails, so shutting it down is the one way to
/// stop a session while the frontend is still connected. The accepted socket
/// is the only non-listening socket in this process whose local address is
/// `path` (frontends in the same process have unnamed local addresses).
/// `fd_dir` is `/proc/self/fd`, opened by the caller; fds that are no
/// sockets fail the socket checks.
fn find_accepted_connection(fd_dir: &mut nix::dir::Dir, path: &Path) -> Option<OwnedFd> {
    for entry in fd_dir.iter().flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .ok()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: the fd was open a moment ago; if it was closed since, the
        // duplicate fails and we skip it; if it was reused, the checks below
        // look at the duplicate, not at the number.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let Ok(dup) = borrowed.try_clone_to_owned() else {
            continue;
        };
        if is_accepted_from(dup.as_fd(), path) {
            return Some(dup);
        }
    }
    None
}

fn is_accepted_from(fd: BorrowedFd<'_>, path: &Path) -> bool {
    let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(true);
    let local = getsockname::<UnixAddr>(fd.as_raw_fd()).ok();
    !listening && local.as_ref().and_then(UnixAddr::path) == Some(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::RwLock;
    use std::time::Duration;

    use vhost::vhost_user::message::VhostUserProtocolFeatures;
    use vhost_user_backend::{VhostUserBackendMut, VringRwLock};
    use vmm_sys_util::event::{
        new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
    };

    use super::*;

    /// The smallest backend the daemon accepts: one queue, no work.
    struct Idle;

    impl VhostUserBackendMut for Idle {
        type Bitmap = ();
        type Vring = VringRwLock;

        fn num_queues(&self) -> usize {
            1
        }
        fn max_queue_size(&self) -> usize {
            16
        }
        fn features(&self) -> u64 {
            1 << 32
        }
        fn protocol_features(&self) -> VhostUserProtocolFeatures {
            VhostUserProtocolFeatures::empty()
        }
        fn set_event_idx(&mut self, _enabled: bool) {}
        fn update_memory(&mut self, _mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
            Ok(())
        }
        fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
        }
        fn handle_event(
            &mut self,
            _device_event: u16,
            _evset: EventSet,
            _vrings: &[VringRwLock],
            _thread_id: usize,
        ) -> io::Result<()> {
            Ok(())
        }
    }

    impl ServedBackend for Arc<RwLock<Idle>> {}

    #[test]
    fn stop_before_any_frontend_removes_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vu.sock");
        let mut handle = serve("idle", Arc::new(RwLock::new(Idle)), &path).unwrap();
        assert!(path.exists(), "socket must exist once serve returns");
        assert!(!handle.is_finished());
        handle.stop();
        assert!(handle.is_finished());
        assert!(!path.exists());
    }

    #[test]
    fn stop_with_a_connected_frontend_disconnects_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vu.sock");
        let mut handle = serve("idle", Arc::new(RwLock::new(Idle)), &path).unwrap();
        let mut frontend = UnixStream::connect(&path).unwrap();
        // Wait until the daemon has taken the connection (its socket shows up).
        for _ in 0..200 {
            if handle.session.lock().unwrap().frontend.is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        assert!(handle.session.lock().unwrap().frontend.is_some());
        handle.stop();
        assert!(!path.exists());
        // The frontend sees end of file: the backend side is gone.
        frontend
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(io::Read::read(&mut frontend, &mut buf).unwrap(), 0);
    }

    #[test]
    fn frontend_leaving_ends_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vu.sock");
        let handle = serve("idle", Arc::new(RwLock::new(Idle)), &path).unwrap();
        drop(UnixStream::connect(&path).unwrap());
        for _ in 0..400 {
            if handle.is_finished() {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        assert!(handle.is_finished());
        drop(handle);
        assert!(!path.exists());
    }
}
