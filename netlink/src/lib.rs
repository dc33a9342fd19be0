//! A small synchronous rtnetlink client: one request at a time, its answers
//! read until the kernel's ack or the end of the dump.
//!
//! Shared by the host runtime (wiring a container's network namespace to
//! the VM's NICs) and the guest agent (configuring those NICs). Synchronous
//! on purpose: each side makes a handful of requests once per sandbox, and a
//! blocking socket in the calling thread's network namespace is what the
//! tests (which move one thread into a namespace of their own) need too.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How long the kernel may take to answer one request: it answers at once,
/// so this only bounds a wedged socket.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors talking to the kernel over rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The netlink socket could not be made or used.
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Refused {
        /// What was asked, for a person to read.
        what: String,
        /// The kernel's error.
        source: io::Error,
    },
    /// The kernel's answer could not be decoded.
    #[error("{what}: undecodable netlink answer: {message}")]
    Decode {
        /// What was asked.
        what: String,
        /// The decoder's words.
        message: String,
    },
}

impl Error {
    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A route netlink socket in the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, Error> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(Error::Socket)?;
        socket.bind_auto().map_err(Error::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(Error::Socket)?;
        let timeout = nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0);
        nix::sys::socket::setsockopt(
            &socket.as_fd(),
            nix::sys::socket::sockopt::ReceiveTimeout,
            &timeout,
        )
        .map_err(|e| Error::Socket(e.into()))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Dumps every object of `request`'s kind (links, addresses, routes,
    /// ...); `what` names the request in errors.
    pub fn dump(
        &mut self,
        what: &str,
        request: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        self.exchange(what, request, NLM_F_DUMP)
    }

    /// Asks for one object (a link by name, ...) and returns the answers
    /// that came before the kernel's ack.
    pub fn get(
        &mut self,
        what: &str,
        request: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        self.exchange(what, request, NLM_F_ACK)
    }

    /// Sends a change (`NLM_F_CREATE`, `NLM_F_EXCL`, ... in `flags`) and
    /// waits for the kernel's ack.
    pub fn change(
        &mut self,
        what: &str,
        request: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), Error> {
        self.exchange(what, request, flags | NLM_F_ACK).map(drop)
    }

    fn exchange(
        &mut self,
        what: &str,
        request: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(Error::Socket)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            let datagram = self.receive()?;
            let mut rest = datagram.as_slice();
            while !rest.is_empty() {
                let frame = NetlinkBuffer::new_checked(rest).map_err(|e| Error::Decode {
                    what: what.to_owned(),
                    message: e.to_string(),
                })?;
                // Checked above: 16 <= len <= rest.len().
                let len = frame.length() as usize;
                let this = rest.get(..len).unwrap_or(rest);
                // Messages are 4-byte aligned within a datagram.
                rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
                if frame.sequence_number() != seq {
                    // A late answer to an earlier request that timed out.
                    continue;
                }
                let kind = frame.message_type();
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(this);
                match parsed.map(|m| m.payload) {
                    Ok(NetlinkPayload::Done(_)) => return Ok(answers),
                    Ok(NetlinkPayload::Error(e)) => match e.code {
                        None if !dump => return Ok(answers),
                        None => {}
                        Some(_) => {
                            return Err(Error::Refused {
                                what: what.to_owned(),
                                source: e.to_io(),
                            })
                        }
                    },
                    Ok(NetlinkPayload::InnerMessage(m)) => answers.push(m),
                    Ok(_) => {}
                    Err(e) if kind == NLMSG_DONE || kind == NLMSG_ERROR => {
                        return Err(Error::Decode {
                            what: what.to_owned(),
                            message: e.to_string(),
                        })
                    }
                    // One object this crate cannot decode (a newer kernel's
                    // attribute layout) must not hide all the others.
                    Err(e) => tracing::debug!(what, "skipping an undecodable netlink object: {e}"),
                }
            }
        }
    }

    /// One whole datagram, however large.
    fn receive(&self) -> Result<Vec<u8>, Error> {
        let mut probe: Vec<u8> = Vec::new();
        let len = retry_interrupted(|| {
            self.socket
                .recv(&mut probe, libc::MSG_PEEK | libc::MSG_TRUNC)
        })?;
        let mut buf = Vec::with_capacity(len.max(1));
        let got = retry_interrupted(|| self.socket.recv(&mut buf, 0))?;
        buf.truncate(got);
        Ok(buf)
    }
}

/// `f` again while a signal interrupts it: a socket with a receive timeout
/// is not restarted after a signal handler (the sandbox process has one
/// for SIGTERM, the agent for SIGCHLD).
fn retry_interrupted(mut f: impl FnMut() -> io::Result<usize>) -> Result<usize, Error> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map_err(Error::Socket),
        }
    }
}
