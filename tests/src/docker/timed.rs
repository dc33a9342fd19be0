//! Running a command with a deadline, so a hung client fails a test instead
//! of blocking CI.

use std::io::{self, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often a running command is polled for its exit.
const POLL: Duration = Duration::from_millis(20);
/// How long output may still arrive once the command has exited.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A command that did not finish in time (it has been killed).
#[derive(Debug)]
pub struct TimedOut {
    /// What it printed before it was killed.
    pub partial: Output,
}

/// Runs `cmd` with stdin from /dev/null (unless the caller set it) and its
/// output captured; kills it if it is still running after `timeout`.
pub fn output(cmd: &mut Command, timeout: Duration) -> io::Result<Result<Output, TimedOut>> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    // Both pipes are drained concurrently so a chatty command cannot fill
    // one and stall before it exits.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_until(&mut child, Instant::now() + timeout)?;
    let finished = status.is_some();
    let status = match status {
        Some(status) => status,
        None => {
            let _ = child.kill();
            child.wait()?
        }
    };
    let out = Output {
        status,
        stdout: stdout.take(DRAIN_GRACE),
        stderr: stderr.take(DRAIN_GRACE),
    };
    Ok(if finished {
        Ok(out)
    } else {
        Err(TimedOut { partial: out })
    })
}

/// Waits for `child` to exit until `deadline`; `None` if it is still running.
pub fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// What one pipe has delivered so far, read by a thread of its own.
struct Drain {
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Drain {
    /// Waits up to `grace` for end of file, then takes what was read: a
    /// process the command left behind may hold the pipe open for ever.
    fn take(self, grace: Duration) -> Vec<u8> {
        let _ = self.done.recv_timeout(grace);
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Drain {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let (tx, done) = mpsc::channel();
    let shared = buf.clone();
    thread::spawn(move || {
        if let Some(mut pipe) = pipe {
            let mut chunk = [0u8; 8192];
            // A read error just ends the capture; the exit status still tells.
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]);
            }
        }
        let _ = tx.send(());
    });
    Drain { buf, done }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_command_gives_its_output_and_status() {
        let out = output(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap()
        .unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn a_hung_command_is_killed_at_the_deadline_with_what_it_printed() {
        let started = Instant::now();
        let err = output(
            Command::new("sh").args(["-c", "echo early; exec sleep 30"]),
            Duration::from_millis(500),
        )
        .unwrap()
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(err.partial.stdout, b"early\n");
        assert!(!err.partial.status.success());
    }

    #[test]
    fn a_child_left_holding_the_output_does_not_hold_up_the_result() {
        let started = Instant::now();
        let out = output(
            // The background sleep keeps stdout open after sh exits.
            Command::new("sh").args(["-c", "echo done; sleep 6 & exit 0"]),
            Duration::from_secs(30),
        )
        .unwrap()
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(out.stdout, b"done\n");
        assert!(out.status.success());
    }
}
