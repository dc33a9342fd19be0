//! Process standard I/O: pipes or a pseudo-terminal on the container side,
//! non-blocking streams on the agent side.
//!
//! Nothing is read from a process until the host asks (`ReadStdout`), so the
//! only buffering is the kernel's pipe or pty buffer: a slow reader makes the
//! writer block (backpressure), and no output is ever dropped.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::error::{AgentError, Result};

/// One end of a pipe or pty, read or written without blocking a thread.
pub struct Stream {
    fd: AsyncFd<std::fs::File>,
}

impl Stream {
    /// Wraps a file descriptor; it is switched to non-blocking mode.
    pub fn new(fd: OwnedFd) -> Result<Self> {
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)
            .map_err(|e| AgentError::errno("reading stream flags", e))?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))
            .map_err(|e| AgentError::errno("making stream non-blocking", e))?;
        // SAFETY: the AsyncFd owns the File, so the descriptor stays open
        // for as long as it is registered.
        let fd = unsafe {
            AsyncFd::register_with_interest(
                std::fs::File::from(fd),
                Interest::READABLE | Interest::WRITABLE,
            )
        }
        .map_err(|e| AgentError::io("registering stream", e.into()))?;
        Ok(Self { fd })
    }

    /// Reads at most `max` bytes, waiting until some are there. An empty
    /// result means end of stream (for a pty: the last holder of its slave
    /// side is gone).
    pub async fn read(&self, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; max];
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| fd.get_ref().read(&mut buf)) {
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                // A pty master reads EIO once its slave side is closed.
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EIO) => return Ok(Vec::new()),
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`, waiting while the reader is slow.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| fd.get_ref().write(data)) {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// The underlying descriptor (for terminal ioctls).
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

/// The container's side of its standard I/O pipes.
pub struct ChildPipes {
    /// Read end of the stdin pipe.
    pub stdin: OwnedFd,
    /// Write end of the stdout pipe.
    pub stdout: OwnedFd,
    /// Write end of the stderr pipe.
    pub stderr: OwnedFd,
}

/// The agent's side of a process's standard I/O pipes.
pub struct HostPipes {
    /// Write end of the stdin pipe.
    pub stdin: OwnedFd,
    /// Read end of the stdout pipe.
    pub stdout: OwnedFd,
    /// Read end of the stderr pipe.
    pub stderr: OwnedFd,
}

/// Creates the three stdio pipes of a process (close-on-exec on the agent side).
pub fn pipes() -> Result<(HostPipes, ChildPipes)> {
    let pipe =
        || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| AgentError::errno("creating pipe", e));
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    Ok((
        HostPipes {
            stdin: stdin_w,
            stdout: stdout_r,
            stderr: stderr_r,
        },
        ChildPipes {
            stdin: stdin_r,
            stdout: stdout_w,
            stderr: stderr_w,
        },
    ))
}

/// A Unix socket on which the container engine sends the master side of a
/// process's new pseudo-terminal (the OCI `--console-socket` protocol).
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// How long the engine may take to send the terminal once the process exists.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

impl ConsoleSocket {
    /// Listens at `path` (which must not exist yet).
    pub fn bind(path: &Path) -> Result<Self> {
        let listener = UnixListener::bind(path)
            .map_err(|e| AgentError::io(format!("binding console socket {}", path.display()), e))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// The path to hand to the container engine.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the pty master. The engine connects while the container is
    /// being created, so this is called after creation returned.
    pub fn receive_master(&self) -> Result<OwnedFd> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| AgentError::io("console socket", e))?;
        let deadline = std::time::Instant::now() + CONSOLE_TIMEOUT;
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() > deadline {
                        return Err(AgentError::Engine(
                            "the container engine never sent the terminal".into(),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(err) => return Err(AgentError::io("accepting on console socket", err)),
            }
        };
        stream
            .set_read_timeout(Some(CONSOLE_TIMEOUT))
            .map_err(|e| AgentError::io("console socket", e))?;
        let mut name = [0u8; 256];
        let mut iov = [io::IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| AgentError::errno("receiving the terminal", e))?;
        let mut received: Vec<OwnedFd> = Vec::new();
        for cmsg in msg
            .cmsgs()
            .map_err(|e| AgentError::errno("reading terminal message", e))?
        {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                // SAFETY: SCM_RIGHTS hands us fresh descriptors that nothing
                // else owns.
                received.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }),
                );
            }
        }
        let mut fds = received.into_iter();
        fds.next()
            .ok_or_else(|| AgentError::Engine("the console socket carried no terminal".into()))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sets a terminal's window size.
pub fn resize(tty: &Stream, rows: u16, cols: u16) -> Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid.
    let rc = unsafe { libc::ioctl(tty.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc < 0 {
        return Err(AgentError::io(
            "setting terminal size",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipe_round_trip_and_end_of_stream() {
        let (host, child) = pipes().expect("pipes");
        let writer = Stream::new(host.stdin).expect("stdin stream");
        writer.write_all(b"hello").await.expect("write");
        drop(writer);
        let mut buf = Vec::new();
        std::fs::File::from(child.stdin)
            .read_to_end(&mut buf)
            .expect("read");
        assert_eq!(buf, b"hello");

        let reader = Stream::new(host.stdout).expect("stdout stream");
        std::fs::File::from(child.stdout)
            .write_all(b"out")
            .expect("write out");
        assert_eq!(reader.read(16).await.expect("read"), b"out");
        assert!(reader.read(16).await.expect("eof").is_empty());
    }
}
