//! A task's stdio as containerd hands it over: FIFO paths (what `ctr`, the
//! CRI plugin and Docker use), `file://` paths, or `binary://` loggers
//! (nerdctl's), carried to and from the guest process through the agent.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio as ProcessStdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use husk_protocol::agent_ttrpc::AgentServiceClient;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::service::stdio::{forward_stdin, pump_output, DRAIN_TIMEOUT};

/// How long a `binary://` logger gets to say it is ready.
const LOGGER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the stdin reader looks whether it should stop.
const STDIN_POLL: Duration = Duration::from_millis(500);

/// Errors opening a task's stdio.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A FIFO or file could not be opened.
    #[error("opening {path}: {source}")]
    Open {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stdio URI this shim does not know.
    #[error("stdio {0:?}: unsupported scheme (a FIFO path, file:// or binary://)")]
    Scheme(String),
    /// The `binary://` logger failed to start.
    #[error("logger {binary}: {message}")]
    Logger {
        /// Its path.
        binary: String,
        /// Why.
        message: String,
    },
}

/// The paths containerd gave for one process.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// Stdin FIFO ("" for none).
    pub stdin: String,
    /// Stdout FIFO, file:// or binary:// URI.
    pub stdout: String,
    /// Stderr, like stdout.
    pub stderr: String,
    /// The process has a terminal (one output stream).
    pub terminal: bool,
}

/// A process's stdio, opened and being carried.
#[derive(Debug)]
pub struct Carried {
    outputs: Vec<tokio::task::JoinHandle<()>>,
    stdin_stop: Arc<AtomicBool>,
    stdin_task: Option<tokio::task::JoinHandle<()>>,
    logger: Option<Child>,
}

impl Carried {
    /// Opens `paths` and starts carrying process `id` = (container, exec)
    /// of the guest to and from them.
    pub fn start(
        paths: &StdioPaths,
        agent: Arc<AgentServiceClient>,
        id: (String, String),
        namespace: &str,
    ) -> Result<Self, Error> {
        let mut logger = None;
        let (stdout, stderr) = if let Some(binary) = paths.stdout.strip_prefix("binary://") {
            let (child, out, err) = start_logger(binary, &id.0, namespace)?;
            logger = Some(child);
            (Some(out), Some(err))
        } else {
            (open_output(&paths.stdout)?, open_output(&paths.stderr)?)
        };
        let stdin_stop = Arc::new(AtomicBool::new(false));
        let stdin_task = if paths.stdin.is_empty() {
            None
        } else {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let fifo = open_stdin(Path::new(&paths.stdin))?;
            let stop = Arc::clone(&stdin_stop);
            std::thread::Builder::new()
                .name("husk-stdin".into())
                .spawn(move || read_stdin(fifo, tx, stop))
                .map_err(|source| Error::Open {
                    path: PathBuf::from(&paths.stdin),
                    source,
                })?;
            Some(tokio::spawn(forward_stdin(agent.clone(), id.clone(), rx)))
        };
        let mut outputs = vec![tokio::spawn(pump_output(
            agent.clone(),
            id.clone(),
            false,
            stdout,
        ))];
        if !paths.terminal {
            outputs.push(tokio::spawn(pump_output(agent, id, true, stderr)));
        }
        Ok(Self {
            outputs,
            stdin_stop,
            stdin_task,
            logger,
        })
    }

    /// Waits (up to the drain timeout) for the output to reach its end,
    /// after the process exited.
    pub async fn drain(&mut self) {
        let outputs = std::mem::take(&mut self.outputs);
        let drained = async {
            for output in outputs {
                let _ = output.await;
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
        self.stop_stdin();
    }

    fn stop_stdin(&mut self) {
        self.stdin_stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.stdin_task.take() {
            task.abort();
        }
    }
}

impl Drop for Carried {
    fn drop(&mut self) {
        for output in &self.outputs {
            output.abort();
        }
        self.stop_stdin();
        if let Some(mut logger) = self.logger.take() {
            // The logger ends at the end of its input; reap it off-thread.
            std::thread::spawn(move || {
                let _ = logger.wait();
            });
        }
    }
}

/// Opens an output: a FIFO (read-write, so that opening never waits for a
/// reader and a reader that comes and goes does not end the stream), or
/// a `file://` path appended to.
fn open_output(uri: &str) -> Result<Option<File>, Error> {
    if uri.is_empty() {
        return Ok(None);
    }
    let (path, file) = if let Some(path) = uri.strip_prefix("file://") {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path);
        (path, file)
    } else if uri.contains("://") && !uri.starts_with("fifo://") {
        return Err(Error::Scheme(uri.to_owned()));
    } else {
        let path = uri.strip_prefix("fifo://").unwrap_or(uri);
        (path, OpenOptions::new().read(true).write(true).open(path))
    };
    file.map(Some).map_err(|source| Error::Open {
        path: PathBuf::from(path),
        source,
    })
}

/// Opens the stdin FIFO without waiting for a writer.
fn open_stdin(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })
}

/// Reads the stdin FIFO until its writer closes it (a FIFO no writer ever
/// opened reports nothing to poll, so the read waits for the client) or
/// the process is gone.
fn read_stdin(mut fifo: File, tx: tokio::sync::mpsc::Sender<Vec<u8>>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 32 * 1024];
    let timeout = PollTimeout::try_from(STDIN_POLL).unwrap_or(PollTimeout::NONE);
    while !stop.load(Ordering::Relaxed) {
        let revents = {
            let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => continue,
                Ok(_) => fds[0].revents().unwrap_or(PollFlags::empty()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
        };
        if revents.contains(PollFlags::POLLIN) {
            match fifo.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        } else if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
    }
}

/// Starts a `binary://` logger as containerd's shims do: its stdout and
/// stderr pipes on fds 3 and 4, a pipe on fd 5 it closes once ready, and
/// the container's id and namespace in its environment.
fn start_logger(
    uri: &str,
    container_id: &str,
    namespace: &str,
) -> Result<(Child, File, File), Error> {
    let fail = |message: String| Error::Logger {
        binary: uri.to_owned(),
        message,
    };
    let (binary, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut command = Command::new(binary);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        command.arg(format!("-{key}")).arg(value);
    }
    // Close-on-exec, so the logger holds no write end and sees its end
    // of input; the three it gets are dup'ed over that.
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(e.to_string()));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds: [OwnedFd; 3] = [out_r, err_r, ready_w];
    let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    command
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(ProcessStdio::null())
        .stdout(ProcessStdio::null())
        .stderr(ProcessStdio::null());
    // SAFETY: only async-signal-safe fcntl/dup2 between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // Out of the way of 3..=5 first, so no dup2 overwrites a
            // source still to be moved.
            let mut high = [0; 3];
            for (slot, &fd) in high.iter_mut().zip(raw.iter()) {
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, fd) in (3..).zip(high) {
                if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| fail(e.to_string()))?;
    drop(fds);
    // Ready: the logger closed its end of fd 5 (or exited).
    let mut ready = File::from(ready_r);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let _ = tx.send(ready.read(&mut byte));
    });
    rx.recv_timeout(LOGGER_READY_TIMEOUT)
        .map_err(|_| fail("did not get ready".into()))?
        .map_err(|e| fail(e.to_string()))?;
    Ok((child, File::from(out_w), File::from(err_w)))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A `binary://` logger gets the process's stdout on fd 3, its stderr
    /// on fd 4, says it is ready by closing fd 5, and finds the container's
    /// id and namespace in its environment and its URI's query as flags.
    #[test]
    fn a_binary_logger_gets_both_streams_its_flags_and_the_containers_names() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("logged");
        let logger = dir.path().join("logger");
        std::fs::write(
            &logger,
            format!(
                "#!/bin/sh\nexec 5>&-\n{{ echo \"$CONTAINER_NAMESPACE/$CONTAINER_ID $*\"; cat <&3; cat <&4; }} > '{}'\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&logger, std::fs::Permissions::from_mode(0o755)).unwrap();
        let uri = format!("{}?tag=web", logger.display());
        let (mut child, mut stdout, mut stderr) = start_logger(&uri, "c1", "k8s.io").unwrap();
        stdout.write_all(b"to stdout\n").unwrap();
        stderr.write_all(b"to stderr\n").unwrap();
        drop((stdout, stderr));
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "k8s.io/c1 -tag web\nto stdout\nto stderr\n"
        );
    }

    #[test]
    fn unknown_schemes_are_named_and_file_uris_are_appended_to() {
        assert!(matches!(open_output("http://x"), Err(Error::Scheme(_))));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "old\n").unwrap();
        let mut file = open_output(&format!("file://{}", path.display()))
            .unwrap()
            .unwrap();
        file.write_all(b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\nnew\n");
        assert!(open_output("").unwrap().is_none());
    }
}
