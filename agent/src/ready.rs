//! Telling the host the agent is ready: once the ttrpc server listens, one
//! connection to the host's [`husk_protocol::READY_VSOCK_PORT`] carrying
//! [`husk_protocol::READY_LINE`].
//!
//! The host listens there before the VM starts, so it learns of the agent
//! the moment it can be reached instead of polling its port through the
//! boot. A failure is only logged: the host then times out the boot, as it
//! would for an agent that never started.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::dns_relay::{Connector, HostAddr};

/// How long the connection and the write may take: the host is already
/// listening, so anything slower means it is not.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The host's ready socket in the guest: vsock CID 2, the ready port.
pub fn host_default() -> HostAddr {
    HostAddr::Vsock {
        cid: tokio_vsock::VMADDR_CID_HOST,
        port: husk_protocol::READY_VSOCK_PORT,
    }
}

/// Connects to `host` and writes the ready line.
pub async fn signal(host: &HostAddr) -> std::io::Result<()> {
    let send = async {
        let mut stream = host.connect().await?;
        stream
            .write_all(husk_protocol::READY_LINE.as_bytes())
            .await?;
        stream.shutdown().await
    };
    tokio::time::timeout(READY_TIMEOUT, send)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn the_guest_says_ready_on_the_hosts_ready_port() {
        assert_eq!(host_default().to_string(), "vsock:2:1026");
    }

    #[tokio::test]
    async fn the_host_reads_exactly_the_ready_line_then_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let host = HostAddr::Unix(path);
        let (sent, accepted) = tokio::join!(signal(&host), listener.accept());
        sent.unwrap();
        let (mut stream, _) = accepted.unwrap();
        let mut got = String::new();
        stream.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "READY\n");
    }

    #[tokio::test]
    async fn nobody_listening_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostAddr::Unix(dir.path().join("absent.sock"));
        assert!(signal(&host).await.is_err());
    }
}
