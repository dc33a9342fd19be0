//! The ttrpc connection to `husk-agent` over the hybrid vsock Unix socket.
//!
//! The host connects to `<sandbox>/vsock.sock`, writes `CONNECT <port>\n`
//! and reads `OK <n>\n`; from then on the stream is the guest's vsock port.
//! Until the agent listens, the device refuses the connection (the Unix
//! stream is closed), so connecting is retried until a deadline.
//!
//! A booting sandbox does not poll: [`ReadyListener`] listens on
//! `<socket>_<READY_VSOCK_PORT>` before the VM starts, and the agent, once
//! it listens, connects there and writes the ready line; only then does the
//! host connect to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocol::agent_ttrpc::AgentServiceClient;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// Longest handshake reply accepted (`OK ` + a u32 + `\n` is at most 14).
const MAX_REPLY_LEN: usize = 32;
/// Pause between connection attempts while the guest boots.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// How long a client of a sandbox that is already up (a CLI verb, a
/// process proxy) waits for its agent.
pub const RUNNING_SANDBOX_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a short agent call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors connecting to the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent did not accept a connection before the deadline.
    #[error("agent not reachable at {socket} (port {port}) within {timeout:?}: {last}")]
    Timeout {
        /// The hybrid vsock socket.
        socket: PathBuf,
        /// The guest port.
        port: u32,
        /// The deadline given.
        timeout: Duration,
        /// The last attempt's failure.
        last: String,
    },
    /// The device answered the handshake with something other than `OK <n>`.
    #[error("unexpected hybrid vsock reply {0:?}")]
    BadReply(String),
    /// The guest did not say ready before the deadline.
    // "agent not reachable", as for a connection timeout: the words tools
    // (tests/nested/suite.sh) and users already look for.
    #[error("agent not reachable: the guest did not say ready on {socket} within {timeout:?}")]
    NotReady {
        /// The ready socket.
        socket: PathBuf,
        /// The deadline given.
        timeout: Duration,
    },
    /// The guest's ready connection carried something else than the ready line.
    #[error("unexpected ready message from the guest {0:?}")]
    BadReady(String),
    /// The ready socket could not be made or read.
    #[error("ready socket {socket}: {source}")]
    ReadySocket {
        /// The ready socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Where the guest says ready: the host side of its connections to
/// [`husk_protocol::READY_VSOCK_PORT`], listening from before the VM starts.
/// The socket file is removed on drop.
pub struct ReadyListener {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl ReadyListener {
    /// Listens on `<vsock_socket>_<READY_VSOCK_PORT>`, where the hybrid
    /// vsock device sends the guest's connections to that port.
    pub fn bind(vsock_socket: &Path) -> Result<Self, Error> {
        let path = ready_socket(vsock_socket);
        // A stale socket from an earlier sandbox of the same name.
        let _ = std::fs::remove_file(&path);
        let listener =
            tokio::net::UnixListener::bind(&path).map_err(|source| Error::ReadySocket {
                socket: path.clone(),
                source,
            })?;
        Ok(Self { listener, path })
    }

    /// Waits up to `timeout` for the guest's ready line. The guest is not
    /// trusted: a line longer than [`MAX_REPLY_LEN`] or other than
    /// [`husk_protocol::READY_LINE`] fails the boot.
    pub async fn wait(&self, timeout: Duration) -> Result<(), Error> {
        self.read_ready(timeout, false).await
    }

    /// Like [`wait`](Self::wait), and then waits (within the same
    /// `timeout`) for the guest to close its end of the connection, so
    /// that once the host's end is dropped no connection is left open in
    /// the guest: what a template is saved after.
    pub async fn wait_closed(&self, timeout: Duration) -> Result<(), Error> {
        self.read_ready(timeout, true).await
    }

    async fn read_ready(&self, timeout: Duration, to_end: bool) -> Result<(), Error> {
        let not_ready = || Error::NotReady {
            socket: self.path.clone(),
            timeout,
        };
        let io = |source| Error::ReadySocket {
            socket: self.path.clone(),
            source,
        };
        let read = async {
            let (mut stream, _) = self.listener.accept().await.map_err(io)?;
            // Up to the newline, not the end: the guest's close need not
            // reach us before its line does.
            let mut line = Vec::with_capacity(MAX_REPLY_LEN);
            while line.len() < MAX_REPLY_LEN && line.last() != Some(&b'\n') {
                match stream.read_u8().await {
                    Ok(byte) => line.push(byte),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(io(e)),
                }
            }
            if line != husk_protocol::READY_LINE.as_bytes() {
                return Err(Error::BadReady(String::from_utf8_lossy(&line).into_owned()));
            }
            if to_end {
                // Nothing may follow the line: the guest closes next.
                let mut rest = [0u8; MAX_REPLY_LEN];
                let n = stream.read(&mut rest).await.map_err(io)?;
                if n != 0 {
                    return Err(Error::BadReady(
                        String::from_utf8_lossy(&rest[..n]).into_owned(),
                    ));
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| not_ready())?
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `<vsock_socket>_<READY_VSOCK_PORT>`.
pub fn ready_socket(vsock_socket: &Path) -> PathBuf {
    let mut path = vsock_socket.as_os_str().to_owned();
    path.push(format!("_{}", husk_protocol::READY_VSOCK_PORT));
    PathBuf::from(path)
}

/// Why one attempt failed: try again, or give up.
#[derive(Debug)]
pub enum Attempt {
    /// The guest refused, or the stream failed: worth another attempt.
    Retry(String),
    /// The device answered something no retry will fix.
    Fatal(Error),
}

/// Connects to the agent listening on guest vsock `port` behind the hybrid
/// vsock socket `socket`, retrying until `timeout`, and returns its client.
pub async fn connect(
    socket: &Path,
    port: u32,
    timeout: Duration,
) -> Result<AgentServiceClient, Error> {
    let stream = connect_stream(socket, port, timeout).await?;
    let client = husk_protocol::ttrpc::r#async::Client::new(stream.into());
    Ok(AgentServiceClient::new(client))
}

/// Connects to the agent of a sandbox that is already up, behind its
/// hybrid vsock socket `socket`.
pub async fn connect_running(socket: &Path) -> Result<AgentServiceClient, Error> {
    connect(
        socket,
        husk_protocol::AGENT_VSOCK_PORT,
        RUNNING_SANDBOX_TIMEOUT,
    )
    .await
}

/// A ttrpc context for a short agent call.
pub fn ctx() -> husk_protocol::ttrpc::context::Context {
    ctx_with_timeout(CALL_TIMEOUT)
}

/// A ttrpc context for an agent call that may take up to `timeout`.
pub fn ctx_with_timeout(timeout: Duration) -> husk_protocol::ttrpc::context::Context {
    husk_protocol::ttrpc::context::with_timeout(
        i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX),
    )
}

/// The agent's own message from a ttrpc error.
pub fn agent_message(e: &husk_protocol::ttrpc::Error) -> String {
    match e {
        husk_protocol::ttrpc::Error::RpcStatus(status) => status.message().to_owned(),
        other => other.to_string(),
    }
}

/// The hybrid vsock handshake with retries; returns the connected stream.
pub async fn connect_stream(
    socket: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, Error> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no attempt");
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Error::Timeout {
                socket: socket.to_owned(),
                port,
                timeout,
                last,
            });
        }
        match tokio::time::timeout(remaining, try_connect(socket, port)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(Attempt::Fatal(e))) => return Err(e),
            Ok(Err(Attempt::Retry(why))) => {
                tracing::trace!(socket = %socket.display(), port, "agent not ready: {why}");
                last = why;
            }
            Err(_) => last = "handshake timed out".into(),
        }
        tokio::time::sleep(RETRY_INTERVAL.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

async fn try_connect(socket: &Path, port: u32) -> Result<UnixStream, Attempt> {
    let retry = |what: &str, e: std::io::Error| Attempt::Retry(format!("{what}: {e}"));
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|e| retry("connect", e))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| retry("write CONNECT", e))?;
    read_connect_reply(&mut stream).await?;
    Ok(stream)
}

/// Reads the device's answer to `CONNECT <port>` from `stream`: `OK <n>\n`
/// (the device's port for this connection) or a closed stream (the guest
/// refused). Reads byte by byte and stops at the newline, so the bytes
/// after it, which already belong to ttrpc, stay in the stream. The line is
/// what the guest side sends, so it is bounded and parsed strictly.
pub async fn read_connect_reply<R>(stream: &mut R) -> Result<u32, Attempt>
where
    R: AsyncRead + Unpin,
{
    let mut reply = Vec::with_capacity(MAX_REPLY_LEN);
    loop {
        let byte = match stream.read_u8().await {
            Ok(b) => b,
            // The device closes the stream when the guest refuses the port.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Attempt::Retry("connection refused by the guest".into()))
            }
            Err(e) => return Err(Attempt::Retry(format!("read reply: {e}"))),
        };
        if byte == b'\n' {
            break;
        }
        if reply.len() >= MAX_REPLY_LEN {
            return Err(Attempt::Fatal(Error::BadReply(
                String::from_utf8_lossy(&reply).into_owned(),
            )));
        }
        reply.push(byte);
    }
    parse_connect_reply(&reply).ok_or_else(|| {
        Attempt::Fatal(Error::BadReply(
            String::from_utf8_lossy(&reply).into_owned(),
        ))
    })
}

/// Parses `OK <port>` (newline already stripped): ASCII digits only, no
/// sign, no spaces, and a port that fits a u32.
fn parse_connect_reply(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"OK ")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    use super::*;

    /// A fake hybrid vsock socket: refuses `refusals` connections (closes
    /// them after the CONNECT line), then answers `reply` and echoes.
    async fn fake_device(listener: UnixListener, refusals: usize, reply: &'static str) {
        for n in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let mut stream = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            if stream.read_line(&mut line).await.is_err() || line != "CONNECT 1024\n" {
                return;
            }
            if n < refusals {
                continue;
            }
            let mut stream = stream.into_inner();
            let _ = stream.write_all(reply.as_bytes()).await;
            let mut buf = [0u8; 16];
            while let Ok(len) = stream.read(&mut buf).await {
                if len == 0
                    || stream
                        .write_all(buf.get(..len).unwrap_or_default())
                        .await
                        .is_err()
                {
                    return;
                }
            }
            return;
        }
    }

    #[tokio::test]
    async fn retries_until_the_guest_accepts_then_hands_over_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let device = tokio::spawn(fake_device(listener, 3, "OK 1073741824\nPING"));
        let mut stream = connect_stream(&path, 1024, Duration::from_secs(5))
            .await
            .unwrap();
        // Bytes after the reply line were not eaten by the handshake.
        let mut first = [0u8; 4];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"PING");
        stream.write_all(b"echo").await.unwrap();
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"echo");
        drop(stream);
        device.await.unwrap();
    }

    /// A guest saying `message` on the ready socket of `vsock`.
    async fn guest_says(vsock: &Path, message: &[u8]) {
        let mut stream = UnixStream::connect(ready_socket(vsock)).await.unwrap();
        stream.write_all(message).await.unwrap();
    }

    #[test]
    fn the_ready_socket_is_where_the_device_sends_guest_connections_to_port_1026() {
        assert_eq!(
            ready_socket(Path::new("/run/husk/abc/vsock.sock")),
            Path::new("/run/husk/abc/vsock.sock_1026")
        );
    }

    #[tokio::test]
    async fn the_ready_line_ends_the_wait_and_the_socket_goes_with_the_listener() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = dir.path().join("vsock.sock");
        let ready = ReadyListener::bind(&vsock).unwrap();
        let (waited, ()) = tokio::join!(
            ready.wait(Duration::from_secs(5)),
            guest_says(&vsock, b"READY\n")
        );
        waited.unwrap();
        drop(ready);
        assert!(!ready_socket(&vsock).exists());
    }

    #[tokio::test]
    async fn wait_closed_returns_only_once_the_guest_closed_and_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = dir.path().join("vsock.sock");
        let ready = ReadyListener::bind(&vsock).unwrap();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let guest = async {
            let mut stream = UnixStream::connect(ready_socket(&vsock)).await.unwrap();
            stream.write_all(b"READY\n").await.unwrap();
            // Still open: the wait must not end yet.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = tx.send(());
        };
        let waiting = async {
            let r = ready.wait_closed(Duration::from_secs(5)).await;
            (r, rx.try_recv().is_ok())
        };
        let ((waited, guest_was_done), ()) = tokio::join!(waiting, guest);
        waited.unwrap();
        assert!(guest_was_done);

        let guest = async {
            let mut stream = UnixStream::connect(ready_socket(&vsock)).await.unwrap();
            let _ = stream.write_all(b"READY\nmore").await;
        };
        let (waited, ()) = tokio::join!(ready.wait_closed(Duration::from_secs(5)), guest);
        assert!(
            matches!(waited, Err(Error::BadReady(ref got)) if got == "more"),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_guest_that_never_says_ready_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let ready = ReadyListener::bind(&dir.path().join("vsock.sock")).unwrap();
        let err = ready.wait(Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, Error::NotReady { .. }), "{err}");
        assert!(
            err.to_string().starts_with("agent not reachable: "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn anything_but_the_ready_line_fails_and_is_bounded() {
        let long = vec![b'R'; 10_000];
        for message in [&b"READY"[..], b"READX\n", b"NOPE\n", &long] {
            let dir = tempfile::tempdir().unwrap();
            let vsock = dir.path().join("vsock.sock");
            let ready = ReadyListener::bind(&vsock).unwrap();
            let guest = async {
                let mut stream = UnixStream::connect(ready_socket(&vsock)).await.unwrap();
                // The host stops reading at the bound: the write may fail.
                let _ = stream.write_all(message).await;
            };
            let (waited, ()) = tokio::join!(ready.wait(Duration::from_secs(5)), guest);
            match waited {
                Err(Error::BadReady(got)) => assert!(got.len() <= MAX_REPLY_LEN),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(message)),
            }
        }
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_when_nothing_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let err = connect_stream(&path, 1024, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { port: 1024, .. }), "{err}");
    }

    #[tokio::test]
    async fn a_malformed_reply_is_an_error_not_a_retry() {
        for reply in ["NOPE\n", "OK x\n", "OK 1 2\n"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("vsock.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let device = tokio::spawn(fake_device(listener, 0, reply));
            let err = connect_stream(&path, 1024, Duration::from_secs(5))
                .await
                .unwrap_err();
            assert!(matches!(err, Error::BadReply(_)), "{reply:?}: {err}");
            device.abort();
        }
    }

    #[test]
    fn reply_lines_parse_strictly() {
        assert_eq!(parse_connect_reply(b"OK 1073741824"), Some(1 << 30));
        assert_eq!(parse_connect_reply(b"OK 4294967295"), Some(u32::MAX));
        for bad in [
            &b"OK 4294967296"[..],
            b"OK ",
            b"OK +1",
            b"OK -1",
            b"OK 1 ",
            b"ok 1",
            b"OK\t1",
            b"",
        ] {
            assert_eq!(parse_connect_reply(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_reply_is_read_up_to_its_newline_and_no_further() {
        let mut wire: &[u8] = b"OK 7\n\0\0\0\x10ttrpc";
        assert_eq!(read_connect_reply(&mut wire).await.unwrap(), 7);
        assert_eq!(wire, b"\0\0\0\x10ttrpc");
        let mut refused: &[u8] = b"OK 7";
        assert!(matches!(
            read_connect_reply(&mut refused).await,
            Err(Attempt::Retry(_))
        ));
    }

    #[tokio::test]
    async fn an_endless_reply_line_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let long: &'static str = Box::leak("OK 1".repeat(1000).into_boxed_str());
        let device = tokio::spawn(fake_device(listener, 0, long));
        let err = connect_stream(&path, 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BadReply(ref r) if r.len() == MAX_REPLY_LEN));
        device.abort();
    }
}
