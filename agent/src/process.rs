//! A process the agent started in a container: its pid, its standard I/O
//! and its exit status.

use std::os::fd::OwnedFd;

use tokio::sync::Mutex;

use crate::error::{AgentError, Result};
use crate::reaper::{self, ExitReceiver, ExitStatus};
use crate::stdio::{self, HostPipes, Stream};

/// The agent side of a process's standard I/O.
pub enum ProcessIo {
    /// Three pipes.
    Pipes(HostPipes),
    /// The master side of the process's pseudo-terminal.
    Terminal(OwnedFd),
}

/// A container process (the init process or an exec'd one).
pub struct Process {
    /// The process id in the agent's pid namespace.
    pub pid: i32,
    stdin: Mutex<Option<Stream>>,
    stdout: Stream,
    stderr: Option<Stream>,
    /// The pty master, when the process has a terminal.
    terminal: Option<Stream>,
    exit: ExitReceiver,
}

/// Ctrl-D: what closing stdin means on a terminal.
const VEOF: u8 = 0x04;

impl Process {
    /// Wraps a started process.
    pub fn new(pid: i32, io: ProcessIo, exit: ExitReceiver) -> Result<Self> {
        match io {
            ProcessIo::Pipes(pipes) => Ok(Self {
                pid,
                stdin: Mutex::new(Some(Stream::new(pipes.stdin)?)),
                stdout: Stream::new(pipes.stdout)?,
                stderr: Some(Stream::new(pipes.stderr)?),
                terminal: None,
                exit,
            }),
            ProcessIo::Terminal(master) => {
                let dup = |fd: &OwnedFd| {
                    fd.try_clone()
                        .map_err(|e| AgentError::io("duplicating terminal", e))
                };
                let input = dup(&master)?;
                let output = dup(&master)?;
                Ok(Self {
                    pid,
                    stdin: Mutex::new(Some(Stream::new(input)?)),
                    stdout: Stream::new(output)?,
                    stderr: None,
                    terminal: Some(Stream::new(master)?),
                    exit,
                })
            }
        }
    }

    /// Reads up to `max` bytes of stdout (or the terminal); empty at the end.
    pub async fn read_stdout(&self, max: usize) -> Result<Vec<u8>> {
        self.stdout
            .read(max)
            .await
            .map_err(|e| AgentError::io("reading stdout", e))
    }

    /// Reads up to `max` bytes of stderr; empty at the end, and always empty
    /// for a terminal process (its stderr goes to the terminal).
    pub async fn read_stderr(&self, max: usize) -> Result<Vec<u8>> {
        match &self.stderr {
            Some(stream) => stream
                .read(max)
                .await
                .map_err(|e| AgentError::io("reading stderr", e)),
            None => Ok(Vec::new()),
        }
    }

    /// Writes all of `data` to stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<()> {
        let stdin = self.stdin.lock().await;
        let stream = stdin
            .as_ref()
            .ok_or_else(|| AgentError::FailedPrecondition("stdin is closed".into()))?;
        stream
            .write_all(data)
            .await
            .map_err(|e| AgentError::io("writing stdin", e))
    }

    /// Closes stdin: the process reads end of file.
    pub async fn close_stdin(&self) -> Result<()> {
        let mut stdin = self.stdin.lock().await;
        if let Some(stream) = stdin.take() {
            if self.terminal.is_some() {
                // The terminal stays open for output: send EOF the way a
                // user at the keyboard would.
                stream
                    .write_all(&[VEOF])
                    .await
                    .map_err(|e| AgentError::io("writing EOF to terminal", e))?;
            }
        }
        Ok(())
    }

    /// Sets the terminal size; an error for a process without a terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let tty = self
            .terminal
            .as_ref()
            .ok_or_else(|| AgentError::FailedPrecondition("the process has no terminal".into()))?;
        stdio::resize(tty, rows, cols)
    }

    /// Waits for the process to exit.
    pub async fn wait(&self) -> Result<ExitStatus> {
        reaper::wait(self.exit.clone())
            .await
            .ok_or_else(|| AgentError::Engine(format!("process {} was never reaped", self.pid)))
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }
}
