//! The host side of hybrid vsock: the Unix listener for host-initiated
//! connections (`CONNECT <port>\n`), outgoing Unix connections for
//! guest-initiated ones (`<path>_<port>`), the connection table, and the
//! order in which connections get RX buffers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, RxFill, Verdict};
use super::packet::{Header, Op, HEADER_LEN, HOST_CID, TYPE_STREAM};

/// Most connections at once; more are refused (RST or closed).
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Most host clients that connected but have not sent their CONNECT line.
pub(crate) const MAX_HANDSHAKES: usize = 32;
/// Longest CONNECT line accepted, newline included (`CONNECT 4294967295\n` is 19).
pub(crate) const MAX_CONNECT_LINE: usize = 32;
/// Most RSTs waiting for an RX buffer; beyond it they are dropped.
const MAX_PENDING_RST: usize = 1024;
/// Where ports for host-initiated connections start.
const FIRST_HOST_PORT: u32 = 1 << 30;
const LISTENER_TOKEN: u64 = 0;
const EVENT_BATCH: usize = 64;
const ACCEPT_BATCH: usize = 16;

/// A connection's address: our port and the guest's port.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

struct Entry {
    conn: Connection,
    token: u64,
    /// The events the stream is registered for; `None` when not in epoll.
    registered: Option<EventSet>,
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

enum Watched {
    Handshake(Handshake),
    Conn(ConnKey),
}

/// Routes packets between the guest and Unix sockets on the host.
pub(crate) struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<ConnKey, Entry>,
    watched: HashMap<u64, Watched>,
    handshakes: usize,
    next_token: u64,
    rx_ready: VecDeque<ConnKey>,
    rx_queued: HashSet<ConnKey>,
    rst_queue: VecDeque<Header>,
    next_host_port: u32,
}

impl Muxer {
    /// Listens on `uds_path` (replacing a stale socket file there).
    pub(crate) fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Self> {
        if fs::symlink_metadata(uds_path).is_ok_and(|m| m.file_type().is_socket()) {
            fs::remove_file(uds_path)?;
        }
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            epoll,
            conns: HashMap::new(),
            watched: HashMap::new(),
            handshakes: 0,
            next_token: LISTENER_TOKEN + 1,
            rx_ready: VecDeque::new(),
            rx_queued: HashSet::new(),
            rst_queue: VecDeque::new(),
            next_host_port: FIRST_HOST_PORT,
        })
    }

    /// The epoll fd that becomes readable when the host side has events.
    pub(crate) fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of open connections.
    pub(crate) fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether a packet is waiting for an RX buffer.
    pub(crate) fn has_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_ready.is_empty()
    }

    /// Drops every connection and pending handshake (device reset).
    pub(crate) fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        let tokens: Vec<u64> = self.watched.keys().copied().collect();
        for token in tokens {
            self.close_handshake(token);
        }
        self.rst_queue.clear();
        self.rx_ready.clear();
        self.rx_queued.clear();
    }

    /// Handles one batch of host-side events without blocking.
    pub(crate) fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENT_BATCH];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::warn!("vsock epoll wait failed: {e}");
                }
                return;
            }
        };
        for event in events.iter().take(n) {
            let token = event.data();
            if token == LISTENER_TOKEN {
                self.accept_clients();
                continue;
            }
            match self.watched.get(&token) {
                Some(Watched::Handshake(_)) => self.advance_handshake(token),
                Some(Watched::Conn(key)) => {
                    let key = *key;
                    if let Some(entry) = self.conns.get_mut(&key) {
                        let verdict = entry.conn.on_host_event(event.event_set());
                        self.apply(key, verdict);
                    }
                }
                // Closed earlier in this batch.
                None => {}
            }
        }
    }

    fn accept_clients(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("vsock accept failed: {e}");
                    return;
                }
            };
            if self.handshakes >= MAX_HANDSHAKES {
                tracing::debug!("too many pending vsock handshakes, closing a client");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.take_token();
            let added = self.epoll.ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            );
            if added.is_ok() {
                self.handshakes += 1;
                let line = Vec::with_capacity(MAX_CONNECT_LINE);
                self.watched
                    .insert(token, Watched::Handshake(Handshake { stream, line }));
            }
        }
    }

    fn take_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(LISTENER_TOKEN + 1);
        token
    }

    /// Reads the CONNECT line a byte at a time, so no stream data after the
    /// newline is consumed before the guest accepts.
    fn advance_handshake(&mut self, token: u64) {
        let Some(Watched::Handshake(hs)) = self.watched.get_mut(&token) else {
            return;
        };
        loop {
            let mut byte = [0u8; 1];
            match hs.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) if hs.line.len() + 1 < MAX_CONNECT_LINE => hs.line.push(byte[0]),
                Ok(_) => return self.close_handshake(token),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return self.close_handshake(token),
            }
        }
        let port = parse_connect_line(&hs.line);
        let Some(Watched::Handshake(hs)) = self.watched.remove(&token) else {
            return;
        };
        self.handshakes -= 1;
        let Some(port) = port else {
            tracing::debug!("vsock host client sent a bad CONNECT line");
            let _ = self.epoll_del(hs.stream.as_raw_fd());
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!("too many vsock connections, closing a host client");
            let _ = self.epoll_del(hs.stream.as_raw_fd());
            return;
        }
        let Some(local_port) = self.alloc_host_port(port) else {
            let _ = self.epoll_del(hs.stream.as_raw_fd());
            return;
        };
        let conn = Connection::host_initiated(hs.stream, self.guest_cid, local_port, port);
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        self.watched.insert(token, Watched::Conn(key));
        self.conns.insert(
            key,
            Entry {
                conn,
                token,
                registered: Some(EventSet::IN),
            },
        );
        self.refresh(key);
    }

    fn close_handshake(&mut self, token: u64) {
        if let Some(Watched::Handshake(hs)) = self.watched.remove(&token) {
            self.handshakes -= 1;
            let _ = self.epoll_del(hs.stream.as_raw_fd());
        }
    }

    fn alloc_host_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_host_port;
            self.next_host_port = self.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
            if !self.conns.contains_key(&ConnKey {
                local_port: port,
                peer_port,
            }) {
                return Some(port);
            }
        }
        None
    }

    fn epoll_del(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Handles a packet the guest sent.
    pub(crate) fn handle_guest_packet(&mut self, hdr: &Header, data: Option<&[u8]>) {
        // A guest cannot speak for another CID; answering would help it spoof.
        if hdr.src_cid != self.guest_cid {
            tracing::debug!(
                src_cid = hdr.src_cid,
                "dropping vsock packet with a foreign source CID"
            );
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let op = Op::from_raw(hdr.op);
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM || op.is_none() {
            tracing::debug!(?hdr, "vsock packet with bad destination, type or op");
            if self.conns.contains_key(&key) {
                self.apply(key, Verdict::Reset);
            } else {
                self.reply_rst(hdr);
            }
            return;
        }
        let Some(op) = op else { return };
        if let Some(entry) = self.conns.get_mut(&key) {
            let verdict = entry.conn.on_guest_packet(op, hdr, data);
            self.apply(key, verdict);
            return;
        }
        match op {
            Op::Request => self.connect_to_host(hdr),
            Op::Rst => {}
            _ => self.reply_rst(hdr),
        }
    }

    /// Resets the connection `hdr` (from a chain that failed to parse) names,
    /// if the guest owns it.
    pub(crate) fn reset_connection_of(&mut self, hdr: &Header) {
        if hdr.src_cid != self.guest_cid {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.conns.contains_key(&key) {
            self.apply(key, Verdict::Reset);
        }
    }

    /// Opens a guest-initiated connection to `<uds_path>_<port>`.
    fn connect_to_host(&mut self, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!("too many vsock connections, refusing guest request");
            return self.reply_rst(hdr);
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let key = ConnKey {
                    local_port: hdr.dst_port,
                    peer_port: hdr.src_port,
                };
                let token = self.take_token();
                let conn = Connection::guest_initiated(stream, self.guest_cid, hdr);
                self.watched.insert(token, Watched::Conn(key));
                self.conns.insert(
                    key,
                    Entry {
                        conn,
                        token,
                        registered: None,
                    },
                );
                self.refresh(key);
            }
            Err(e) => {
                tracing::debug!(path = ?path, "guest vsock connect refused: {e}");
                self.reply_rst(hdr);
            }
        }
    }

    /// Queues a RST answering `hdr` (never answers a RST).
    fn reply_rst(&mut self, hdr: &Header) {
        if hdr.op == Op::Rst.raw() {
            return;
        }
        let rst = Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: TYPE_STREAM,
            op: Op::Rst.raw(),
            ..Header::default()
        };
        self.queue_rst(rst);
    }

    fn queue_rst(&mut self, rst: Header) {
        if self.rst_queue.len() >= MAX_PENDING_RST {
            tracing::debug!("vsock RST queue full, dropping a RST");
            return;
        }
        self.rst_queue.push_back(rst);
    }

    /// Acts on a connection's verdict, then re-evaluates what it waits for.
    fn apply(&mut self, key: ConnKey, verdict: Verdict) {
        let verdict = match (verdict, self.conns.get(&key)) {
            (_, None) => return,
            (Verdict::Keep, Some(e)) if e.conn.finished() => Verdict::Reset,
            (v, _) => v,
        };
        match verdict {
            Verdict::Keep => self.refresh(key),
            Verdict::Close => self.remove(key),
            Verdict::Reset => {
                if let Some(entry) = self.conns.get(&key) {
                    let rst = entry.conn.header(Op::Rst);
                    self.queue_rst(rst);
                }
                self.remove(key);
            }
        }
    }

    /// Queues the connection for an RX buffer if it has a packet, and updates
    /// its epoll registration to what it now waits for.
    fn refresh(&mut self, key: ConnKey) {
        let Some(entry) = self.conns.get_mut(&key) else {
            return;
        };
        if entry.conn.wants_rx() && self.rx_queued.insert(key) {
            self.rx_ready.push_back(key);
        }
        // A hung-up stream reports HUP forever, so it leaves epoll for good.
        let want = (!entry.conn.host_hup()).then(|| entry.conn.interest());
        if want == entry.registered {
            return;
        }
        let fd = entry.conn.fd();
        let result = match (entry.registered, want) {
            (None, Some(ev)) => {
                self.epoll
                    .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, entry.token))
            }
            (Some(_), Some(ev)) => self.epoll.ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(ev, entry.token),
            ),
            (Some(_), None) => self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => entry.registered = want,
            Err(e) => {
                tracing::warn!("vsock epoll update failed: {e}");
                self.apply(key, Verdict::Reset);
            }
        }
    }

    fn remove(&mut self, key: ConnKey) {
        let Some(entry) = self.conns.remove(&key) else {
            return;
        };
        if entry.registered.is_some() {
            let _ = self.epoll_del(entry.conn.fd());
        }
        self.watched.remove(&entry.token);
        if self.rx_queued.remove(&key) {
            self.rx_ready.retain(|k| *k != key);
        }
    }

    /// Writes the next packet for the guest into `pkt`; `None` when there is
    /// nothing to send (the buffer is untouched).
    pub(crate) fn fill_rx<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Option<u32> {
        if let Some(rst) = self.rst_queue.pop_front() {
            rst.write(pkt);
            return Some(HEADER_LEN);
        }
        while let Some(key) = self.rx_ready.pop_front() {
            self.rx_queued.remove(&key);
            let Some(entry) = self.conns.get_mut(&key) else {
                continue;
            };
            match entry.conn.fill_rx(pkt) {
                RxFill::Packet(len) => {
                    self.apply(key, Verdict::Keep);
                    return Some(len);
                }
                RxFill::Nothing => self.apply(key, Verdict::Keep),
                RxFill::Reset => {
                    let rst = entry.conn.header(Op::Rst);
                    self.remove(key);
                    rst.write(pkt);
                    return Some(HEADER_LEN);
                }
            }
        }
        None
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.uds_path);
    }
}

/// Parses `CONNECT <port>` (the newline already stripped).
fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Connects without blocking: a host listener with a full backlog refuses
/// (EAGAIN) instead of stalling every other connection.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::parse_connect_line;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect_line(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT +1",
            b"CONNECT 10 ",
            b"connect 10",
            b"CONNECT\t10",
            b"",
            b"GET / HTTP/1.1",
        ] {
            assert_eq!(parse_connect_line(bad), None, "{bad:?}");
        }
    }
}
