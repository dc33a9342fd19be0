//! The guest side of the DNS relay.
//!
//! Docker's embedded DNS server listens on 127.0.0.11 inside the container's
//! network namespace on the host, which the guest cannot reach: its loopback
//! is its own. So for each such loopback nameserver (`dns_relay` in
//! CreateSandbox) the agent listens on UDP and TCP `<ip>:53` in the guest
//! and relays every query over a vsock stream to the host (CID 2, port
//! [`husk_protocol::DNS_RELAY_VSOCK_PORT`]), which asks the real server from
//! inside the namespace.
//!
//! Wire format per vsock connection: a header line `udp <ip>\n` or
//! `tcp <ip>\n`, then DNS-over-TCP framing both ways (2-byte big-endian
//! length, then the message). A UDP query gets a connection of its own; a
//! TCP client gets one host connection for as long as it stays.
//!
//! Bounded: at most [`MAX_IN_FLIGHT`] queries or TCP clients at once (more
//! are dropped, and resolvers retry), [`TIMEOUT`] for every answer and
//! every idle TCP client, messages of [`MIN_MESSAGE`] to 65535 bytes.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

use crate::error::{AgentError, Result};

/// How long one answer (connecting to the host included) or one idle TCP
/// client may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Queries and TCP clients relayed at once, over every address.
pub const MAX_IN_FLIGHT: usize = 64;
/// Most relayed nameservers (resolv.conf uses three).
pub const MAX_ADDRESSES: usize = 8;
/// A DNS message is at least its 12-byte header.
pub const MIN_MESSAGE: usize = 12;
/// The longest header line the host accepts, newline included.
pub const MAX_HEADER_LEN: usize = 64;
/// The DNS port the relay listens on in the guest.
pub const DNS_PORT: u16 = 53;

/// The transport a query came in on, named in the header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One query, one answer.
    Udp,
    /// A stream of framed queries.
    Tcp,
}

/// The header line that opens a relay connection: `udp <ip>\n`.
pub fn header(transport: Transport, nameserver: IpAddr) -> String {
    let t = match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    };
    format!("{t} {nameserver}\n")
}

/// Writes one length-prefixed DNS message.
pub async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    message: &[u8],
) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .ok()
        .filter(|&l| usize::from(l) >= MIN_MESSAGE)
        .ok_or_else(|| bad_data(format!("DNS message of {} bytes", message.len())))?;
    // One write for length and message: one vsock packet, not two.
    let mut frame = Vec::with_capacity(2 + message.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one length-prefixed DNS message; `None` at a clean end of stream
/// (before a length).
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut len[1..]).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len < MIN_MESSAGE {
        return Err(bad_data(format!("DNS message of {len} bytes")));
    }
    let mut message = vec![0; len];
    r.read_exact(&mut message).await?;
    Ok(Some(message))
}

fn bad_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A byte stream to the host's relay.
pub trait RelayStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> RelayStream for T {}

/// Opens connections to the host's relay; injectable so host tests can
/// stand in for the host with a Unix or TCP socket.
#[async_trait]
pub trait Connector: Send + Sync {
    /// A new connection to the host's relay.
    async fn connect(&self) -> io::Result<Box<dyn RelayStream>>;
}

/// Where the host's relay is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAddr {
    /// A vsock address (the guest: CID 2, port 1025).
    Vsock {
        /// Context id (2 is the host).
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A Unix socket (host tests).
    Unix(PathBuf),
    /// A TCP address (host tests).
    Tcp(SocketAddr),
}

impl Default for HostAddr {
    fn default() -> Self {
        HostAddr::Vsock {
            cid: tokio_vsock::VMADDR_CID_HOST,
            port: husk_protocol::DNS_RELAY_VSOCK_PORT,
        }
    }
}

impl FromStr for HostAddr {
    type Err = String;

    /// `vsock:CID:PORT`, `unix:PATH` or `tcp:IP:PORT`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid relay address {s:?}: expected vsock:CID:PORT, unix:PATH or tcp:IP:PORT"
            )
        };
        if let Some(rest) = s.strip_prefix("vsock:") {
            let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
            return Ok(HostAddr::Vsock {
                cid: cid.parse().map_err(|_| bad())?,
                port: port.parse().map_err(|_| bad())?,
            });
        }
        if let Some(path) = s.strip_prefix("unix:").filter(|p| !p.is_empty()) {
            return Ok(HostAddr::Unix(path.into()));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            return Ok(HostAddr::Tcp(addr.parse().map_err(|_| bad())?));
        }
        Err(bad())
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            HostAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            HostAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

#[async_trait]
impl Connector for HostAddr {
    async fn connect(&self) -> io::Result<Box<dyn RelayStream>> {
        Ok(match self {
            HostAddr::Vsock { cid, port } => Box::new(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
            ),
            HostAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            HostAddr::Tcp(addr) => Box::new(TcpStream::connect(addr).await?),
        })
    }
}

/// Checks the nameservers to relay: loopback addresses only (anything else
/// the guest reaches through its own NICs), at most [`MAX_ADDRESSES`],
/// duplicates dropped.
pub fn parse_addresses(addresses: &[String]) -> Result<Vec<IpAddr>> {
    if addresses.len() > MAX_ADDRESSES {
        return Err(AgentError::InvalidArgument(format!(
            "{} DNS relay addresses: at most {MAX_ADDRESSES}",
            addresses.len()
        )));
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for a in addresses {
        let ip: IpAddr = a.parse().map_err(|_| {
            AgentError::InvalidArgument(format!("DNS relay address {a:?} is not an IP address"))
        })?;
        if !ip.is_loopback() {
            return Err(AgentError::InvalidArgument(format!(
                "DNS relay address {ip} is not a loopback address"
            )));
        }
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// A running relay. [`DnsRelay::stop`] stops it and waits until its ports
/// are free; dropping it stops it too, in the background.
pub struct DnsRelay {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
}

impl DnsRelay {
    /// Listens on UDP and TCP `<ip>:<port>` for each address (port is
    /// [`DNS_PORT`] in the guest; 0 lets tests pick free ones), relaying to
    /// the host through `connector`. Must run inside a tokio runtime.
    pub fn start(
        addresses: &[IpAddr],
        port: u16,
        connector: Arc<dyn Connector>,
    ) -> Result<DnsRelay> {
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let (stop, stopped) = watch::channel(false);
        let mut relay = DnsRelay {
            tasks: Vec::new(),
            stop,
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        // Binding with std sockets keeps this synchronous: no lock of the
        // caller's is held across an await, and a failure leaves nothing
        // running (dropping `relay` aborts what was started).
        for &ip in addresses {
            let addr = SocketAddr::new(ip, port);
            let bind_err =
                |proto: &str, e| AgentError::io(format!("DNS relay: binding {proto} {addr}"), e);
            let udp = std::net::UdpSocket::bind(addr).map_err(|e| bind_err("UDP", e))?;
            udp.set_nonblocking(true).map_err(|e| bind_err("UDP", e))?;
            let udp = UdpSocket::from_std(udp).map_err(|e| bind_err("UDP", e))?;
            let tcp = std::net::TcpListener::bind(addr).map_err(|e| bind_err("TCP", e))?;
            tcp.set_nonblocking(true).map_err(|e| bind_err("TCP", e))?;
            let tcp = TcpListener::from_std(tcp).map_err(|e| bind_err("TCP", e))?;
            relay
                .udp
                .push(udp.local_addr().map_err(|e| bind_err("UDP", e))?);
            relay
                .tcp
                .push(tcp.local_addr().map_err(|e| bind_err("TCP", e))?);
            relay.tasks.push(tokio::spawn(serve_udp(
                Arc::new(udp),
                ip,
                Arc::clone(&connector),
                Arc::clone(&limit),
                stopped.clone(),
            )));
            relay.tasks.push(tokio::spawn(serve_tcp(
                tcp,
                ip,
                Arc::clone(&connector),
                Arc::clone(&limit),
                stopped.clone(),
            )));
            tracing::info!(%addr, "DNS relay listening");
        }
        Ok(relay)
    }

    /// The UDP addresses listened on.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }

    /// The TCP addresses listened on.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp
    }
}

impl DnsRelay {
    /// Stops every listener and every query in flight, and returns once
    /// their sockets are closed (so the same ports can be bound again).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for DnsRelay {
    fn drop(&mut self) {
        // Each listener owns the JoinSet of its queries: aborting it drops
        // the set, which aborts them too.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Resolves once the relay is told to stop (or is dropped).
async fn stopping(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Asks the host for the answer to one query.
async fn exchange(
    connector: &dyn Connector,
    transport: Transport,
    nameserver: IpAddr,
    query: &[u8],
) -> io::Result<Vec<u8>> {
    let mut host = connector.connect().await?;
    host.write_all(header(transport, nameserver).as_bytes())
        .await?;
    write_frame(&mut host, query).await?;
    read_frame(&mut host).await?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the host closed without an answer",
        )
    })
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    nameserver: IpAddr,
    connector: Arc<dyn Connector>,
    limit: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut queries = JoinSet::new();
    // The largest UDP payload; a longer datagram is truncated and then
    // answered with garbage by nobody: the server sees a bad message.
    let mut buf = vec![0u8; 65535];
    loop {
        while queries.try_join_next().is_some() {}
        let received = tokio::select! {
            _ = stopping(&mut stopped) => break,
            r = socket.recv_from(&mut buf) => r,
        };
        let (len, client) = match received {
            Ok(r) => r,
            Err(err) => {
                tracing::debug!(%err, "DNS relay: UDP receive");
                // Do not spin on an error that repeats.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if len < MIN_MESSAGE {
            continue;
        }
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::debug!(%client, "DNS relay busy: UDP query dropped");
            continue;
        };
        let query = buf[..len].to_vec();
        let (socket, connector) = (Arc::clone(&socket), Arc::clone(&connector));
        queries.spawn(async move {
            let _permit = permit;
            match timeout(
                TIMEOUT,
                exchange(&*connector, Transport::Udp, nameserver, &query),
            )
            .await
            {
                Ok(Ok(answer)) => {
                    if let Err(err) = socket.send_to(&answer, client).await {
                        tracing::debug!(%client, %err, "DNS relay: UDP answer");
                    }
                }
                Ok(Err(err)) => tracing::debug!(%err, "DNS relay: UDP query"),
                Err(_) => tracing::debug!("DNS relay: UDP query timed out"),
            }
        });
    }
    // The queries hold the socket too: it closes when the last one is gone.
    queries.shutdown().await;
}

async fn serve_tcp(
    listener: TcpListener,
    nameserver: IpAddr,
    connector: Arc<dyn Connector>,
    limit: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut clients = JoinSet::new();
    loop {
        while clients.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = stopping(&mut stopped) => break,
            r = listener.accept() => r,
        };
        let (stream, client) = match accepted {
            Ok(r) => r,
            Err(err) => {
                tracing::debug!(%err, "DNS relay: TCP accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::debug!(%client, "DNS relay busy: TCP client refused");
            continue;
        };
        let connector = Arc::clone(&connector);
        clients.spawn(async move {
            let _permit = permit;
            if let Err(err) = relay_tcp(stream, nameserver, &*connector).await {
                tracing::debug!(%client, %err, "DNS relay: TCP client");
            }
        });
    }
    clients.shutdown().await;
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} took over {TIMEOUT:?}"),
    )
}

/// Relays one TCP client's queries, one at a time, over one host
/// connection opened at its first query.
async fn relay_tcp(
    mut client: TcpStream,
    nameserver: IpAddr,
    connector: &dyn Connector,
) -> io::Result<()> {
    let mut host: Option<Box<dyn RelayStream>> = None;
    loop {
        let query = match timeout(TIMEOUT, read_frame(&mut client)).await {
            // An idle client is closed, as DNS servers do.
            Err(_) => return Ok(()),
            Ok(frame) => match frame? {
                Some(q) => q,
                None => return Ok(()),
            },
        };
        let answer = timeout(TIMEOUT, async {
            let stream = match &mut host {
                Some(s) => s,
                None => {
                    let mut s = connector.connect().await?;
                    s.write_all(header(Transport::Tcp, nameserver).as_bytes())
                        .await?;
                    host.insert(s)
                }
            };
            write_frame(stream, &query).await?;
            read_frame(stream).await?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the host closed without an answer",
                )
            })
        })
        .await
        .map_err(|_| timed_out("an answer"))??;
        timeout(TIMEOUT, write_frame(&mut client, &answer))
            .await
            .map_err(|_| timed_out("writing an answer"))??;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, BufReader};

    fn query(id: u8) -> Vec<u8> {
        let mut q = vec![0u8; MIN_MESSAGE + 5];
        q[1] = id;
        q
    }

    #[tokio::test]
    async fn frames_round_trip_and_are_bounded() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write_frame(&mut a, &query(1)).await.unwrap();
        let max = vec![7u8; 65535];
        write_frame(&mut a, &max).await.unwrap();
        assert_eq!(read_frame(&mut b).await.unwrap(), Some(query(1)));
        assert_eq!(read_frame(&mut b).await.unwrap(), Some(max));
        // Too long, too short.
        assert!(write_frame(&mut a, &vec![0; 65536]).await.is_err());
        assert!(write_frame(&mut a, &[0; MIN_MESSAGE - 1]).await.is_err());
        drop(a);
        // Clean end of stream.
        assert_eq!(read_frame(&mut b).await.unwrap(), None);

        // A short length, a truncated message, half a length: errors.
        for bad in [&[0u8, 3, 1, 2, 3][..], &[0, 20, 1, 2], &[0]] {
            let (mut a, mut b) = tokio::io::duplex(64);
            a.write_all(bad).await.unwrap();
            drop(a);
            assert!(read_frame(&mut b).await.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_and_addresses() {
        assert_eq!(
            header(Transport::Udp, "127.0.0.11".parse().unwrap()),
            "udp 127.0.0.11\n"
        );
        assert_eq!(header(Transport::Tcp, "::1".parse().unwrap()), "tcp ::1\n");
        let longest = header(
            Transport::Tcp,
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
                .parse()
                .unwrap(),
        );
        assert!(longest.len() <= MAX_HEADER_LEN);

        let ok =
            parse_addresses(&["127.0.0.11".into(), "::1".into(), "127.0.0.11".into()]).unwrap();
        assert_eq!(ok.len(), 2);
        assert!(parse_addresses(&["8.8.8.8".into()]).is_err());
        assert!(parse_addresses(&["localhost".into()]).is_err());
        assert!(parse_addresses(&vec!["127.0.0.1".to_string(); MAX_ADDRESSES + 1]).is_err());

        assert_eq!(HostAddr::default().to_string(), "vsock:2:1025");
        for s in ["vsock:2:1025", "unix:/run/x.sock", "tcp:127.0.0.1:53"] {
            assert_eq!(s.parse::<HostAddr>().unwrap().to_string(), s);
        }
        for s in ["vsock:2", "unix:", "tcp:x", "udp:1.2.3.4:5"] {
            assert!(s.parse::<HostAddr>().is_err(), "{s}");
        }
    }

    /// A stand-in for the host's relay on a Unix socket: checks the header,
    /// answers each query with itself and the first byte set to 0x80 (the
    /// QR bit), after `delay`. Counts connections.
    struct FakeHost {
        path: PathBuf,
        connections: Arc<AtomicUsize>,
        _dir: tempfile::TempDir,
    }

    fn fake_host(delay: Duration) -> FakeHost {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    let mut line = String::new();
                    stream.read_line(&mut line).await.unwrap();
                    assert!(
                        line == "udp 127.0.0.1\n" || line == "tcp 127.0.0.1\n",
                        "{line:?}"
                    );
                    while let Ok(Some(mut q)) = read_frame(&mut stream).await {
                        tokio::time::sleep(delay).await;
                        q[0] = 0x80;
                        if write_frame(stream.get_mut(), &q).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeHost {
            path,
            connections,
            _dir: dir,
        }
    }

    fn relay_to(host: &FakeHost) -> DnsRelay {
        let connector: Arc<dyn Connector> = Arc::new(HostAddr::Unix(host.path.clone()));
        DnsRelay::start(&["127.0.0.1".parse().unwrap()], 0, connector).unwrap()
    }

    async fn udp_ask(to: SocketAddr, q: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(q, to).await.unwrap();
        let mut buf = vec![0; 65535];
        let (n, _) = timeout(wait, socket.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(buf[..n].to_vec())
    }

    #[tokio::test]
    async fn relays_udp_and_tcp_queries() {
        let host = fake_host(Duration::ZERO);
        let relay = relay_to(&host);

        let answer = udp_ask(relay.udp_addrs()[0], &query(1), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer[0], 0x80);
        assert_eq!(answer[1], 1);
        // Too short to be DNS: dropped.
        assert!(
            udp_ask(relay.udp_addrs()[0], &[1, 2, 3], Duration::from_millis(300))
                .await
                .is_none()
        );

        let mut tcp = TcpStream::connect(relay.tcp_addrs()[0]).await.unwrap();
        for id in 2..5 {
            write_frame(&mut tcp, &query(id)).await.unwrap();
            let answer = read_frame(&mut tcp).await.unwrap().unwrap();
            assert_eq!((answer[0], answer[1]), (0x80, id));
        }
        // One connection for the UDP query, one for the whole TCP client.
        assert_eq!(host.connections.load(Ordering::SeqCst), 2);

        // Stopping the relay closes the clients and frees the ports.
        let (udp, tcp_addr) = (relay.udp_addrs()[0], relay.tcp_addrs()[0]);
        relay.stop().await;
        assert!(read_frame(&mut tcp)
            .await
            .map(|f| f.is_none())
            .unwrap_or(true));
        std::net::UdpSocket::bind(udp).expect("UDP port free");
        std::net::TcpListener::bind(tcp_addr).expect("TCP port free");
    }

    #[tokio::test]
    async fn at_most_max_in_flight_queries() {
        let host = fake_host(Duration::from_millis(1500));
        let relay = relay_to(&host);
        let to = relay.udp_addrs()[0];
        let asks: Vec<_> = (0..MAX_IN_FLIGHT + 16)
            .map(|i| {
                tokio::spawn(
                    async move { udp_ask(to, &query(i as u8), Duration::from_secs(4)).await },
                )
            })
            .collect();
        let mut answered = 0;
        for a in asks {
            answered += usize::from(a.await.unwrap().is_some());
        }
        assert_eq!(answered, MAX_IN_FLIGHT);
        assert_eq!(host.connections.load(Ordering::SeqCst), MAX_IN_FLIGHT);
    }

    #[tokio::test]
    async fn a_silent_host_times_out_and_frees_the_slot() {
        let host = fake_host(Duration::from_secs(3600));
        let relay = relay_to(&host);
        let started = std::time::Instant::now();
        let mut tcp = TcpStream::connect(relay.tcp_addrs()[0]).await.unwrap();
        write_frame(&mut tcp, &query(9)).await.unwrap();
        // The relay gives up after TIMEOUT and closes the client.
        let end = timeout(TIMEOUT * 2, read_frame(&mut tcp)).await.unwrap();
        assert!(end.map(|f| f.is_none()).unwrap_or(true));
        assert!(started.elapsed() >= TIMEOUT);
    }
}
