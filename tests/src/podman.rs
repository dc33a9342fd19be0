//! A private Podman for end-to-end tests (Debian's `podman` with its
//! default network backend, netavark): its own configuration, storage,
//! run and temporary directories under one temporary directory, its
//! containers' cgroups under a parent of the test's own, and every podman
//! command run inside a network namespace the test creates, so that
//! Podman's bridge and netavark's iptables rules stay there.
//!
//! Podman has no daemon: [`Podman::podman`] runs one CLI command with a
//! deadline; [`Podman::shutdown`] (or dropping it) removes every container,
//! reports what was left behind (processes, mounts, container network
//! namespaces, husk taps, cgroups), removes that too and deletes the
//! namespace.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::docker::{host, leftovers, timed, Leftovers, Runtime};
use crate::netns::{self, NetNs};

/// Debian's podman.
pub const PODMAN: &str = "/usr/bin/podman";
/// The Debian packages a networked Podman needs: podman itself and the
/// network backend Debian's containers-common recommends (netavark, with
/// aardvark-dns for names). scripts/install-deps.sh installs the same.
pub const PACKAGES: [&str; 3] = ["podman", "netavark", "aardvark-dns"];
/// How long one podman command may take (under husk each container boots
/// a VM on TCG).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// Where rootful Podman 4.3 keeps network state whatever its `--runroot`.
const HOST_DIRS: [&str; 2] = ["/run/containers", "/run/containers/networks"];
/// How long processes left by conmon get to exit by themselves.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One private Podman at a time per test process: leftover checks of one
/// must not see another's containers.
static SERIAL: Mutex<()> = Mutex::new(());
/// Tells apart the cgroup parents of successive Podmans in one process.
static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

/// A private Podman.
pub struct Podman {
    root: PathBuf,
    cgroup_parent: String,
    runtime: Option<Runtime>,
    netns: Option<NetNs>,
    /// `/run/netns` before the test: Podman names the namespaces it makes
    /// there `netns-<uuid>`, and any new one at teardown is a leftover.
    netns_before: BTreeSet<String>,
    /// Directories outside `root` Podman makes on first use and that did
    /// not exist before (netavark's IPAM database and aardvark-dns's
    /// configuration, at a fixed path for rootful Podman).
    host_dirs: Vec<PathBuf>,
    torn_down: bool,
    _serial: MutexGuard<'static, ()>,
}

impl Podman {
    /// Sets a private Podman up in a fresh network namespace; `runtime`
    /// (husk) is used for every container instead of runc (Podman's
    /// default would be crun), its arguments passed through `--runtime-flag`.
    pub fn start(runtime: Option<&Runtime>) -> Result<Self> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        ensure_installed()?;
        let root = tempfile::Builder::new()
            .prefix("husk-pm-")
            .tempdir()
            .context("creating Podman's directory")?
            .keep();
        let mut podman = Self {
            cgroup_parent: format!(
                "husk-pm-{}-{}",
                std::process::id(),
                SEQUENCE.fetch_add(1, Ordering::Relaxed)
            ),
            root,
            runtime: runtime.cloned(),
            netns: None,
            netns_before: podman_namespaces(),
            host_dirs: HOST_DIRS
                .iter()
                .map(PathBuf::from)
                .filter(|p| !p.exists())
                .collect(),
            torn_down: false,
            _serial: serial,
        };
        // From here on, an error drops `podman`, which cleans up.
        podman.write_config()?;
        podman.netns = Some(NetNs::create()?);
        let out = podman.podman(&["info", "--format", "{{.Host.NetworkBackend}}"]);
        if !out.status.success() {
            bail!(
                "podman info failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(podman)
    }

    /// Podman's private directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The network namespace every podman command runs in.
    pub fn netns(&self) -> &NetNs {
        self.netns
            .as_ref()
            .expect("the namespace lives until teardown")
    }

    /// `podman <global flags> <args>` in the test's namespace, with
    /// [`COMMAND_TIMEOUT`]; `run` and `create` get the test's cgroup
    /// parent and this process's resource limits. Panics (naming the command) if it hangs.
    pub fn podman(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        let cgroup_parent = format!("--cgroup-parent=/{}", self.cgroup_parent);
        match args.split_first() {
            Some((verb, rest)) if *verb == "run" || *verb == "create" => {
                // See own_ulimits.
                cmd.arg(verb)
                    .arg(&cgroup_parent)
                    .args(own_ulimits())
                    .args(rest);
            }
            _ => {
                cmd.args(args);
            }
        }
        if let Some(ns) = &self.netns {
            ns.enter(&mut cmd)
                .unwrap_or_else(|e| panic!("cannot enter the test namespace: {e:#}"));
        }
        match timed::output(&mut cmd, COMMAND_TIMEOUT) {
            Ok(Ok(out)) => out,
            Ok(Err(hung)) => panic!(
                "`podman {}` did not finish within {COMMAND_TIMEOUT:?}\nstdout: {}\nstderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&hung.partial.stdout),
                String::from_utf8_lossy(&hung.partial.stderr)
            ),
            Err(e) => panic!("cannot run {PODMAN}: {e}"),
        }
    }

    /// Imports a busybox root file system (tests/src/rootfs.rs) as image
    /// `tag` with `podman import`.
    pub fn import_busybox(&self, tag: &str) -> Result<()> {
        host::import_busybox(&self.root.join("busybox-rootfs"), "podman", |tarball| {
            self.podman(&["import", tarball, tag])
        })
    }

    /// Removes every container, then returns what was left behind (after
    /// removing that as well) and deletes the namespace.
    pub fn shutdown(mut self) -> Leftovers {
        self.teardown()
    }

    /// The podman command with the private configuration and directories.
    fn command(&self) -> Command {
        let mut cmd = Command::new(PODMAN);
        cmd.env("CONTAINERS_CONF", self.root.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.root.join("storage.conf"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.root.join("registries.conf"),
            )
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            // Inherited by conmon, the runtime and VMs: leftovers are
            // found by it.
            .env("HUSK_E2E_PODMAN_ROOT", &self.root)
            .arg("--root")
            .arg(self.root.join("storage"))
            .arg("--runroot")
            .arg(self.root.join("run"))
            .arg("--tmpdir")
            .arg(self.root.join("tmp"))
            .arg("--network-config-dir")
            .arg(self.root.join("networks"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(["--network-backend", "netavark"])
            .stdin(Stdio::null());
        if let Some(runtime) = &self.runtime {
            cmd.arg("--runtime").arg(&runtime.path);
            // `--runtime-flag config=X` reaches the runtime as `--config=X`.
            for flag in runtime_flags(&runtime.args) {
                cmd.arg("--runtime-flag").arg(flag);
            }
        } else {
            cmd.args(["--runtime", "runc"]);
        }
        cmd
    }

    fn write_config(&self) -> Result<()> {
        for dir in ["storage", "run", "tmp", "networks"] {
            std::fs::create_dir_all(self.root.join(dir))?;
        }
        let driver = if host::overlay_usable(&self.root) {
            "overlay"
        } else {
            "vfs"
        };
        std::fs::write(
            self.root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"{driver}\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                self.root.join("storage").display(),
                self.root.join("run").display()
            ),
        )?;
        // No registries: images come from `podman import` only.
        std::fs::write(
            self.root.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )?;
        std::fs::write(
            self.root.join("containers.conf"),
            format!(
                "[engine]\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 [network]\nnetwork_backend = \"netavark\"\nnetwork_config_dir = \"{}\"\n",
                self.root.join("events.log").display(),
                self.root.join("networks").display()
            ),
        )?;
        Ok(())
    }

    fn teardown(&mut self) -> Leftovers {
        if std::mem::replace(&mut self.torn_down, true) {
            return Leftovers::default();
        }
        if self.netns.is_some() {
            let _ = self.podman(&["rm", "-a", "-f", "-t", "2"]);
        }
        let markers = vec![
            self.root.to_string_lossy().into_owned(),
            self.cgroup_parent.clone(),
        ];
        let processes = leftovers::settled_processes(&markers, SETTLE_TIMEOUT);
        let mut network = Vec::new();
        if let Some(ns) = &self.netns {
            network.extend(netns::husk_state_in(&ns.path(), ns.name()));
        }
        for p in &processes {
            let ns = PathBuf::from(format!("/proc/{}/ns/net", p.pid));
            if let Ok(taps) = netns::husk_taps_in(&ns) {
                network.extend(
                    taps.into_iter()
                        .map(|t| format!("tap {t} of pid {}", p.pid)),
                );
            }
        }
        let new_namespaces: Vec<String> = podman_namespaces()
            .difference(&self.netns_before)
            .cloned()
            .collect();
        network.extend(
            new_namespaces
                .iter()
                .map(|n| format!("namespace {}/{n}", netns::RUN_NETNS)),
        );
        // Podman puts every conmon in `<cgroup parent>/conmon` and never
        // removes it: Podman's own, not a container's.
        if processes.is_empty() {
            for dir in leftovers::cgroup_parents(&self.cgroup_parent) {
                let _ = std::fs::remove_dir(dir.join("conmon"));
            }
        }
        let mut found = Leftovers {
            processes,
            // The overlay driver's private bind mount of its own home is
            // containers/storage's, and whether a Podman command that ends
            // unmounts it depends on which ends last: not a leftover.
            mounts: leftovers::mounts(&self.root, &markers)
                .into_iter()
                .filter(|m| *m != self.root.join("storage").join("overlay"))
                .collect(),
            paths: leftovers::cgroups(&self.cgroup_parent),
            network,
        };

        // Reported, then removed all the same.
        for p in &found.processes {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        for n in &new_namespaces {
            let _ = Command::new("ip").args(["netns", "delete", n]).status();
        }
        for m in &found.mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        thread::sleep(Duration::from_millis(200));
        for p in &found.paths {
            let _ = std::fs::remove_dir(p);
        }
        for dir in leftovers::cgroup_parents(&self.cgroup_parent) {
            if std::fs::remove_dir(&dir).is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound) {
                found.paths.push(dir);
            }
        }
        // containers/storage's own mounts (the overlay driver's private
        // bind mount of its directory) are not leftovers of a container.
        for m in leftovers::mounts(&self.root, &[]) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        if leftovers::mounts(&self.root, &[]).is_empty() {
            if std::fs::remove_dir_all(&self.root).is_err() {
                found.paths.push(self.root.clone());
            }
        } else {
            found.paths.push(self.root.clone());
        }
        // Deepest first; what existed before the test is not touched.
        for dir in self.host_dirs.iter().rev() {
            if dir.ends_with("networks") {
                let _ = std::fs::remove_dir_all(dir);
            } else {
                let _ = std::fs::remove_dir(dir);
            }
        }
        if let Some(ns) = self.netns.take() {
            found.delete_namespace(ns);
        }
        found
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let left = self.teardown();
        if !left.is_empty() {
            eprintln!("private Podman teardown found and removed leftovers:\n{left}");
        }
    }
}

/// `--ulimit` flags with modest limits: Podman would raise the open-file
/// and process limits past what this host grants (no CAP_SYS_RESOURCE
/// here, and Podman lowers its own process limit to pid_max), and the
/// runtime then fails with EPERM; lowering a limit is always allowed.
fn own_ulimits() -> Vec<String> {
    ["--ulimit=nofile=1024:4096", "--ulimit=nproc=2048:2048"]
        .map(String::from)
        .to_vec()
}

/// `--config X` (the way Docker registers husk) as Podman's runtime flags
/// (`config=X`, passed on as `--config=X`).
fn runtime_flags(args: &[String]) -> Vec<String> {
    let mut flags = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(name) = arg.strip_prefix("--") else {
            continue;
        };
        match name.split_once('=') {
            Some((name, value)) => flags.push(format!("{name}={value}")),
            None => match it.clone().next().filter(|v| !v.starts_with("--")) {
                Some(value) => {
                    flags.push(format!("{name}={value}"));
                    it.next();
                }
                None => flags.push(name.to_owned()),
            },
        }
    }
    flags
}

/// The `netns-*` entries of `/run/netns` (Podman's container namespaces).
fn podman_namespaces() -> BTreeSet<String> {
    std::fs::read_dir(netns::RUN_NETNS)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("netns-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Installs [`PACKAGES`] from Debian when podman or netavark is missing.
fn ensure_installed() -> Result<()> {
    let needed = [PODMAN, "/usr/lib/podman/netavark", "/usr/bin/conmon"].map(PathBuf::from);
    host::ensure_installed(&needed, &PACKAGES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_runtime_arguments_become_podman_runtime_flags() {
        let args = ["--config", "/c.toml", "--debug", "--log=/l"].map(String::from);
        assert_eq!(runtime_flags(&args), ["config=/c.toml", "debug", "log=/l"]);
    }
}
