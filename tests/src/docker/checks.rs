//! What the Docker end-to-end tests (runtime/tests/docker_*.rs) share when
//! they put one OCI runtime through a private daemon: `docker run
//! --runtime=R`, assertions that name the runtime and what the command
//! printed, a timing line per check, and the final check that the daemon's
//! teardown left nothing, which is the point of every run.

use std::process::Output;
use std::time::Instant;

use super::DockerDaemon;

/// A private daemon driven with one runtime under test; the tests wrap it
/// with their own checks.
pub struct Checks<'a> {
    /// The private containerd + dockerd.
    pub d: &'a DockerDaemon,
    /// The runtime containers run with (`runc`, `husk`), named in every
    /// failure so that a husk failure is never mistaken for the harness's.
    pub runtime: &'a str,
    /// The image every container runs.
    pub image: &'a str,
}

impl Checks<'_> {
    /// `--runtime=<runtime>`.
    pub fn runtime_flag(&self) -> String {
        format!("--runtime={}", self.runtime)
    }

    /// `docker run --runtime=<runtime> flags <image> cmd` (with a cidfile:
    /// [`DockerDaemon::run`]).
    pub fn run_with(&self, runtime: &str, flags: &[&str], cmd: &[&str]) -> Output {
        let runtime = format!("--runtime={runtime}");
        let mut args: Vec<&str> = vec![&runtime];
        args.extend_from_slice(flags);
        args.push(self.image);
        args.extend_from_slice(cmd);
        self.d.run(&args)
    }

    /// [`Checks::run_with`] the runtime under test.
    pub fn run(&self, flags: &[&str], cmd: &[&str]) -> Output {
        self.run_with(self.runtime, flags, cmd)
    }

    /// Asserts `out` (of `what`) succeeded; returns it.
    pub fn ok<'o>(&self, out: &'o Output, what: &str) -> &'o Output {
        succeeded(self.runtime, out, what)
    }

    /// `out`'s stdout, trimmed.
    pub fn text(&self, out: &Output) -> String {
        text(out)
    }

    /// `docker inspect -f format name`, successful, trimmed.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        let out = self.d.docker(&["inspect", "-f", format, name]);
        self.text(self.ok(&out, &format!("docker inspect -f '{format}' {name}")))
    }
}

/// Runs `check`, then prints how long it took, tagged with `runtime`.
pub fn timed(runtime: &str, name: &str, check: impl FnOnce()) {
    let started = Instant::now();
    check();
    eprintln!("[{runtime}] {name}: {:?}", started.elapsed());
}

/// Asserts that the checks left no container, shuts `daemon` down and
/// asserts that its teardown found nothing left (no VM or husk process
/// above all) and removed its directory; returns the IDs of the
/// containers the checks ran.
pub fn shut_down_clean(daemon: DockerDaemon, runtime: &str) -> Vec<String> {
    let remaining = text(succeeded(
        runtime,
        &daemon.docker(&["ps", "-aq"]),
        "docker ps -aq",
    ));
    assert!(
        remaining.is_empty(),
        "containers left after the checks: {remaining}"
    );
    let ids = daemon.container_ids();
    let root = daemon.root().to_owned();
    let left = daemon.shutdown();
    let vms_or_husk: Vec<_> = left
        .processes
        .iter()
        .filter(|p| p.exe.starts_with("qemu-system") || p.exe == "husk")
        .collect();
    assert!(
        vms_or_husk.is_empty(),
        "[{runtime}] VM or husk processes left after teardown: {vms_or_husk:?}"
    );
    assert!(
        left.is_empty(),
        "[{runtime}] teardown found leftovers of containers {ids:?}:\n{left}"
    );
    assert!(!root.exists(), "{} was not removed", root.display());
    ids
}

/// Asserts `out` (of `what`, run with `runtime`) succeeded; returns it.
fn succeeded<'o>(runtime: &str, out: &'o Output, what: &str) -> &'o Output {
    assert!(
        out.status.success(),
        "[{runtime}] {what} failed ({}): stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
