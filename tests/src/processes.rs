//! Host processes as the benches and the soak see them: waiting for a
//! child with a deadline, reaping what husk leaves to a subreaper, and
//! finding a sandbox process's descendants (QEMU).

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use std::path::Path;

use husk_runtime::host_process::{HostProcess, Stat};
use husk_runtime::service::share;

/// Makes this process the subreaper of its descendants, so that the
/// proxies and sandbox processes a detached `husk run` leaves are reaped
/// here (by [`reap_children`]) rather than left as zombies.
pub fn become_subreaper() -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Waits for `child` up to `timeout`; past it the child is killed and the
/// wait fails.
pub fn wait_child(mut child: Child, timeout: Duration) -> Result<ExitStatus, String> {
    let process = HostProcess::of(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(format!("waiting: {e}")),
        Err(_) => {
            if let Some(p) = process {
                p.signal(libc::SIGKILL);
            }
            let _ = rx.recv_timeout(Duration::from_secs(10));
            Err(format!("no exit within {timeout:?}: killed"))
        }
    }
}

/// Polls `done` every 20 ms until it holds (true) or `timeout` passes
/// (false).
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reaps every exited child without waiting. Call it only between
/// commands, so that no status a `Command` waits for is taken.
pub fn reap_children() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Every descendant of `pid` alive now (children, their children, ...),
/// not `pid` itself.
pub fn descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| Some((p, Stat::read(p)?.ppid)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Runs `husk` (a command with its flags and verb set, `args` naming the
/// verb for messages) to completion within `timeout`, stdin and stdout
/// discarded; its stderr goes to `log` with the extension `stderr`, a
/// file, never a pipe: the proxies a detached run leaves inherit it and
/// would hold a pipe open. A failure carries what husk said.
pub fn run_husk(
    mut husk: std::process::Command,
    log: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<(), String> {
    use std::process::Stdio;
    let err_path = log.with_extension("stderr");
    let err = std::fs::File::create(&err_path).map_err(|e| format!("stderr file: {e}"))?;
    let child = husk
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawning husk: {e}"))?;
    let status = wait_child(child, timeout).map_err(|e| format!("husk {}: {e}", args.join(" ")))?;
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(format!(
            "husk {}: {status}: {}",
            args.join(" "),
            stderr.trim()
        ));
    }
    Ok(())
}

/// The pid of container `id`'s sandbox process, from its record in the
/// state `root`.
pub fn sandbox_pid(root: &Path, id: &str) -> Result<i32, String> {
    let record = husk_runtime::store::Store::new(root)
        .load(id)
        .map_err(|e| format!("{id}'s record: {e}"))?;
    record
        .sandbox
        .map(|s| s.pid)
        .ok_or_else(|| format!("{id}: no sandbox process recorded"))
}

/// Errors unless a bench's containers are all gone: nothing in its state
/// `root` or `sandboxes` directory, no mount under `tmp`, none of the
/// sandbox processes it has `seen` alive.
pub fn check_clean(
    root: &Path,
    sandboxes: &Path,
    tmp: &Path,
    seen: &[HostProcess],
) -> Result<(), String> {
    let left = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    if left(root) > 0 || left(sandboxes) > 0 {
        return Err("state or sandbox directories left behind".into());
    }
    if share::has_mounts_under(tmp) {
        return Err("mounts left behind".into());
    }
    if seen.iter().any(HostProcess::is_alive) {
        return Err("sandbox processes left behind".into());
    }
    Ok(())
}

/// Takes down what a failed bench left once `delete` had its chance: kills
/// the processes it has `seen` (saying so under `who`), reaps them, undoes
/// the mounts under `tmp`, and keeps `tmp` if any remain, so its removal
/// never reaches through a bind into what it shares.
pub fn sweep(who: &str, seen: &[HostProcess], tmp: &mut tempfile::TempDir) {
    for process in seen {
        if process.signal(libc::SIGKILL) {
            eprintln!("{who}: cleanup: killed {} left behind", process.pid);
        }
    }
    wait_until(Duration::from_secs(10), || {
        reap_children();
        seen.iter().all(|p| !p.is_alive())
    });
    share::unmount_all_under(tmp.path());
    if share::has_mounts_under(tmp.path()) {
        eprintln!(
            "{who}: cleanup: mounts remain under {}; not removing it",
            tmp.path().display()
        );
        tmp.disable_cleanup(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_and_its_child_are_descendants_and_a_slow_child_is_killed() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = sh.id() as i32;
        assert!(wait_until(Duration::from_secs(10), || descendants(pid)
            .len()
            == 1));
        let _ = sh.kill();
        let _ = sh.wait();

        let slow = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let err = wait_child(slow, Duration::from_millis(100)).unwrap_err();
        assert!(err.contains("killed"), "{err}");
    }
}
