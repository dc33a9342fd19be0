//! Starting husk's own helper processes (the sandbox process, proxies)
//! detached, and learning whether they came up.
//!
//! The parent hands the child the write end of a pipe (its number in
//! [`READY_FD_ENV`]); the child writes one line, `ok` or `error <message>`,
//! once it is ready or has failed. End of file without a line means the
//! child died first.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sched::CloneFlags;

/// Names the fd a child reports readiness on.
pub const READY_FD_ENV: &str = "HUSK_READY_FD";
/// Names the fd an init proxy waits on before it attaches.
pub const GO_FD_ENV: &str = "HUSK_GO_FD";

/// How to start a child.
#[derive(Default)]
pub struct Options {
    /// Start a new session (detach from the caller's terminal).
    pub setsid: bool,
    /// Start in a new network namespace.
    pub new_netns: bool,
    /// Join this network namespace.
    pub join_netns: Option<OwnedFd>,
    /// Hand over the read end of a "go" pipe ([`GO_FD_ENV`]).
    pub go: Option<OwnedFd>,
    /// stdin, stdout, stderr: inherited when `None`.
    pub stdio: Option<[Stdio; 3]>,
}

/// The parent's end of a readiness pipe.
pub struct Readiness {
    reader: BufReader<File>,
}

impl Readiness {
    /// Blocks until the child reports; `Err` carries its error message.
    pub fn wait(mut self) -> Result<(), String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("exited before it was ready".into()),
            Ok(_) => match line.trim_end().split_once(' ') {
                _ if line.trim_end() == "ok" => Ok(()),
                Some(("error", message)) => Err(message.to_owned()),
                _ => Err(format!("unexpected readiness report {:?}", line.trim_end())),
            },
            Err(e) => Err(format!("reading its readiness: {e}")),
        }
    }
}

/// Starts this program with `args` and `options`; returns the child and
/// the end of its readiness pipe.
pub fn spawn_self(args: &[OsString], mut options: Options) -> io::Result<(Child, Readiness)> {
    let exe = std::env::current_exe()?;
    let (ready_read, ready_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let mut command = Command::new(exe);
    command.args(args);
    command.env(READY_FD_ENV, ready_write.as_raw_fd().to_string());
    if let Some(go) = &options.go {
        command.env(GO_FD_ENV, go.as_raw_fd().to_string());
    }
    if let Some([stdin, stdout, stderr]) = options.stdio.take() {
        command.stdin(stdin).stdout(stdout).stderr(stderr);
    }
    let keep: Vec<RawFd> = [
        Some(ready_write.as_raw_fd()),
        options.go.as_ref().map(|f| f.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let netns = options.join_netns.as_ref().map(|f| f.as_raw_fd());
    let (setsid, new_netns) = (options.setsid, options.new_netns);
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (fcntl, setsid, unshare, setns), and no memory is allocated.
    unsafe {
        command.pre_exec(move || {
            // Whatever our caller let us inherit (a shell wrapper's saved
            // fds, the caller's output pipes) must not live on in a process
            // that outlasts us: a reader waiting for end of file on such a
            // pipe would wait for as long as the container runs.
            close_inherited_fds(&keep);
            for &fd in &keep {
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            }
            if setsid {
                nix::unistd::setsid()?;
            }
            if new_netns {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            }
            if let Some(fd) = netns {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    // The child has its copy; ours must go so that its death reads as EOF.
    drop(ready_write);
    drop(options);
    Ok((
        child,
        Readiness {
            reader: BufReader::new(File::from(ready_read)),
        },
    ))
}

/// Marks every fd from 3 up close-on-exec, except `keep` (the caller clears
/// the flag on those afterwards in any case). Called between fork and exec:
/// no allocation, only system calls.
fn close_inherited_fds(keep: &[RawFd]) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags (Linux 5.11+).
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0
    {
        return;
    }
    // SAFETY: getrlimit writes one rlimit.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(65_536) as RawFd
    } else {
        1024
    };
    for fd in 3..max {
        if !keep.contains(&fd) {
            // SAFETY: F_SETFD on any number is harmless (EBADF if closed).
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// The child's end of the readiness pipe, from [`READY_FD_ENV`].
pub struct Reporter {
    file: Option<File>,
}

impl Reporter {
    /// Takes the readiness fd named in the environment (none: reports go nowhere).
    pub fn from_env() -> Self {
        Self {
            file: take_fd(READY_FD_ENV).map(File::from),
        }
    }

    /// A reporter that reports nowhere (the proxy run in-process).
    pub fn none() -> Self {
        Self { file: None }
    }

    /// Reports success.
    pub fn ok(&mut self) {
        self.send("ok");
    }

    /// Reports failure with a one-line message.
    pub fn error(&mut self, message: &str) {
        let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
        self.send(&format!("error {one_line}"));
    }

    fn send(&mut self, line: &str) {
        if let Some(mut file) = self.file.take() {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// Takes ownership of the fd named by environment variable `name`, marks
/// it close-on-exec and removes the variable.
pub fn take_fd(name: &str) -> Option<OwnedFd> {
    let fd: RawFd = std::env::var(name).ok()?.parse().ok()?;
    std::env::remove_var(name);
    if fd < 3 || fcntl(fd, FcntlArg::F_GETFD).is_err() {
        return None;
    }
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    // SAFETY: the fd is open (checked above) and was handed to this
    // process for it alone.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
