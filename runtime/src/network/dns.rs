//! The host half of the DNS relay: the guest's queries to a loopback
//! nameserver (Docker's 127.0.0.11) arrive over vsock and are asked of
//! that nameserver from inside the container's network namespace.
//!
//! Each guest connection to host vsock port
//! [`husk_protocol::DNS_RELAY_VSOCK_PORT`] arrives on the Unix socket
//! `<sandbox>/vsock.sock_<port>` and carries one header line, `udp <ip>\n`
//! or `tcp <ip>\n` (at most [`MAX_HEADER`] bytes), then queries and
//! answers in DNS-over-TCP framing (2-byte big-endian length, message).
//! The relay asks only the addresses it was given, on port 53, over UDP or
//! one TCP connection as the header says.
//!
//! Everything from the guest is hostile: headers and frames are bounded,
//! every wait has a deadline, at most [`MAX_CONNECTIONS`] connections are
//! served at once (more are closed at once), and a bad connection only
//! ends itself.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Most guest connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest header line, newline included.
pub const MAX_HEADER: usize = 64;
/// The nameservers' port.
const DNS_PORT: u16 = 53;
/// How long a nameserver (and the guest, for the header and for taking
/// the answer) gets.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a guest connection may sit between queries before it is
/// closed (its slot is freed for others).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest DNS message (the framing's 16-bit length).
const MAX_MESSAGE: usize = u16::MAX as usize;

/// How the relay behaves; the tests shorten the waits.
#[derive(Debug, Clone)]
struct Limits {
    port: u16,
    answer: Duration,
    idle: Duration,
    connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            port: DNS_PORT,
            answer: ANSWER_TIMEOUT,
            idle: IDLE_TIMEOUT,
            connections: MAX_CONNECTIONS,
        }
    }
}

/// The running relay: its listener and connections are tasks of the tokio
/// runtime it was started in, and end when it is dropped.
#[derive(Debug)]
pub struct DnsRelay {
    task: JoinHandle<()>,
    socket: PathBuf,
}

impl DnsRelay {
    /// Listens on the Unix socket `socket` and relays to `nameservers`.
    /// Must be called within a tokio runtime whose threads are in the
    /// container's network namespace (the nameservers' sockets are made
    /// there).
    pub fn start(socket: &Path, nameservers: Vec<IpAddr>) -> io::Result<Self> {
        Self::start_with(socket, nameservers, Limits::default())
    }

    fn start_with(socket: &Path, nameservers: Vec<IpAddr>, limits: Limits) -> io::Result<Self> {
        let listener = UnixListener::bind(socket)?;
        let task = tokio::spawn(serve(listener, Arc::new(nameservers), limits));
        Ok(Self {
            task,
            socket: socket.to_owned(),
        })
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for DnsRelay {
    fn drop(&mut self) {
        // The listener task owns the connections' JoinSet: aborting it
        // aborts every connection too.
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn serve(listener: UnixListener, nameservers: Arc<Vec<IpAddr>>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("DNS relay: accept: {e}");
                    // Out of fds, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Reap finished connections so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(
                "DNS relay: {} connections already, closing one",
                limits.connections
            );
            continue;
        };
        let nameservers = Arc::clone(&nameservers);
        let limits = limits.clone();
        // The JoinSet aborts every connection when `serve` is aborted.
        connections.spawn(async move {
            if let Err(e) = relay(stream, &nameservers, &limits).await {
                tracing::debug!("DNS relay connection: {e}");
            }
            drop(slot);
        });
    }
}

/// The transport a header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("bad header {0:?}")]
    Header(String),
    #[error("{0} is not a nameserver to relay to")]
    NotAllowed(IpAddr),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("empty DNS message")]
    Empty,
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ConnError {
    move |source| ConnError::Io { what, source }
}

/// Serves one guest connection.
async fn relay(
    stream: UnixStream,
    nameservers: &[IpAddr],
    limits: &Limits,
) -> Result<(), ConnError> {
    let mut guest = BufReader::new(stream);
    let (transport, ip) = timeout(limits.answer, read_header(&mut guest))
        .await
        .map_err(|_| ConnError::Timeout("the header"))??;
    if !nameservers.contains(&ip) {
        return Err(ConnError::NotAllowed(ip));
    }
    let server = SocketAddr::new(ip, limits.port);
    let mut upstream = match transport {
        Transport::Udp => {
            let socket = UdpSocket::bind(SocketAddr::new(unspecified_like(ip), 0))
                .await
                .map_err(io_err("binding a UDP socket"))?;
            socket
                .connect(server)
                .await
                .map_err(io_err("connecting the UDP socket"))?;
            Upstream::Udp(socket)
        }
        Transport::Tcp => {
            let stream = timeout(limits.answer, TcpStream::connect(server))
                .await
                .map_err(|_| ConnError::Timeout("connecting to the nameserver"))?
                .map_err(io_err("connecting to the nameserver"))?;
            Upstream::Tcp(stream)
        }
    };
    let mut query = vec![0u8; MAX_MESSAGE];
    let mut answer = vec![0u8; MAX_MESSAGE];
    loop {
        // The next query, or the guest's goodbye.
        let len = match timeout(limits.idle, guest.read_u16()).await {
            Err(_) => return Err(ConnError::Timeout("waiting for a query")),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(io_err("reading a query")(e)),
            Ok(Ok(len)) => usize::from(len),
        };
        if len == 0 {
            return Err(ConnError::Empty);
        }
        let query = query.get_mut(..len).ok_or(ConnError::Empty)?;
        timeout(limits.answer, guest.read_exact(query))
            .await
            .map_err(|_| ConnError::Timeout("reading a query"))?
            .map_err(io_err("reading a query"))?;
        let answer_len = timeout(limits.answer, upstream.ask(query, &mut answer))
            .await
            .map_err(|_| ConnError::Timeout("the nameserver's answer"))??;
        let answer = answer.get(..answer_len).ok_or(ConnError::Empty)?;
        timeout(limits.answer, write_frame(guest.get_mut(), answer))
            .await
            .map_err(|_| ConnError::Timeout("handing the answer to the guest"))?
            .map_err(io_err("handing the answer to the guest"))?;
    }
}

/// Reads `udp <ip>\n` or `tcp <ip>\n`, at most [`MAX_HEADER`] bytes.
async fn read_header<R: AsyncRead + Unpin>(
    guest: &mut BufReader<R>,
) -> Result<(Transport, IpAddr), ConnError> {
    let mut line = Vec::with_capacity(MAX_HEADER);
    (&mut *guest)
        .take(MAX_HEADER as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(io_err("reading the header"))?;
    let text = String::from_utf8_lossy(&line);
    let Some(header) = text.strip_suffix('\n') else {
        return Err(ConnError::Header(text.into_owned()));
    };
    parse_header(header).ok_or_else(|| ConnError::Header(header.to_owned()))
}

fn parse_header(header: &str) -> Option<(Transport, IpAddr)> {
    let (transport, ip) = header.split_once(' ')?;
    let transport = match transport {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        _ => return None,
    };
    Some((transport, ip.parse().ok()?))
}

/// Writes one DNS-over-TCP frame.
async fn write_frame<W: AsyncWrite + Unpin>(out: &mut W, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message too long"))?;
    let mut frame = Vec::with_capacity(message.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    out.write_all(&frame).await?;
    out.flush().await
}

/// The nameserver side of one guest connection.
enum Upstream {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Upstream {
    /// Sends `query` and reads its answer into `answer`; returns its length.
    async fn ask(&mut self, query: &[u8], answer: &mut [u8]) -> Result<usize, ConnError> {
        match self {
            Upstream::Udp(socket) => {
                socket
                    .send(query)
                    .await
                    .map_err(io_err("sending a query"))?;
                loop {
                    let len = socket
                        .recv(answer)
                        .await
                        .map_err(io_err("receiving an answer"))?;
                    // A connected socket hears only the nameserver; still,
                    // a stray datagram (an answer to an earlier query)
                    // must not stand for this one's.
                    if len >= 2 && answer.get(..2) == query.get(..2) {
                        return Ok(len);
                    }
                }
            }
            Upstream::Tcp(stream) => {
                write_frame(stream, query)
                    .await
                    .map_err(io_err("sending a query"))?;
                let len = usize::from(
                    stream
                        .read_u16()
                        .await
                        .map_err(io_err("receiving an answer"))?,
                );
                let answer = answer.get_mut(..len).ok_or(ConnError::Empty)?;
                stream
                    .read_exact(answer)
                    .await
                    .map_err(io_err("receiving an answer"))?;
                Ok(len)
            }
        }
    }
}

/// The unspecified address of `ip`'s family.
fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests;
