//! What husk's benchmarks share: medians, and running the peer OCI runtimes
//! (runc, crun) that husk is measured beside.
//!
//! crun 1.8 refuses this host's hybrid cgroup layout (cgroup v1 with a
//! cgroup2 hierarchy beside it), so crun runs in a private mount namespace
//! with a bare cgroup2 mount and its cgroup manager disabled. It then does
//! less work than runc and husk (it creates no cgroup at all), plus the cost
//! of `unshare` and one `sh`: the comparison favours it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The peer runtimes this host has, of `crun` and `runc`.
pub fn peers() -> Vec<&'static str> {
    ["crun", "runc"]
        .into_iter()
        .filter(|p| Command::new(p).arg("--version").output().is_ok())
        .collect()
}

/// `runtime ARGS`, set up so that it works on this host (see the module doc).
pub fn peer_command(runtime: &str, args: &[&str]) -> Command {
    if runtime == "crun" {
        let mut cmd = Command::new("unshare");
        // The arguments go through "$@", never through the shell's parser.
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && \
                 exec crun --cgroup-manager=disabled \"$@\"",
            )
            .arg("sh")
            .args(args);
        cmd
    } else {
        let mut cmd = Command::new(runtime);
        cmd.args(args);
        cmd
    }
}

/// `runtime run --bundle BUNDLE ID` to completion, without stdio; its wall
/// time, or what went wrong. A failed run's container is deleted.
pub fn peer_run(runtime: &str, bundle: &Path, id: &str) -> Result<Duration, String> {
    let bundle = bundle.to_str().ok_or("bundle path is not UTF-8")?;
    let started = Instant::now();
    let out = peer_command(runtime, &["run", "--bundle", bundle, id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running {runtime}: {e}"))?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        peer_delete(runtime, id);
        return Err(format!(
            "{runtime} run {id}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(elapsed)
}

/// Forcibly deletes `runtime`'s container `id`, if it is there.
pub fn peer_delete(runtime: &str, id: &str) {
    let _ = peer_command(runtime, &["delete", "--force", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The median of `values` (the upper one of an even count).
///
/// # Panics
/// If `values` is empty.
pub fn median<T: Ord + Copy>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_middle_value() {
        assert_eq!(median(&[3, 1, 2]), 2);
        assert_eq!(median(&[4, 1, 3, 2]), 3);
        assert_eq!(median(&[7]), 7);
    }

    #[test]
    fn crun_runs_in_a_private_cgroup2_namespace_with_its_arguments_intact() {
        let cmd = peer_command("crun", &["run", "--bundle", "/b x", "id"]);
        assert_eq!(cmd.get_program(), "unshare");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert!(args[5].contains("mount -t cgroup2"));
        assert!(args[5].contains("--cgroup-manager=disabled"));
        assert_eq!(&args[6..], ["sh", "run", "--bundle", "/b x", "id"]);
        let runc = peer_command("runc", &["delete", "id"]);
        assert_eq!(runc.get_program(), "runc");
        assert_eq!(runc.get_args().count(), 2);
    }
}
