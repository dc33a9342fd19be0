//! A relay between QEMU and the net backend's vhost-user daemon that holds
//! back the `SET_VRING_ENABLE` requests QEMU's virtio-net sends before
//! `SET_FEATURES`, and delivers them right after it.
//!
//! Why: QEMU (7.2) enables the vhost-user-net rings when the guest driver
//! writes its features (`virtio_net_set_features` -> `peer_attach`), before
//! it starts vhost and sends `SET_FEATURES`; it sends the enable again once
//! vhost has started and never again. The `vhost` crate refuses a
//! `SET_VRING_ENABLE` before the frontend acked
//! `VHOST_USER_F_PROTOCOL_FEATURES` and ends the session on that error;
//! without `PROTOCOL_FEATURES` QEMU refuses to start vhost. Delivering the
//! last early enable of each ring just after `SET_FEATURES` gives the
//! backend the state QEMU meant, at the first moment it may take it.
//!
//! Only control messages pass here; the guest's memory, kicks and
//! interrupts go by the file descriptors these messages carry, so the data
//! path never touches the relay.

use std::io::{self, IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::seccomp::{self, ThreadKind};

/// `VHOST_USER_SET_FEATURES`.
const SET_FEATURES: u32 = 2;
/// `VHOST_USER_SET_VRING_ENABLE`.
const SET_VRING_ENABLE: u32 = 18;
/// vhost-user header: request, flags, payload size (u32 each).
const HEADER_LEN: usize = 12;
/// Largest payload the relay forwards (the `vhost` crate's own limit is 4 KiB).
const MAX_PAYLOAD: usize = 0x1000;
/// Most file descriptors one message carries (memory table: 8 regions,
/// or up to 32 with `CONFIGURE_MEM_SLOTS`).
const MAX_FDS: usize = 32;

/// The running relay: its thread and the eventfd that stops it.
pub(crate) struct Relay {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Relay {
    /// Listens on `public` (replacing a stale socket file) and relays the
    /// one frontend that connects there to the daemon listening on `inner`.
    pub(crate) fn start(public: &Path, inner: PathBuf) -> io::Result<Relay> {
        let _ = std::fs::remove_file(public);
        let listener = UnixListener::bind(public)?;
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vu-net-relay".into())
            .spawn(move || {
                if let Err(e) = seccomp::apply(ThreadKind::NetRelay) {
                    tracing::error!("vhost-user net relay not started: {e}");
                    return;
                }
                if let Err(e) = run(&listener, &inner, &thread_stop) {
                    tracing::debug!("vhost-user net relay ended: {e}");
                }
            })?;
        Ok(Relay {
            stop,
            thread: Some(thread),
            path: public.to_owned(),
        })
    }

    /// Stops relaying (both connections are closed) and removes the socket.
    pub(crate) fn stop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("vhost-user net relay panicked");
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

fn readable(fds: &[PollFd], i: usize) -> bool {
    fds.get(i)
        .and_then(|p| p.revents())
        .is_some_and(|r| !r.is_empty())
}

/// Waits for the frontend, connects to the daemon, and relays until either
/// side hangs up or a stop is asked.
fn run(listener: &UnixListener, inner: &Path, stop: &EventFd) -> io::Result<()> {
    // SAFETY: the eventfd outlives this function.
    let stop_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stop.as_raw_fd()) };
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop_fd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if readable(&fds, 1) {
            return Ok(());
        }
        if readable(&fds, 0) {
            break;
        }
    }
    let (front, _) = listener.accept()?;
    let back = UnixStream::connect(inner)?;
    let mut early = EarlyEnables::default();
    let result = loop {
        let mut fds = [
            PollFd::new(front.as_fd(), PollFlags::POLLIN),
            PollFd::new(back.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop_fd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => break Err(e.into()),
        }
        if readable(&fds, 2) {
            break Ok(());
        }
        if readable(&fds, 0) {
            match forward_request(&front, &back, &mut early) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        }
        if readable(&fds, 1) {
            match forward_chunk(&back, &front) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        }
    };
    let _ = front.shutdown(std::net::Shutdown::Both);
    let _ = back.shutdown(std::net::Shutdown::Both);
    result
}

/// Receives bytes and any file descriptors into `buf`; `Ok(None)` at end of file.
fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just gave us these descriptors; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.bytes == 0 {
        return Ok(None);
    }
    Ok(Some((msg.bytes, fds)))
}

fn send_with_fds(sock: &UnixStream, parts: &[&[u8]], fds: &[OwnedFd]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
    if sent != total {
        // The daemon reads messages whole; a short send on a Unix stream
        // socket only happens when it is gone.
        return Err(io::Error::other("short send to the vhost-user daemon"));
    }
    Ok(())
}

/// `SET_VRING_ENABLE` requests held back until `SET_FEATURES` passed.
#[derive(Default)]
struct EarlyEnables {
    features_seen: bool,
    /// The last request for each ring, as (ring index, whole message).
    held: Vec<(u32, [u8; HEADER_LEN + 8])>,
}

/// Relays one frontend request (header, payload, descriptors), holding back
/// an early `SET_VRING_ENABLE`. `Ok(false)` when the frontend hung up.
fn forward_request(
    front: &UnixStream,
    back: &UnixStream,
    early: &mut EarlyEnables,
) -> io::Result<bool> {
    let mut header = [0u8; HEADER_LEN];
    let Some((n, fds)) = recv_with_fds(front, &mut header)? else {
        return Ok(false);
    };
    if n < HEADER_LEN {
        (&*front).read_exact(&mut header[n..])?;
    }
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (request, size) = (word(0), word(8) as usize);
    if size > MAX_PAYLOAD {
        return Err(io::Error::other(format!(
            "vhost-user payload of {size} bytes"
        )));
    }
    let mut payload = [0u8; MAX_PAYLOAD];
    let payload = &mut payload[..size];
    (&*front).read_exact(payload)?;
    if request == SET_VRING_ENABLE && !early.features_seen && size == 8 && fds.is_empty() {
        let mut msg = [0u8; HEADER_LEN + 8];
        msg[..HEADER_LEN].copy_from_slice(&header);
        msg[HEADER_LEN..].copy_from_slice(payload);
        let ring = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
        early.held.retain(|(r, _)| *r != ring);
        // A frontend has a handful of rings; anything beyond is not QEMU.
        if early.held.len() < 64 {
            early.held.push((ring, msg));
        }
        return Ok(true);
    }
    send_with_fds(back, &[&header, payload], &fds)?;
    if request == SET_FEATURES && !early.features_seen {
        early.features_seen = true;
        for (_, msg) in std::mem::take(&mut early.held) {
            send_with_fds(back, &[&msg], &[])?;
        }
    }
    Ok(true)
}

/// Relays whatever the daemon sent (replies), descriptors included.
/// `Ok(false)` when the daemon hung up.
fn forward_chunk(back: &UnixStream, front: &UnixStream) -> io::Result<bool> {
    let mut buf = [0u8; HEADER_LEN + MAX_PAYLOAD];
    let Some((n, fds)) = recv_with_fds(back, &mut buf)? else {
        return Ok(false);
    };
    send_with_fds(front, &[&buf[..n]], &fds)?;
    Ok(true)
}
