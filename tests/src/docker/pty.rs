//! Driving an interactive command through a pseudo-terminal, as a person at
//! a terminal would: the command gets the pty's slave as its controlling
//! terminal and stdio; the test types into the master and reads what the
//! terminal shows.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use nix::pty::{openpty, Winsize};

use super::timed;

/// A command running on its own pseudo-terminal.
pub struct PtySession {
    master: File,
    child: Child,
    output: Receiver<Vec<u8>>,
    /// Everything the terminal has shown so far.
    seen: Vec<u8>,
    /// Where the next [`PtySession::expect`] starts looking in `seen`.
    cursor: usize,
}

impl PtySession {
    /// Starts `cmd` in a new session whose controlling terminal is a new
    /// pty of `rows` x `cols`, with the pty as its stdin, stdout and stderr.
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> io::Result<Self> {
        let pty = openpty(Some(&winsize(rows, cols)), None)?;
        // openpty's fds are inheritable: without this, every process started
        // meanwhile (the docker CLI, the other test's commands) would keep
        // the terminal open and its end never read as such.
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )?;
        }
        cmd.stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave.try_clone()?));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // Only the child may hold the slave now, so the master reads EIO
        // (end) once the child and its descendants are gone.
        drop(cmd);
        drop(pty.slave);
        let master = File::from(pty.master);
        let output = reader(master.try_clone()?);
        Ok(Self {
            master,
            child,
            output,
            seen: Vec::new(),
            cursor: 0,
        })
    }

    /// Types `text` (use `\r` for Enter, as a terminal sends it).
    pub fn send(&mut self, text: &str) -> io::Result<()> {
        self.master.write_all(text.as_bytes())?;
        self.master.flush()
    }

    /// Waits until the terminal shows `needle` after what earlier calls
    /// matched. Err carries the transcript so far.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = find(&self.seen[self.cursor..], needle.as_bytes()) {
                self.cursor += at + needle.len();
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{needle:?} not shown within {timeout:?}; terminal so far:\n{}",
                        self.transcript()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{needle:?} not shown before the terminal closed; terminal:\n{}",
                        self.transcript()
                    ))
                }
            }
        }
    }

    /// Sets the terminal's window size, as a terminal emulator does when
    /// its window is resized (the foreground process gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let size = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which
        // outlives the call.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the command to exit; `None` if it is still running after
    /// `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        timed::wait_until(&mut self.child, Instant::now() + timeout)
    }

    /// Everything the terminal has shown so far, lossily decoded.
    pub fn transcript(&mut self) -> String {
        while let Ok(chunk) = self.output.try_recv() {
            self.seen.extend_from_slice(&chunk);
        }
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn reader(mut master: File) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // EIO once the slave side is closed everywhere: the session is over.
        while let Ok(n @ 1..) = master.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_on_the_pty_sees_a_terminal_its_size_and_a_resize() {
        let mut sh = Command::new("sh");
        sh.arg("-i").env("PS1", "prompt> ");
        let mut pty = PtySession::spawn(sh, 24, 80).unwrap();
        let t = Duration::from_secs(10);
        pty.expect("prompt> ", t).unwrap();
        pty.send("echo typed-$((1+1)); stty size\r").unwrap();
        pty.expect("typed-2", t).unwrap();
        pty.expect("24 80", t).unwrap();
        pty.resize(40, 132).unwrap();
        pty.send("stty size\r").unwrap();
        pty.expect("40 132", t).unwrap();
        pty.send("exit 7\r").unwrap();
        let status = pty.wait(t).unwrap().expect("the shell exits");
        assert_eq!(status.code(), Some(7), "{}", pty.transcript());
    }
}
