//! A private containerd with its CRI plugin, for Kubernetes end-to-end
//! tests: Debian's containerd on sockets and directories under one
//! temporary directory, running inside a network namespace of the test's
//! own ([`crate::netns`]) so the pods' CNI bridge lives there, with the
//! runtimes under test registered as CRI runtime handlers besides runc.
//!
//! [`Containerd::start`] writes the configuration ([`config`]) and starts
//! the daemon; [`Containerd::import_images`] imports an offline busybox
//! image and the pause image ([`images`]); [`Containerd::cri`] gives a
//! blocking CRI client ([`cri`]) and [`Containerd::ctr`] runs `ctr`
//! against it. [`Containerd::shutdown`] (or dropping it, also on a failed
//! test) removes every pod and container, stops containerd by PID,
//! reports what was left behind, and then removes that too.

pub mod config;
pub mod cri;
pub mod images;

use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::docker::{self, host, leftovers, timed, Leftovers};
use crate::netns::{self, NetNs};
use config::Layout;
use cri::{Cri, PodConfig};

/// Debian's containerd.
pub const CONTAINERD: &str = "/usr/bin/containerd";
/// Its CLI.
pub const CTR: &str = "/usr/bin/ctr";
/// What the `runc` handler needs besides containerd.
const HELPERS: [&str; 2] = ["/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc"];
/// The Debian packages that provide all of the above and the CNI plugins
/// (scripts/install-deps.sh installs the same).
pub const PACKAGES: [&str; 3] = ["containerd", "containernetworking-plugins", "runc"];
/// The containerd namespace of the CRI plugin.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// How long one `ctr` command may take by default (under husk on TCG a
/// container boots a VM).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long containerd may take to answer CRI calls with its network ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long teardown gives each pod's stop and removal, and each `ctr`
/// cleanup command.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long shims get to exit by themselves before they count as leftovers.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Where containerd 1.6 puts shim sockets whatever its state directory.
const SHIM_SOCKETS: &str = "/run/containerd/s";
/// Where `ctr` keeps its containers' stdio FIFOs.
const CTR_FIFOS: &str = "/run/containerd/fifo";
/// The runc shim's default `--root` (for `ctr run`; the CRI `runc`
/// handler gets one under the test's directory).
const RUNC_DEFAULT_ROOT: &str = "/run/containerd/runc";
/// libcni's cache of each attachment's result, named `<network>-<id>-<if>`.
const CNI_RESULTS: &str = "/var/lib/cni/results";

/// One private containerd at a time per test process: the leftover checks
/// of one must not see another's shims and namespaces.
static SERIAL: Mutex<()> = Mutex::new(());
/// Tells apart successive daemons (cgroup parents, CNI networks) of one
/// process.
static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

/// A containerd shim v2 runtime registered with the CRI plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimRuntime {
    /// The CRI runtime handler (a RuntimeClass's `handler`): "husk", "runc".
    pub handler: String,
    /// containerd's runtime type, naming the shim binary:
    /// `io.containerd.husk.v2` runs `containerd-shim-husk-v2`.
    pub runtime_type: String,
    /// The directory holding `containerd-shim-<name>-v2`, put first on
    /// containerd's PATH (None: Debian's directories only).
    pub shim_dir: Option<PathBuf>,
    /// The runtime's configuration file, handed to the shim as the
    /// `ConfigPath` of its runtime options.
    pub config_path: Option<PathBuf>,
    /// Pod and container annotations (globs) the CRI plugin passes on to
    /// this runtime in the OCI spec.
    pub pod_annotations: Vec<String>,
    /// Where the runtime keeps per-sandbox state of its own; entries named
    /// by a pod or container ID there are leftovers at teardown.
    pub state_dirs: Vec<PathBuf>,
    /// Environment containerd passes on to the shims it starts (husk's
    /// shim finds its configuration through `HUSK_CONFIG`).
    pub env: Vec<(String, String)>,
}

impl ShimRuntime {
    /// A runtime with `handler`, `runtime_type` and the shim in `shim_dir`,
    /// no options.
    pub fn new(handler: &str, runtime_type: &str, shim_dir: Option<PathBuf>) -> Self {
        Self {
            handler: handler.into(),
            runtime_type: runtime_type.into(),
            shim_dir,
            config_path: None,
            pod_annotations: Vec::new(),
            state_dirs: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A running private containerd.
pub struct Containerd {
    layout: Layout,
    cgroup_parent: String,
    runtimes: Vec<ShimRuntime>,
    child: Option<Child>,
    netns: Option<NetNs>,
    /// `/run/netns` entries before the test: the CRI plugin names pod
    /// namespaces `cni-<uuid>` there, and any new one at teardown is a
    /// leftover.
    netns_before: BTreeSet<String>,
    /// Shim sockets, ctr FIFO directories and libcni results that existed
    /// before.
    shared_before: BTreeSet<PathBuf>,
    /// Directories outside the test's own that containerd, its shims or
    /// CNI create on first use and that did not exist before.
    host_dirs: Vec<PathBuf>,
    pods: AtomicUsize,
    torn_down: bool,
    _serial: MutexGuard<'static, ()>,
}

impl Containerd {
    /// Installs containerd, runc and the CNI plugins if missing, then
    /// starts containerd in a fresh network namespace with `runtimes`
    /// registered as CRI handlers besides `runc`, and waits until its CRI
    /// plugin reports the runtime and network ready. Fails with the log
    /// tail if it does not come up.
    pub fn start(runtimes: &[ShimRuntime]) -> Result<Self> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        ensure_installed()?;
        let dir = tempfile::Builder::new()
            .prefix("husk-cd-")
            .tempdir()
            .context("creating containerd's directory")?
            .keep();
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let snapshotter = if host::overlay_usable(&dir) {
            "overlayfs"
        } else {
            eprintln!(
                "{} cannot hold overlayfs: containerd uses native",
                dir.display()
            );
            "native"
        };
        let layout = Layout {
            dir,
            snapshotter: snapshotter.into(),
            sandbox_image: images::PAUSE.into(),
            network: format!("husk-cri-{}-{n}", std::process::id()),
        };
        let host_dirs = [
            "/run/containerd",
            SHIM_SOCKETS,
            CTR_FIFOS,
            RUNC_DEFAULT_ROOT,
            "/var/lib/cni",
            CNI_RESULTS,
        ]
        .iter()
        .map(PathBuf::from)
        .filter(|p| !p.exists())
        .collect();
        let mut runtimes: Vec<ShimRuntime> = runtimes.to_vec();
        if !runtimes.iter().any(|r| r.handler == "runc") {
            runtimes.push(config::runc_runtime());
        }
        let mut containerd = Self {
            cgroup_parent: format!("husk-cd-{}-{n}", std::process::id()),
            layout,
            runtimes,
            child: None,
            netns: None,
            netns_before: list_names(Path::new(netns::RUN_NETNS)),
            shared_before: [SHIM_SOCKETS, CTR_FIFOS, CNI_RESULTS]
                .iter()
                .flat_map(|d| list_paths(Path::new(d)))
                .collect(),
            host_dirs,
            pods: AtomicUsize::new(0),
            torn_down: false,
            _serial: serial,
        };
        // From here on, an error drops `containerd`, which cleans up.
        containerd.write_config()?;
        containerd.netns = Some(NetNs::create().context("creating the test's network namespace")?);
        containerd.spawn()?;
        containerd.wait_ready()?;
        Ok(containerd)
    }

    /// containerd's private directory.
    pub fn root(&self) -> &Path {
        &self.layout.dir
    }

    /// Its gRPC socket (CRI and containerd's own API).
    pub fn socket(&self) -> PathBuf {
        self.layout.socket()
    }

    /// The snapshotter in use (`overlayfs` or `native`).
    pub fn snapshotter(&self) -> &str {
        &self.layout.snapshotter
    }

    /// The cgroup parent (cgroupfs, from the root of each hierarchy) that
    /// [`Containerd::pod_config`] gives pods; `ctr run` containers should
    /// go under it too (`--cgroup /<parent>/<id>`).
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The network namespace containerd (and so the CNI bridge) runs in.
    pub fn netns(&self) -> &NetNs {
        self.netns
            .as_ref()
            .expect("the namespace lives until teardown")
    }

    /// containerd's state directory (`config.json` of each task under
    /// `io.containerd.runtime.v2.task/<namespace>/<id>/`).
    pub fn state_dir(&self) -> PathBuf {
        self.layout.dir.join("state")
    }

    /// containerd's PID (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where containerd keeps each task's bundle (`<namespace>/<id>/`,
    /// with the OCI `config.json` the shim is given).
    pub fn tasks_dir(&self) -> PathBuf {
        self.state_dir().join("io.containerd.runtime.v2.task")
    }

    /// The runtimes registered, `runc` included.
    pub fn runtimes(&self) -> &[ShimRuntime] {
        &self.runtimes
    }

    /// A CRI client on containerd's socket, each call bounded by
    /// [`cri::CALL_TIMEOUT`].
    pub fn cri(&self) -> Result<Cri> {
        Cri::connect(&self.socket(), cri::CALL_TIMEOUT)
    }

    /// A pod configuration named `name` in Kubernetes namespace
    /// `husk-e2e`, with a fresh UID, its log directory under the test's
    /// directory (created), and this daemon's cgroup parent.
    pub fn pod_config(&self, name: &str) -> Result<PodConfig> {
        let n = self.pods.fetch_add(1, Ordering::Relaxed);
        let uid = format!("{}-{n}", self.layout.network);
        let namespace = "husk-e2e";
        let logs = self
            .layout
            .pod_logs()
            .join(format!("{namespace}_{name}_{uid}"));
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(PodConfig::new(name, namespace, &uid, &logs)
            .cgroup_parent(&format!("/{}", self.cgroup_parent)))
    }

    /// Builds and imports the offline images into the CRI namespace,
    /// unpacked for the snapshotter in use: [`images::BUSYBOX`] and the
    /// sandbox image [`images::PAUSE`]. Labels them as the CRI plugin's
    /// own pulls are (`io.cri-containerd.image=managed`).
    pub fn import_images(&self) -> Result<()> {
        let work = self.layout.dir.join("images");
        std::fs::create_dir_all(&work)?;
        let layer_tar = work.join("layer.tar");
        let layer = images::busybox_layer(&work.join("rootfs"), &layer_tar)?;
        for spec in [images::ImageSpec::busybox(), images::ImageSpec::pause()] {
            let stem = spec.name.replace(['/', ':'], "_");
            let archive = work.join(format!("{stem}.tar"));
            images::write_archive(&spec, &layer_tar, &layer, &work.join(&stem), &archive)?;
            let archive_arg = archive.to_string_lossy().into_owned();
            let out = self.ctr_in(
                K8S_NAMESPACE,
                &[
                    "images",
                    "import",
                    "--snapshotter",
                    self.snapshotter(),
                    &archive_arg,
                ],
                COMMAND_TIMEOUT,
            )?;
            if !out.status.success() {
                bail!(
                    "ctr images import {} failed: {}",
                    spec.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let out = self.ctr_in(
                K8S_NAMESPACE,
                &[
                    "images",
                    "label",
                    &spec.name,
                    "io.cri-containerd.image=managed",
                ],
                COMMAND_TIMEOUT,
            )?;
            if !out.status.success() {
                bail!(
                    "ctr images label {} failed: {}",
                    spec.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::fs::remove_dir_all(work.join(&stem))?;
            std::fs::remove_file(&archive)?;
        }
        std::fs::remove_dir_all(&work)?;
        Ok(())
    }

    /// `ctr -n k8s.io <args>` against this containerd, with
    /// [`COMMAND_TIMEOUT`]; panics (naming the command and what it
    /// printed) if it hangs or cannot run.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in(K8S_NAMESPACE, args, COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `ctr -n <namespace> <args>` against this containerd (its
    /// snapshotter the default), killed after `timeout`.
    pub fn ctr_in(&self, namespace: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = self.ctr_command(namespace);
        cmd.args(args);
        match timed::output(&mut cmd, timeout).context("running ctr")? {
            Ok(out) => Ok(out),
            Err(hung) => Err(anyhow!(
                "`ctr -n {namespace} {}` did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&hung.partial.stdout),
                String::from_utf8_lossy(&hung.partial.stderr)
            )),
        }
    }

    /// The `ctr` command for `namespace`, stdin from /dev/null.
    pub fn ctr_command(&self, namespace: &str) -> Command {
        let mut cmd = Command::new(CTR);
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", namespace])
            .env("CONTAINERD_SNAPSHOTTER", &self.layout.snapshotter)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null());
        cmd
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        format!(
            "--- last {lines} lines of containerd.log ---\n{}\n",
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// containerd's log file (debug level: shim starts, CRI requests).
    pub fn log(&self) -> PathBuf {
        self.layout.dir.join("containerd.log")
    }

    /// Stops containerd (SIGTERM, as a service manager restarting it
    /// would: its shims and their pods keep running) and starts it again
    /// on the same state, waiting until its CRI plugin is ready.
    pub fn restart(&mut self) -> Result<()> {
        docker::stop(self.child.take(), "containerd");
        self.spawn()?;
        self.wait_ready()
    }

    /// Removes every pod and container, stops containerd, and returns what
    /// was left behind (after removing that as well).
    pub fn shutdown(mut self) -> Leftovers {
        self.teardown()
    }

    fn write_config(&self) -> Result<()> {
        let dir = &self.layout.dir;
        for sub in ["root", "state", "opt"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::create_dir_all(self.layout.cni_conf_dir())?;
        std::fs::create_dir_all(self.layout.pod_logs())?;
        std::fs::write(
            self.layout.config_file(),
            config::config_toml(&self.layout, &self.runtimes),
        )?;
        std::fs::write(
            self.layout.cni_conf_dir().join("10-husk.conflist"),
            config::cni_conflist(&self.layout),
        )?;
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(CONTAINERD);
        cmd.arg("--config").arg(self.layout.config_file());
        // containerd finds `containerd-shim-<name>-v2` on its PATH.
        let mut path: Vec<String> = self
            .runtimes
            .iter()
            .filter_map(|r| r.shim_dir.as_ref())
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        path.push(docker::DAEMON_PATH.into());
        cmd.env("PATH", path.join(":"));
        for (key, value) in self.runtimes.iter().flat_map(|r| r.env.iter()) {
            cmd.env(key, value);
        }
        // NetNs::enter: containerd itself (not `ip netns exec`) is the child.
        self.netns().enter(&mut cmd)?;
        self.child = Some(docker::spawn_daemon(cmd, &self.layout.dir, &self.log())?);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let socket = self.socket();
        let mut last = String::from("socket not there yet");
        loop {
            if UnixStream::connect(&socket).is_ok() {
                match self.cri().and_then(|c| c.status()) {
                    Ok(status) => {
                        let not_ready: Vec<String> = status
                            .conditions
                            .iter()
                            .filter(|c| !c.status)
                            .map(|c| format!("{}: {} {}", c.r#type, c.reason, c.message))
                            .collect();
                        if not_ready.is_empty() {
                            return Ok(());
                        }
                        last = not_ready.join("; ");
                    }
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("containerd exited ({status})\n{}", self.log_tail(40));
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd's CRI plugin was not ready within {START_TIMEOUT:?}: {last}\n{}",
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

// Teardown.
impl Containerd {
    fn teardown(&mut self) -> Leftovers {
        if std::mem::replace(&mut self.torn_down, true) {
            return Leftovers::default();
        }
        let ids = self.remove_everything();
        docker::stop(self.child.take(), "containerd");

        let mut markers = vec![
            self.layout.dir.to_string_lossy().into_owned(),
            self.cgroup_parent.clone(),
        ];
        markers.extend(ids.iter().map(|(_, id)| id.clone()));
        let processes = leftovers::settled_processes(&markers, SETTLE_TIMEOUT);
        let mut found = Leftovers {
            mounts: leftovers::mounts(&self.layout.dir, &markers),
            paths: self.leftover_paths(&ids),
            network: self.network_leftovers(&processes),
            processes,
        };
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

    /// Stops and removes every pod through CRI, then kills and deletes
    /// every task and container of every containerd namespace through
    /// `ctr` (what `ctr run` left, or what CRI could not remove); returns
    /// the (namespace, ID) of each container seen, pods' sandboxes
    /// included, to find their leftovers by.
    fn remove_everything(&mut self) -> Vec<(String, String)> {
        // The tasks' bundles name them even when containerd is gone.
        let mut ids: Vec<(String, String)> = Vec::new();
        for ns in list_paths(&self.tasks_dir()) {
            if let Some(name) = ns.file_name().and_then(|n| n.to_str()) {
                ids.extend(list_names(&ns).into_iter().map(|id| (name.to_owned(), id)));
            }
        }
        // ctr and gRPC would wait out their dial timeouts on a dead daemon.
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if !running {
            return ids;
        }
        let namespaces = self.ctr_lines("default", &["namespaces", "ls", "-q"]);
        for ns in &namespaces {
            for id in self.ctr_lines(ns, &["containers", "ls", "-q"]) {
                if !ids.iter().any(|(n, i)| n == ns && *i == id) {
                    ids.push((ns.clone(), id));
                }
            }
        }
        if let Ok(cri) = self.cri().map(|c| c.with_timeout(REMOVE_TIMEOUT)) {
            for pod in cri.list_pod_sandboxes().unwrap_or_default() {
                if !ids.iter().any(|(_, id)| *id == pod.id) {
                    ids.push((K8S_NAMESPACE.into(), pod.id.clone()));
                }
                if let Err(e) = cri.stop_pod_sandbox(&pod.id) {
                    eprintln!("teardown: {e:#}");
                }
                if let Err(e) = cri.remove_pod_sandbox(&pod.id) {
                    eprintln!("teardown: {e:#}");
                }
            }
        }
        for ns in &namespaces {
            for task in self.ctr_lines(ns, &["tasks", "ls", "-q"]) {
                let _ = self.ctr_in(
                    ns,
                    &["tasks", "kill", "-a", "-s", "SIGKILL", &task],
                    REMOVE_TIMEOUT,
                );
                let _ = self.ctr_in(ns, &["tasks", "delete", "--force", &task], REMOVE_TIMEOUT);
            }
            for id in self.ctr_lines(ns, &["containers", "ls", "-q"]) {
                let _ = self.ctr_in(ns, &["containers", "rm", &id], REMOVE_TIMEOUT);
            }
        }
        ids
    }

    /// The lines `ctr -n <namespace> <args>` prints (none if it fails).
    fn ctr_lines(&self, namespace: &str, args: &[&str]) -> Vec<String> {
        match self.ctr_in(namespace, args, REMOVE_TIMEOUT) {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Shim sockets, ctr FIFO directories and CNI results made during the test, runc
    /// state and runtime state of the containers `ids`, libcni results of
    /// the test's network, and the containers' cgroups.
    fn leftover_paths(&self, ids: &[(String, String)]) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = [SHIM_SOCKETS, CTR_FIFOS]
            .iter()
            .flat_map(|d| list_paths(Path::new(d)))
            .filter(|p| !self.shared_before.contains(p))
            .collect();
        let names: Vec<String> = ids.iter().map(|(_, id)| id.clone()).collect();
        for (ns, id) in ids {
            paths.push(Path::new(RUNC_DEFAULT_ROOT).join(ns).join(id));
            paths.push(self.layout.runc_root().join(ns).join(id));
        }
        for rt in &self.runtimes {
            for dir in &rt.state_dirs {
                paths.extend(leftovers::entries_named(dir, &names, 3));
            }
        }
        // The pod network's results, and the loopback's the CRI plugin
        // adds for every pod (`cni-loopback-<pod>-lo`).
        let prefixes = [format!("{}-", self.layout.network), "cni-loopback-".into()];
        paths.extend(
            list_paths(Path::new(CNI_RESULTS))
                .into_iter()
                .filter(|p| !self.shared_before.contains(p))
                .filter(|p| {
                    p.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        prefixes.iter().any(|prefix| n.starts_with(prefix.as_str()))
                    })
                }),
        );
        paths.retain(|p| p.exists());
        paths.extend(leftovers::cgroups(&self.cgroup_parent));
        paths
    }

    /// husk taps and tc state in the test's namespace and in those of
    /// leftover processes, and the pod namespaces (`/run/netns/cni-*`)
    /// made during the test that still exist.
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
        found.extend(
            self.new_pod_namespaces()
                .iter()
                .map(|n| format!("pod namespace {}/{n}", netns::RUN_NETNS)),
        );
        found
    }

    fn new_pod_namespaces(&self) -> Vec<String> {
        list_names(Path::new(netns::RUN_NETNS))
            .into_iter()
            .filter(|n| n.starts_with("cni-") && !self.netns_before.contains(n))
            .collect()
    }

    /// Kills, unmounts and removes `found` and everything containerd made;
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
        for n in self.new_pod_namespaces() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &n])
                .stdin(Stdio::null())
                .status();
        }
        let mut failed = Vec::new();
        for p in &found.paths {
            let removed = if p.starts_with("/sys/fs/cgroup") {
                std::fs::remove_dir(p)
            } else if p.is_dir() {
                docker::remove_tree(p)
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
        if docker::remove_tree(&self.layout.dir).is_err() {
            failed.push(self.layout.dir.clone());
        }
        // The directories that did not exist before, deepest first (with
        // the per-namespace ones runc makes under its default root); one
        // someone else now uses is not empty and stays.
        if self
            .host_dirs
            .iter()
            .any(|d| d == Path::new(RUNC_DEFAULT_ROOT))
        {
            for ns in list_paths(Path::new(RUNC_DEFAULT_ROOT)) {
                let _ = std::fs::remove_dir(ns);
            }
        }
        for dir in self.host_dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        failed
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
        let left = self.teardown();
        if !left.is_empty() {
            eprintln!("private containerd teardown found and removed leftovers:\n{left}");
        }
    }
}

/// Installs [`PACKAGES`] from Debian when any part is missing.
fn ensure_installed() -> Result<()> {
    let needed: Vec<PathBuf> = [CONTAINERD, CTR]
        .into_iter()
        .chain(HELPERS)
        .map(PathBuf::from)
        .chain(["bridge", "host-local", "loopback"].map(|p| Path::new(config::CNI_BIN_DIR).join(p)))
        .collect();
    host::ensure_installed(&needed, &PACKAGES)
}

/// The entries of `dir` (none if it cannot be read).
fn list_paths(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The names of the entries of `dir`.
fn list_names(dir: &Path) -> BTreeSet<String> {
    list_paths(dir)
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect()
}
