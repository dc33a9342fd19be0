//! The container engine: OCI containers through youki's `libcontainer`.
//!
//! Every call here blocks (the engine forks, waits on its helpers and, for a
//! terminal, changes the working directory), so the service runs them on
//! blocking threads, one at a time, under the reaper's [`SpawnGuard`].
//!
//! [`SpawnGuard`]: crate::reaper::SpawnGuard

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::{Process as OciProcess, Spec};
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;

use crate::error::{AgentError, Result};
use crate::late_seccomp::{HuskExecutor, LateSeccomp};
use crate::process::{Process, ProcessIo};
use crate::reaper::Reaper;
use crate::stdio::{self, ConsoleSocket};

/// The cgroup (relative to the cgroup root) of a container in the guest.
///
/// The host's cgroupsPath means nothing inside the VM, so the agent always
/// places containers under its own `/husk` subtree.
pub fn cgroup_path(container_id: &str) -> PathBuf {
    PathBuf::from(format!("/husk/{container_id}"))
}

/// How long `start` waits for the init process to exec its program.
const EXEC_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often it looks.
const EXEC_POLL: std::time::Duration = std::time::Duration::from_micros(500);

/// Waits until process `pid` has exec'd: its executable is no longer this
/// agent's (the container's init is a fork of it until then), or it is
/// gone. So `start` returns as runc's does after its exec FIFO: a signal
/// sent right after reaches the program, not the engine's init (which may
/// still be running startContainer hooks).
fn wait_for_exec(pid: i32) {
    use std::os::unix::fs::MetadataExt;
    let id = |path: &str| fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    let Some(agent) = id("/proc/self/exe") else {
        return;
    };
    let exe = format!("/proc/{pid}/exe");
    let deadline = std::time::Instant::now() + EXEC_WAIT;
    while id(&exe) == Some(agent) && std::time::Instant::now() < deadline {
        std::thread::sleep(EXEC_POLL);
    }
}

/// Creates, starts and manages containers.
pub struct Engine {
    /// libcontainer's state directory (one folder per container).
    state_root: PathBuf,
    /// Bundles the agent writes (config.json, exec process files, sockets).
    bundles: PathBuf,
    reaper: Arc<Reaper>,
}

impl Engine {
    /// An engine keeping its state under `state_dir`.
    pub fn new(state_dir: &Path, reaper: Arc<Reaper>) -> Result<Self> {
        let state_root = state_dir.join("containers");
        let bundles = state_dir.join("bundles");
        for dir in [&state_root, &bundles] {
            fs::create_dir_all(dir)
                .map_err(|e| AgentError::io(format!("creating {}", dir.display()), e))?;
        }
        Ok(Self {
            state_root,
            bundles,
            reaper,
        })
    }

    fn bundle(&self, container_id: &str) -> PathBuf {
        self.bundles.join(container_id)
    }

    /// Creates a container whose init process waits for [`Engine::start`].
    /// On failure nothing of the container is left behind.
    pub fn create(&self, container_id: &str, mut spec: Spec, rootfs: &Path) -> Result<Process> {
        let begun = std::time::Instant::now();
        let bundle = self.bundle(container_id);
        if bundle.exists() || self.state_root.join(container_id).exists() {
            return Err(AgentError::AlreadyExists(format!(
                "container {container_id}"
            )));
        }
        prepare_spec(&mut spec, container_id, rootfs)?;
        let late_seccomp = LateSeccomp::take(&mut spec)?;
        let net_sysctls = crate::network::sysctl::take_shared(&mut spec)?;
        crate::network::sysctl::apply(&net_sysctls)?;
        fs::create_dir_all(&bundle)
            .map_err(|e| AgentError::io(format!("creating bundle {}", bundle.display()), e))?;
        let result = late_seccomp.save(&bundle).and_then(|()| {
            self.create_in_bundle(container_id, &spec, &bundle, late_seccomp, begun)
        });
        if result.is_err() {
            self.destroy(container_id);
        }
        result
    }

    fn create_in_bundle(
        &self,
        container_id: &str,
        spec: &Spec,
        bundle: &Path,
        late_seccomp: LateSeccomp,
        begun: std::time::Instant,
    ) -> Result<Process> {
        let config = bundle.join("config.json");
        spec.save(&config)
            .map_err(|e| AgentError::Engine(format!("writing {}: {e}", config.display())))?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let (builder, io) = self.builder(
            container_id,
            terminal,
            &bundle.join("init.console"),
            late_seccomp,
        )?;
        let prepared = begun.elapsed();
        let guard = self.reaper.spawn_guard();
        let container = builder
            .validate_id()?
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            // pivot_root needs a root that is not the initramfs.
            .with_no_pivot(crate::init::is_init() && !crate::switch_root::left())
            .build()?;
        let pid = container
            .pid()
            .ok_or_else(|| AgentError::Engine("the container has no init process".into()))?
            .as_raw();
        let exit = guard.register(pid);
        let built = begun.elapsed();
        // Under the guard: the helper's exit is this call's to reap.
        let propagated = crate::propagation::apply(pid, &crate::propagation::wanted(spec));
        drop(guard);
        propagated?;
        let process = Process::new(pid, io.finish()?, exit)?;
        // Where a CreateContainer's time goes: the spec and bundle, then
        // libcontainer's forks, namespaces, cgroup and mounts, then the
        // mount propagation and the standard I/O.
        tracing::debug!(
            container_id,
            prepare_ms = ms(prepared),
            build_ms = ms(built.saturating_sub(prepared)),
            finish_ms = ms(begun.elapsed().saturating_sub(built)),
            "container created by the engine"
        );
        Ok(process)
    }

    /// Starts the init process of a created container.
    pub fn start(&self, container_id: &str) -> Result<()> {
        let mut container = self.load(container_id)?;
        if !container.can_start() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {container_id} is {:?}, not created",
                container.status()
            )));
        }
        container.start()?;
        if let Some(pid) = container.pid() {
            wait_for_exec(pid.as_raw());
        }
        Ok(())
    }

    /// Runs another process in a running container.
    pub fn exec(&self, container_id: &str, exec_id: &str, process: &OciProcess) -> Result<Process> {
        let bundle = self.bundle(container_id);
        let container = self.load(container_id)?;
        if !container.can_exec() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {container_id} is {:?}, not running",
                container.status()
            )));
        }
        let process_file = bundle.join(format!("exec-{exec_id}.json"));
        let mut process = process.clone();
        normalize_no_new_privileges(&mut process);
        let late_seccomp = LateSeccomp::for_exec(&bundle, &mut process, || {
            container_no_new_privileges(&bundle)
        })?;
        let process = &process;
        let json = serde_json::to_vec(process)
            .map_err(|e| AgentError::InvalidArgument(format!("process: {e}")))?;
        fs::write(&process_file, json)
            .map_err(|e| AgentError::io(format!("writing {}", process_file.display()), e))?;
        let terminal = process.terminal().unwrap_or(false);
        let console = bundle.join(format!("exec-{exec_id}.console"));
        let result = (|| {
            let (builder, io) = self.builder(container_id, terminal, &console, late_seccomp)?;
            let guard = self.reaper.spawn_guard();
            let pid = builder
                .as_tenant()
                .with_process(Some(&process_file))
                .with_detach(true)
                .build()?
                .as_raw();
            let exit = guard.register(pid);
            drop(guard);
            Process::new(pid, io.finish()?, exit)
        })();
        let _ = fs::remove_file(&process_file);
        result
    }

    /// Sends a signal to the container's init process, or to all of its
    /// processes.
    pub fn kill(&self, container_id: &str, signal: i32, all: bool) -> Result<()> {
        let signal = Signal::try_from(signal)
            .map_err(|e| AgentError::InvalidArgument(format!("signal {signal}: {e}")))?;
        let mut container = self.load(container_id)?;
        container.kill(signal, all)?;
        Ok(())
    }

    /// Freezes every process of the container.
    pub fn pause(&self, container_id: &str) -> Result<()> {
        self.load(container_id)?.pause()?;
        Ok(())
    }

    /// Thaws a paused container.
    pub fn resume(&self, container_id: &str) -> Result<()> {
        self.load(container_id)?.resume()?;
        Ok(())
    }

    /// Removes everything the container left: engine state, cgroup, bundle.
    /// Its processes must be gone (or about to be: they are killed).
    pub fn destroy(&self, container_id: &str) {
        let _guard = self.reaper.spawn_guard();
        if let Ok(mut container) = Container::load(self.state_root.join(container_id)) {
            if let Err(err) = container.delete(true) {
                tracing::warn!(container_id, %err, "deleting container state");
            }
        }
        let _ = fs::remove_dir_all(self.state_root.join(container_id));
        let _ = fs::remove_dir_all(self.bundle(container_id));
    }

    fn load(&self, container_id: &str) -> Result<Container> {
        let dir = self.state_root.join(container_id);
        if !dir.exists() {
            return Err(AgentError::NotFound(format!("container {container_id}")));
        }
        Container::load(dir).map_err(AgentError::from)
    }

    /// A container builder with stdio wired to pipes or a console socket.
    fn builder(
        &self,
        container_id: &str,
        terminal: bool,
        console_path: &Path,
        late_seccomp: LateSeccomp,
    ) -> Result<(ContainerBuilder, PendingIo)> {
        let builder = ContainerBuilder::new(container_id.to_owned(), SyscallType::default())
            .with_root_path(&self.state_root)?
            .with_executor(HuskExecutor::new(late_seccomp));
        if terminal {
            let _ = fs::remove_file(console_path);
            let console = ConsoleSocket::bind(console_path)?;
            let builder = builder.with_console_socket(Some(console.path()));
            Ok((builder, PendingIo::Terminal(console)))
        } else {
            let (host, child) = stdio::pipes()?;
            let builder = builder
                .with_stdin(child.stdin)
                .with_stdout(child.stdout)
                .with_stderr(child.stderr);
            Ok((builder, PendingIo::Pipes(host)))
        }
    }
}

/// Milliseconds, to two decimals, for a log field.
fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Standard I/O of a process being created.
enum PendingIo {
    Pipes(stdio::HostPipes),
    Terminal(ConsoleSocket),
}

impl PendingIo {
    fn finish(self) -> Result<ProcessIo> {
        match self {
            PendingIo::Pipes(pipes) => Ok(ProcessIo::Pipes(pipes)),
            PendingIo::Terminal(console) => Ok(ProcessIo::Terminal(console.receive_master()?)),
        }
    }
}

/// Whether the container whose agent bundle is `bundle` runs with
/// no_new_privileges, which its exec'd processes inherit.
fn container_no_new_privileges(bundle: &Path) -> Result<bool> {
    let config = bundle.join("config.json");
    let spec = Spec::load(&config)
        .map_err(|e| AgentError::Engine(format!("reading {}: {e}", config.display())))?;
    Ok(spec
        .process()
        .as_ref()
        .and_then(|p| p.no_new_privileges())
        .unwrap_or(false))
}

/// Adapts a host spec to the guest: the rootfs is where the agent was told,
/// and the cgroup is the agent's own.
/// `noNewPrivileges: false` means the same as leaving it out (the spec's
/// default), and is passed on as left out: libcontainer tells the two apart
/// by presence alone (an exec'd process inherits the container's value
/// only when its own is absent).
fn normalize_no_new_privileges(process: &mut OciProcess) {
    if process.no_new_privileges() == Some(false) {
        process.set_no_new_privileges(None);
    }
}

fn prepare_spec(spec: &mut Spec, container_id: &str, rootfs: &Path) -> Result<()> {
    if spec.process().is_none() {
        return Err(AgentError::InvalidArgument(
            "the spec has no process".into(),
        ));
    }
    if !rootfs.is_absolute() {
        return Err(AgentError::InvalidArgument(format!(
            "rootfs {} is not an absolute path",
            rootfs.display()
        )));
    }
    if !rootfs.is_dir() {
        return Err(AgentError::InvalidArgument(format!(
            "rootfs {} does not exist or is not a directory",
            rootfs.display()
        )));
    }
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_owned());
    spec.set_root(Some(root));
    if let Some(process) = spec.process_mut() {
        normalize_no_new_privileges(process);
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(cgroup_path(container_id)));
    }
    Ok(())
}
