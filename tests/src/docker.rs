//! A private Docker for end-to-end tests: its own containerd and dockerd
//! (Debian's `containerd` and `docker.io`) on sockets and directories under
//! one temporary directory, never the system's daemons.
//!
//! [`DockerDaemon::start`] registers the runtimes under test in the daemon's
//! `daemon.json` and runs the daemons without networking (`--bridge=none`,
//! no iptables); [`DockerDaemon::start_networked`] runs them inside a network
//! namespace of the test's own ([`crate::netns`]) with Docker's bridge,
//! NAT and port publishing on, so none of it reaches the machine's network; [`DockerDaemon::docker`] runs the Docker CLI against it
//! with a deadline; [`DockerDaemon::shutdown`] (or dropping it, also on a
//! failed test) removes every container, stops both daemons by PID, reports
//! what was left behind, and then removes that too.

pub mod checks;
pub mod host;
pub mod husk;
pub mod leftovers;
pub mod pty;
pub mod timed;

use std::fmt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use crate::netns::{self, NetNs};

/// The Docker CLI of Debian's docker.io (not whatever else is on PATH).
pub const DOCKER: &str = "/usr/bin/docker";
/// Debian's dockerd.
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's containerd.
pub const CONTAINERD: &str = "/usr/bin/containerd";
/// What the daemons need besides themselves: containerd's runc shim and runc.
const HELPERS: [&str; 2] = ["/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc"];
/// The PATH daemons get: Debian's binaries, not /usr/local ones.
pub const DAEMON_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// The Debian packages that provide all of the above.
pub const PACKAGES: [&str; 2] = ["docker.io", "containerd"];

/// How long one Docker CLI command may take by default. Generous: under
/// husk on TCG each container boots a VM.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long each daemon may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// dockerd's own limit for stopping containers when it shuts down.
const SHUTDOWN_TIMEOUT_SECS: u32 = 5;
/// How long each daemon gets between SIGTERM and SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long teardown's `docker rm -f` of what a failed test left running
/// may take before the daemons are stopped regardless.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How deep below a runtime's state directory an entry named by a container
/// ID may sit (husk: `<sandbox>/shared/<id>`).
const STATE_DEPTH: usize = 3;
/// How long processes left by the daemons (shims) get to exit by themselves
/// before they count as leftovers.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The containerd namespace dockerd uses for containers.
const NAMESPACE: &str = "moby";

/// One test process runs one private Docker at a time: the leftover checks
/// of one must not see another's containers.
static SERIAL: Mutex<()> = Mutex::new(());
/// Tells apart the cgroup parents of successive daemons in one process.
static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

/// An OCI runtime registered in `daemon.json`, used with `--runtime=<name>`.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The name `docker run --runtime` takes.
    pub name: String,
    /// The runtime binary.
    pub path: PathBuf,
    /// Arguments dockerd puts before the runc-style global flags and verb.
    pub args: Vec<String>,
    /// Where the runtime keeps per-container state of its own, outside the
    /// `--root` dockerd gives it (husk: its sandbox directories); searched
    /// at teardown for entries named by a container ID.
    pub state_dirs: Vec<PathBuf>,
}

/// What a daemon's teardown found left behind, before it removed it.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Processes that still mention the daemons' directory, cgroup or
    /// containers (shims, runtimes, VMs, container processes).
    pub processes: Vec<leftovers::Process>,
    /// Mount points under the daemons' directory or of a container.
    pub mounts: Vec<PathBuf>,
    /// Runtime state directories, shim sockets and container cgroups of
    /// removed containers, and anything teardown could not remove.
    pub paths: Vec<PathBuf>,
    /// Network state: husk taps (`husktap*`), tc qdiscs and filters,
    /// network namespaces of containers or of the test.
    pub network: Vec<String>,
}

impl Leftovers {
    /// True when nothing was left.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
            && self.mounts.is_empty()
            && self.paths.is_empty()
            && self.network.is_empty()
    }

    /// Deletes the test's namespace `ns` (last: the daemons and containers
    /// that ran in it are gone); one that stays is reported.
    pub fn delete_namespace(&mut self, ns: NetNs) {
        let name = ns.name().to_owned();
        if let Err(e) = ns.delete() {
            self.network
                .push(format!("namespace {name} not deleted: {e:#}"));
        }
    }
}

impl fmt::Display for Leftovers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.processes {
            writeln!(f, "process {p}")?;
        }
        for m in &self.mounts {
            writeln!(f, "mount {}", m.display())?;
        }
        for p in &self.paths {
            writeln!(f, "path {}", p.display())?;
        }
        for n in &self.network {
            writeln!(f, "network {n}")?;
        }
        Ok(())
    }
}

/// A running private containerd + dockerd pair.
pub struct DockerDaemon {
    root: PathBuf,
    cgroup_parent: String,
    containerd: Option<Child>,
    dockerd: Option<Child>,
    /// Directories outside `root` that the daemons create on first use
    /// (plugin and shim socket directories) and that did not exist before.
    host_dirs: Vec<PathBuf>,
    /// The registered runtimes' own state directories.
    state_dirs: Vec<PathBuf>,
    cidfiles: AtomicUsize,
    /// The namespace the daemons run in, when networked: deleted last.
    netns: Option<NetNs>,
    torn_down: bool,
    _serial: MutexGuard<'static, ()>,
}

impl DockerDaemon {
    /// Installs Docker if missing, then starts containerd and dockerd with
    /// `runtimes` registered besides the built-in `runc`. Fails with the
    /// daemons' log tails if either does not come up.
    pub fn start(runtimes: &[Runtime]) -> Result<Self> {
        Self::start_with(runtimes, false)
    }

    /// [`DockerDaemon::start`], but both daemons run in a fresh network
    /// namespace ([`DockerDaemon::netns`]) with Docker's default bridge
    /// (`docker0`), iptables NAT and `-p` publishing on inside it. Clients
    /// of published ports and servers for containers run there too
    /// ([`NetNs::command`]). Teardown also reports husk taps, tc filters and
    /// namespaces left, then deletes the namespace.
    pub fn start_networked(runtimes: &[Runtime]) -> Result<Self> {
        Self::start_with(runtimes, true)
    }

    fn start_with(runtimes: &[Runtime], networked: bool) -> Result<Self> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        ensure_installed()?;
        let root = tempfile::Builder::new()
            .prefix("husk-dk-")
            .tempdir()
            .context("creating the daemons' directory")?
            .keep();
        let host_dirs = [
            "/run/containerd",
            "/run/containerd/s",
            "/run/docker",
            "/run/docker/plugins",
        ]
        .iter()
        .map(PathBuf::from)
        .filter(|p| !p.exists())
        .collect();
        let mut daemon = Self {
            cgroup_parent: format!(
                "husk-dk-{}-{}",
                std::process::id(),
                SEQUENCE.fetch_add(1, Ordering::Relaxed)
            ),
            root,
            containerd: None,
            dockerd: None,
            host_dirs,
            state_dirs: runtimes
                .iter()
                .flat_map(|r| r.state_dirs.iter().cloned())
                .collect(),
            cidfiles: AtomicUsize::new(0),
            netns: None,
            torn_down: false,
            _serial: serial,
        };
        // From here on, an error drops `daemon`, which tears down what started.
        std::fs::create_dir(daemon.cidfile_dir())?;
        if networked {
            daemon.netns = Some(NetNs::create().context("creating the test's network namespace")?);
        }
        daemon.start_containerd()?;
        daemon.start_dockerd(runtimes)?;
        Ok(daemon)
    }

    /// The daemons' private directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The network namespace the daemons run in ([`DockerDaemon::start_networked`]).
    pub fn netns(&self) -> Option<&NetNs> {
        self.netns.as_ref()
    }

    /// The Docker CLI, pointed at this daemon, stdin from /dev/null.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.env(
            "DOCKER_HOST",
            format!("unix://{}", self.docker_socket().display()),
        )
        .env("DOCKER_CONFIG", self.root.join("cli"))
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .stdin(Stdio::null());
        cmd
    }

    /// Runs `docker <args>` with [`COMMAND_TIMEOUT`]; panics (naming the
    /// command and what it printed) if it hangs.
    pub fn docker(&self, args: &[&str]) -> Output {
        let timeout = COMMAND_TIMEOUT;
        match timed::output(self.command().args(args), timeout) {
            Ok(Ok(out)) => out,
            Ok(Err(hung)) => panic!(
                "`docker {}` did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&hung.partial.stdout),
                String::from_utf8_lossy(&hung.partial.stderr)
            ),
            Err(e) => panic!("cannot run {DOCKER}: {e}"),
        }
    }

    /// `docker run <args>` with a `--cidfile`, so teardown knows the
    /// container's ID (and checks for its leftovers) even after `--rm`.
    pub fn run(&self, args: &[&str]) -> Output {
        let cidfile = self.cidfile();
        let cidfile = cidfile.to_string_lossy();
        let mut all = vec!["run", "--cidfile", &cidfile];
        all.extend_from_slice(args);
        self.docker(&all)
    }

    /// A fresh path for `docker run --cidfile`; teardown reads them all.
    pub fn cidfile(&self) -> PathBuf {
        let n = self.cidfiles.fetch_add(1, Ordering::Relaxed);
        self.cidfile_dir().join(format!("{n}.cid"))
    }

    /// The IDs of the containers created through [`DockerDaemon::run`] or
    /// a [`DockerDaemon::cidfile`].
    pub fn container_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.cidfile_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty())
            .collect()
    }

    /// Imports a busybox root file system (tests/src/rootfs.rs) as image
    /// `tag` with `docker import`.
    pub fn import_busybox(&self, tag: &str) -> Result<()> {
        host::import_busybox(&self.root.join("busybox-rootfs"), "docker", |tarball| {
            self.docker(&["import", tarball, tag])
        })
    }

    /// The last `lines` lines of each daemon's log.
    pub fn log_tails(&self, lines: usize) -> String {
        ["containerd.log", "dockerd.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.root.join(name)).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                let tail = all[all.len().saturating_sub(lines)..].join("\n");
                format!("--- last {lines} lines of {name} ---\n{tail}\n")
            })
            .collect()
    }

    /// Removes every container, stops both daemons, and returns what was
    /// left behind (after removing that as well).
    pub fn shutdown(mut self) -> Leftovers {
        self.teardown()
    }

    /// Where containerd's shim for container `id` listens while it runs.
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        shim_socket(&self.containerd_socket(), id)
    }

    fn docker_socket(&self) -> PathBuf {
        self.root.join("docker.sock")
    }

    fn containerd_socket(&self) -> PathBuf {
        self.root.join("containerd.sock")
    }

    fn cidfile_dir(&self) -> PathBuf {
        self.root.join("cidfiles")
    }

    fn start_containerd(&mut self) -> Result<()> {
        let root = &self.root;
        let config = root.join("containerd.toml");
        // The CRI plugin is off: it would set up CNI and its own state
        // outside this directory, and Docker does not use it.
        let text = format!(
            "version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {grpc}\n\
             [ttrpc]\n  address = {ttrpc}\n\
             [debug]\n  address = \"\"\n\
             [metrics]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
            root = husk::toml_string(&root.join("containerd-root")),
            state = husk::toml_string(&root.join("containerd-state")),
            grpc = husk::toml_string(&self.containerd_socket()),
            ttrpc = husk::toml_string(&root.join("containerd.sock.ttrpc")),
            opt = husk::toml_string(&root.join("containerd-opt")),
        );
        std::fs::write(&config, text)?;
        let mut cmd = Command::new(CONTAINERD);
        cmd.arg("--config").arg(&config);
        let child = self.spawn_daemon(cmd, &root.join("containerd.log"))?;
        self.containerd = Some(child);
        let socket = self.containerd_socket();
        self.wait_ready("containerd", |_| UnixStream::connect(&socket).is_ok())
    }

    fn start_dockerd(&mut self, runtimes: &[Runtime]) -> Result<()> {
        let root = &self.root;
        let config = root.join("daemon.json");
        std::fs::write(&config, daemon_json(root, runtimes)?)?;
        let driver = storage_driver(root);
        let mut cmd = Command::new(DOCKERD);
        cmd.arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.docker_socket().display()))
            .arg("--containerd")
            .arg(self.containerd_socket())
            .args(["--storage-driver", driver]);
        if self.netns.is_none() {
            // No docker0 bridge, NAT rules or userland proxies on the host:
            // containers get their own network namespace with `lo` only.
            cmd.args(["--bridge=none", "--iptables=false", "--ip6tables=false"]);
        } else {
            // In the test's namespace: Docker's own bridge and IPv4 NAT
            // (its IPv6 NAT is experimental in 20.10, left off).
            cmd.args(["--iptables=true", "--ip6tables=false"]);
        }
        cmd.args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .args(["--cgroup-parent", &self.cgroup_parent])
            .args(["--shutdown-timeout", &SHUTDOWN_TIMEOUT_SECS.to_string()]);
        let child = self.spawn_daemon(cmd, &root.join("dockerd.log"))?;
        self.dockerd = Some(child);
        self.wait_ready("dockerd", |d| {
            let out = timed::output(
                d.command()
                    .args(["version", "--format", "{{.Server.Version}}"]),
                Duration::from_secs(10),
            );
            matches!(out, Ok(Ok(out)) if out.status.success())
        })
    }

    /// [`spawn_daemon`], inside the test's namespace when there is one.
    fn spawn_daemon(&self, mut cmd: Command, log: &Path) -> Result<Child> {
        if let Some(ns) = &self.netns {
            ns.enter(&mut cmd)?;
        }
        spawn_daemon(cmd, &self.root, log)
    }

    /// Polls `ready` until it holds; fails with the log tails if the
    /// daemon exits or [`START_TIMEOUT`] passes.
    fn wait_ready(&mut self, name: &str, ready: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready(self) {
                return Ok(());
            }
            // Either daemon dying ends the wait: dockerd needs containerd.
            let exited = [
                ("containerd", self.containerd.as_mut()),
                ("dockerd", self.dockerd.as_mut()),
            ]
            .into_iter()
            .find_map(|(daemon, child)| Some((daemon, child?.try_wait().ok()??)));
            if let Some((daemon, status)) = exited {
                bail!(
                    "{daemon} exited ({status}) while {name} was starting\n{}",
                    self.log_tails(40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} did not answer within {START_TIMEOUT:?}\n{}",
                    self.log_tails(40)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn teardown(&mut self) -> Leftovers {
        if std::mem::replace(&mut self.torn_down, true) {
            return Leftovers::default();
        }
        let ids = self.container_ids();
        self.remove_all_containers();
        stop(self.dockerd.take(), "dockerd");
        stop(self.containerd.take(), "containerd");
        // libnetwork bind-mounts dockerd's own namespace (the test's) there
        // for `--network host` and leaves it at exit: dockerd's, not a
        // container's.
        let default_ns = self.root.join("exec/netns/default");
        if self.netns.is_some() && default_ns.exists() {
            let _ = nix::mount::umount2(&default_ns, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&default_ns);
        }

        let mut markers = vec![
            self.root.to_string_lossy().into_owned(),
            self.cgroup_parent.clone(),
        ];
        markers.extend(ids.iter().cloned());
        let mut found = self.find_leftovers(&ids, &markers);
        found.network = self.network_leftovers(&found.processes);
        // Leftovers are reported, then removed all the same.
        for path in self.clean(&found) {
            if !found.paths.contains(&path) {
                found.paths.push(path);
            }
        }
        if let Some(ns) = self.netns.take() {
            found.delete_namespace(ns);
        }
        found
    }

    /// husk taps and tc state in the test's namespace, in the namespaces
    /// of leftover `processes` and Docker's container namespaces (files
    /// under `<exec-root>/netns`, which must be gone by now), and husk taps
    /// in this machine's namespace (read from /sys, nothing touched).
    fn network_leftovers(&self, processes: &[leftovers::Process]) -> Vec<String> {
        let mut found = Vec::new();
        if let Some(ns) = &self.netns {
            found.extend(netns::husk_state_in(
                &ns.path(),
                &format!("the test namespace {}", ns.name()),
            ));
        }
        for p in processes {
            let ns = PathBuf::from(format!("/proc/{}/ns/net", p.pid));
            found.extend(netns::husk_state_in(
                &ns,
                &format!("the namespace of leftover pid {}", p.pid),
            ));
        }
        if let Ok(entries) = std::fs::read_dir(self.root.join("exec/netns")) {
            for entry in entries.flatten() {
                let path = entry.path();
                found.extend(netns::husk_state_in(&path, &path.display().to_string()));
                found.push(format!("container namespace {}", path.display()));
            }
        }
        if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
            found.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with("husktap"))
                    .map(|n| format!("tap {n} in this machine's own namespace")),
            );
        }
        found
    }

    fn remove_all_containers(&self) {
        if self.dockerd.is_none() {
            return;
        }
        let Ok(Ok(out)) = timed::output(
            self.command().args(["ps", "-aq", "--no-trunc"]),
            Duration::from_secs(30),
        ) else {
            return;
        };
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        let ids: Vec<&str> = listed.split_whitespace().collect();
        if !ids.is_empty() {
            let mut rm = self.command();
            rm.args(["rm", "-f"]).args(&ids);
            let _ = timed::output(&mut rm, REMOVE_TIMEOUT);
        }
    }

    /// What is left once the shims had [`SETTLE_TIMEOUT`] to exit.
    fn find_leftovers(&self, ids: &[String], markers: &[String]) -> Leftovers {
        let processes = leftovers::settled_processes(markers, SETTLE_TIMEOUT);
        let mut paths = Vec::new();
        for dir in &self.state_dirs {
            paths.extend(leftovers::entries_named(dir, ids, STATE_DEPTH));
        }
        // dockerd gives each runtime `--root <exec-root>/runtime-<name>/moby`.
        let runtime_roots: Vec<PathBuf> = std::fs::read_dir(self.root.join("exec"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path().join(NAMESPACE))
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            paths.push(self.shim_socket(id));
            paths.extend(runtime_roots.iter().map(|root| root.join(id)));
        }
        paths.retain(|p| p.exists());
        paths.extend(leftovers::cgroups(&self.cgroup_parent));
        Leftovers {
            processes,
            mounts: leftovers::mounts(&self.root, markers),
            paths,
            network: Vec::new(),
        }
    }

    /// Kills, unmounts and removes `found` and everything the daemons made;
    /// returns what could not be removed.
    fn clean(&self, found: &Leftovers) -> Vec<PathBuf> {
        for p in &found.processes {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while found
            .processes
            .iter()
            .any(|p| Path::new(&format!("/proc/{}", p.pid)).exists())
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(50));
        }
        for m in &found.mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        let mut failed = Vec::new();
        for p in &found.paths {
            let removed = if p.starts_with("/sys/fs/cgroup") {
                std::fs::remove_dir(p)
            } else if p.is_dir() {
                remove_tree(&sandbox_of(p))
            } else {
                std::fs::remove_file(p)
            };
            if removed.is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound) {
                failed.push(p.clone());
            }
        }
        for dir in leftovers::cgroup_parents(&self.cgroup_parent) {
            let removed = std::fs::remove_dir(&dir);
            if removed.is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound) {
                failed.push(dir);
            }
        }
        if remove_tree(&self.root).is_err() {
            failed.push(self.root.clone());
        }
        // Deepest first; a directory someone else now uses is not empty
        // and stays.
        for dir in self.host_dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        failed
    }
}

impl Drop for DockerDaemon {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if thread::panicking() {
            eprintln!("{}", self.log_tails(60));
        }
        let left = self.teardown();
        if !left.is_empty() {
            eprintln!("private Docker teardown found and removed leftovers:\n{left}");
        }
    }
}

/// Installs Debian's docker.io and containerd when any part is missing.
fn ensure_installed() -> Result<()> {
    let needed: Vec<PathBuf> = [DOCKER, DOCKERD, CONTAINERD]
        .into_iter()
        .chain(HELPERS)
        .map(PathBuf::from)
        .collect();
    host::ensure_installed(&needed, &PACKAGES)
}

/// Starts a daemon with its output in `log`, a fixed PATH
/// ([`DAEMON_PATH`] unless `cmd` sets one), `root` in its environment (inherited by
/// shims, runtimes and VMs, so leftovers are found by it), and SIGTERM if
/// the test thread dies.
pub(crate) fn spawn_daemon(mut cmd: Command, root: &Path, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    // A PATH the caller set (shims under test first) is kept.
    if !cmd.get_envs().any(|(key, _)| key == "PATH") {
        cmd.env("PATH", DAEMON_PATH);
    }
    cmd.env("HUSK_E2E_DOCKER_ROOT", root)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: prctl is async-signal-safe. The parent-death signal fires when
    // the spawning *thread* exits; the daemon is stopped by its owner on that
    // same thread (teardown), so this only catches a test process that died.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.spawn().with_context(|| format!("starting {program}"))
}

/// The directory to remove for a leftover `path` named by a container ID:
/// husk bind-mounts each container under `<sandbox>/shared/<id>`, and the
/// whole sandbox directory (sockets, logs) goes with its only container.
fn sandbox_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(shared) if shared.file_name().is_some_and(|n| n == "shared") => shared
            .parent()
            .map_or_else(|| path.to_owned(), Path::to_path_buf),
        _ => path.to_owned(),
    }
}

/// `remove_dir_all`, refused while anything is still mounted below `dir`
/// (it would delete through the mount, e.g. into a bind-mounted host
/// directory).
pub(crate) fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mounted = leftovers::mounts(dir, &[]);
    if let Some(m) = mounted.first() {
        return Err(std::io::Error::other(format!(
            "{} is still mounted",
            m.display()
        )));
    }
    std::fs::remove_dir_all(dir)
}

/// SIGTERM, then SIGKILL if `child` is still running after [`STOP_TIMEOUT`].
pub(crate) fn stop(child: Option<Child>, name: &str) {
    let Some(mut child) = child else {
        return;
    };
    if let Ok(None) = child.try_wait() {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let stopped = timed::wait_until(&mut child, Instant::now() + STOP_TIMEOUT);
        if !matches!(stopped, Ok(Some(_))) {
            eprintln!("{name} did not stop within {STOP_TIMEOUT:?} of SIGTERM: killing it");
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// overlay2 wherever the kernel has overlayfs and `dir` is not itself on
/// overlayfs (where overlay2 cannot stack); vfs (full copies) otherwise.
fn storage_driver(dir: &Path) -> &'static str {
    if host::overlay_usable(dir) {
        "overlay2"
    } else {
        eprintln!("{} cannot hold overlay2: dockerd uses vfs", dir.display());
        "vfs"
    }
}

/// dockerd's configuration file: the runtimes, and its trust key inside
/// `root` (dockerd 20.10 would otherwise write /etc/docker/key.json).
fn daemon_json(root: &Path, runtimes: &[Runtime]) -> Result<String> {
    let runtimes: serde_json::Map<String, serde_json::Value> = runtimes
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                serde_json::json!({ "path": r.path, "runtimeArgs": r.args }),
            )
        })
        .collect();
    let config = serde_json::json!({
        "deprecated-key-path": root.join("key.json"),
        "runtimes": runtimes,
    });
    Ok(serde_json::to_string_pretty(&config)?)
}

/// Where containerd's shim for container `id` listens: containerd 1.6 puts
/// it in /run/containerd/s/, named by the SHA-256 of
/// `<containerd address>/<namespace>/<id>`, whatever containerd's state dir.
fn shim_socket(containerd_socket: &Path, id: &str) -> PathBuf {
    let key = containerd_socket.join(NAMESPACE).join(id);
    let digest = Sha256::digest(key.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    PathBuf::from("/run/containerd/s").join(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_json_registers_runtimes_with_their_arguments() {
        let text = daemon_json(
            Path::new("/r"),
            &[Runtime {
                name: "husk".into(),
                path: "/bin/husk".into(),
                args: vec!["--config".into(), "/c.toml".into()],
                state_dirs: vec![],
            }],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["runtimes"]["husk"]["path"], "/bin/husk");
        assert_eq!(
            v["runtimes"]["husk"]["runtimeArgs"],
            serde_json::json!(["--config", "/c.toml"])
        );
        assert_eq!(v["deprecated-key-path"], "/r/key.json");
    }

    #[test]
    fn a_container_under_a_sandbox_share_takes_the_sandbox_with_it() {
        assert_eq!(
            sandbox_of(Path::new("/run/husk/vm/s1/shared/abc")),
            Path::new("/run/husk/vm/s1")
        );
        assert_eq!(
            sandbox_of(Path::new("/run/husk/abc")),
            Path::new("/run/husk/abc")
        );
    }

    #[test]
    fn a_tree_with_a_mount_below_is_not_removed() {
        // /proc is mounted below /, so / must be refused (and nothing touched).
        let err = remove_tree(Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("still mounted"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        remove_tree(dir.path()).unwrap();
        assert!(!dir.path().exists());
    }

    #[test]
    fn shim_sockets_are_named_by_the_hash_of_address_namespace_and_id() {
        // sha256sum of "/x/containerd.sock/moby/abc"
        assert_eq!(
            shim_socket(Path::new("/x/containerd.sock"), "abc"),
            Path::new(
                "/run/containerd/s/5e6c35b3d55d9aed4fc99d934606345b676aed342178539ae011542f90abe0b9"
            )
        );
    }
}
