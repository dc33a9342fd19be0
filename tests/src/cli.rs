//! Running the `husk` CLI (or any runc-style runtime) to completion from a
//! test or a tool.
//!
//! Output goes through temporary files, never pipes: the init and exec
//! proxies that `create` and `exec --detach` leave behind inherit the
//! runtime's stdio, and would hold a pipe open (so a reader would never
//! see its end) for as long as their container lives. ([`timed::output`]
//! reads pipes and so waits out a grace period for such holders on every
//! `create`.)

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::docker::timed;

/// Runs `command` with stdin from `/dev/null` and its stdout and stderr
/// through temporary files, and returns them with its exit status.
///
/// With a `timeout`, a command still running when it expires is killed
/// (SIGKILL) and reaped, and the error (kind [`io::ErrorKind::TimedOut`])
/// carries what it had written to stderr, which usually says where it
/// hung.
pub fn output(command: &mut Command, timeout: Option<Duration>) -> io::Result<Output> {
    let out = tempfile::tempfile()?;
    let err = tempfile::tempfile()?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()?;
    let status = match timeout {
        None => child.wait()?,
        Some(timeout) => match timed::wait_until(&mut child, Instant::now() + timeout)? {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{command:?} still running after {timeout:?}, killed; its stderr:\n{}",
                        String::from_utf8_lossy(&read_all(err)?)
                    ),
                ));
            }
        },
    };
    Ok(Output {
        status,
        stdout: read_all(out)?,
        stderr: read_all(err)?,
    })
}

/// Everything written to `file` (through another handle) so far.
fn read_all(mut file: File) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_status_come_back_through_files() {
        let out = output(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            None,
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn a_background_child_holding_stdout_does_not_block_the_caller() {
        // What a proxy left behind by `create` does: the command exits, a
        // process it started keeps its stdout.
        let started = Instant::now();
        let out = output(
            Command::new("sh").args(["-c", "sleep 5 & echo done"]),
            Some(Duration::from_secs(4)),
        )
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(out.stdout, b"done\n");
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_and_its_stderr_reported() {
        let err = output(
            Command::new("sh").args(["-c", "echo stuck here >&2; exec sleep 30"]),
            Some(Duration::from_secs(1)),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("stuck here"), "{err}");
    }
}
