//! One sandbox's VM from boot to teardown: the sandbox directory, the
//! hypervisor running the VM, and the agent connection.
//!
//! [`SandboxVm::boot`] creates the directory, listens for the guest's ready
//! line, starts the VM, and connects to the agent once the guest said it is
//! ready (no polling through the boot); [`SandboxVm::shutdown`] asks the agent to destroy the sandbox
//! (the guest then powers off), waits for the VM to end (killing it after a
//! grace period), stops the device backends and removes the directory.

use std::time::{Duration, Instant};

use husk_protocol::agent::DestroySandboxRequest;
use husk_protocol::agent_ttrpc::AgentServiceClient;
use husk_protocol::ttrpc::context;
use husk_protocol::AGENT_VSOCK_PORT;

use crate::agent_client::{self, ReadyListener};
use crate::hypervisor::builtin::Builtin;
use crate::hypervisor::{self, Hypervisor, Stopped, VmExit, VmSpec};
use crate::sandbox_dir::{self, SandboxDir};
use crate::template::Template;

/// How long `shutdown` gives the agent to answer `DestroySandbox`.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors booting or shutting down a sandbox VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sandbox directory.
    #[error(transparent)]
    Dir(#[from] sandbox_dir::Error),
    /// The hypervisor.
    #[error(transparent)]
    Hypervisor(#[from] hypervisor::Error),
    /// The agent could not be reached.
    #[error("{source}; the guest console ends with:\n{console}")]
    Agent {
        /// Why connecting failed.
        source: agent_client::Error,
        /// The end of the guest's console, where a failed boot says why.
        console: String,
    },
    /// The VM ended before its agent answered.
    #[error(
        "the VM ended during boot ({exit}){}; the guest console ends with:\n{console}",
        hypervisor_said(.hypervisor)
    )]
    VmEnded {
        /// How it ended.
        exit: VmExit,
        /// The end of the hypervisor process's stderr (QEMU names a bad
        /// option or an unreachable device there).
        hypervisor: String,
        /// The end of the guest's console.
        console: String,
    },
    /// The sandbox directory could not be made a mount of its own.
    #[error(transparent)]
    Jail(#[from] super::mount_ns::Error),
    /// A blocking hypervisor call could not be run.
    #[error("hypervisor task failed: {0}")]
    Task(String),
    /// The template could not be made or read.
    #[error("{0}")]
    Template(String),
}

impl Error {
    /// Whether a restore failed because of its template (unreadable,
    /// refused by the VMM's checks, or a guest that did not come back),
    /// rather than because of this sandbox (its directory).
    pub fn is_template_failure(&self) -> bool {
        !matches!(self, Error::Dir(_))
    }
}

/// A running sandbox VM with a connected agent.
pub struct SandboxVm {
    dir: SandboxDir,
    /// Behind a mutex only so that a `&SandboxVm` may cross threads (the
    /// backends are `Send`, not `Sync`); `&mut self` methods reach it
    /// without locking.
    hypervisor: std::sync::Mutex<Box<dyn Hypervisor>>,
    agent: AgentServiceClient,
    /// Whether the VM was restored from a template (its NICs then still
    /// have the template's placeholder MACs).
    restored: bool,
}

impl SandboxVm {
    /// Creates `spec.sandbox`, boots the VM and connects to its agent once
    /// the guest says it is ready, waiting up to `agent_timeout` for that.
    /// On failure the VM is stopped and the directory removed.
    pub async fn boot(
        mut hypervisor: Box<dyn Hypervisor>,
        spec: VmSpec,
        agent_timeout: Duration,
    ) -> Result<Self, Error> {
        let begun = Instant::now();
        let dir = create_dir(&spec.sandbox)?;
        // Listening before the VM starts, so the guest's line cannot be early.
        let ready = match ReadyListener::bind(&dir.vsock_socket()) {
            Ok(ready) => ready,
            Err(source) => {
                let _ = dir.remove();
                return Err(Error::Agent {
                    source,
                    console: String::new(),
                });
            }
        };
        let started = match blocking(move || {
            let r = hypervisor.start(&spec);
            (hypervisor, r)
        })
        .await
        {
            Ok((hv, result)) => {
                hypervisor = hv;
                result
            }
            Err(e) => {
                // The backend went with the failed task (and stopped on drop).
                let _ = dir.remove();
                return Err(e);
            }
        };
        if let Err(e) = started {
            let _ = dir.remove();
            return Err(e.into());
        }
        tracing::info!(stage = "vm-started", ms = stage_ms(begun), "VM started");
        let booting = Instant::now();
        let socket = dir.vsock_socket();
        let connect = async {
            ready.wait(agent_timeout).await?;
            tracing::info!(
                stage = "agent-ready",
                ms = stage_ms(booting),
                "the guest says ready"
            );
            // The agent listens by now: this connects at the first attempt.
            let remaining = agent_timeout.saturating_sub(booting.elapsed());
            connect_agent(&socket, remaining).await
        };
        let attached = Self::attach(hypervisor, dir, connect, false).await;
        drop(ready);
        attached
    }

    /// Creates `spec.sandbox` and starts its VM from `template` instead of
    /// booting it (the builtin VMM only), then connects to the agent,
    /// which was already listening when the template was saved, waiting
    /// up to `agent_timeout`. On failure the VM is stopped and the
    /// directory removed; the error says whether the template was to blame
    /// ([`Error::is_template_failure`]).
    pub async fn restore(
        spec: VmSpec,
        template: Template,
        agent_timeout: Duration,
    ) -> Result<Self, Error> {
        let begun = Instant::now();
        let dir = create_dir(&spec.sandbox)?;
        let mut builtin = Builtin::new();
        let restored = blocking(move || {
            let r = template
                .lock(false)
                .map_err(|e| Error::Template(format!("locking the template: {e}")))
                .and_then(|_lock| {
                    builtin
                        .start_restored(&spec, &template.paths(), template.key().as_str())
                        .map_err(Error::from)
                });
            (builtin, r)
        })
        .await;
        let builtin = match restored {
            Ok((builtin, Ok(()))) => builtin,
            Ok((_, Err(e))) | Err(e) => {
                let _ = dir.remove();
                return Err(e);
            }
        };
        tracing::info!(
            stage = "vm-restored",
            ms = stage_ms(begun),
            "VM restored from its template"
        );
        let socket = dir.vsock_socket();
        let connect = connect_agent(&socket, agent_timeout);
        Self::attach(Box::new(builtin), dir, connect, true).await
    }

    /// Waits for `connect` while watching the VM: the sandbox once the
    /// agent answers, or, if the VM ends first or the agent cannot be
    /// reached, an error after the VM was stopped and `dir` removed.
    async fn attach(
        mut hypervisor: Box<dyn Hypervisor>,
        dir: SandboxDir,
        connect: impl std::future::Future<Output = Result<AgentServiceClient, agent_client::Error>>,
        restored: bool,
    ) -> Result<Self, Error> {
        let connected = tokio::select! {
            r = connect => Ok(r),
            exit = vm_ended(hypervisor.as_mut(), BOOT_POLL) => Err(exit),
        };
        match connected {
            Ok(Ok(agent)) => Ok(Self {
                dir,
                hypervisor: std::sync::Mutex::new(hypervisor),
                agent,
                restored,
            }),
            Err(exit) => {
                let console = dir.console_tail();
                let hypervisor_said = dir.hypervisor_log_tail();
                let _ = teardown(hypervisor, dir, Duration::ZERO).await;
                Err(Error::VmEnded {
                    exit,
                    hypervisor: hypervisor_said,
                    console,
                })
            }
            Ok(Err(source)) => {
                let console = dir.console_tail();
                let _ = teardown(hypervisor, dir, Duration::ZERO).await;
                Err(Error::Agent { source, console })
            }
        }
    }

    /// The agent's client.
    pub fn agent(&self) -> &AgentServiceClient {
        &self.agent
    }

    /// Whether the VM was restored from a template rather than booted.
    pub fn restored(&self) -> bool {
        self.restored
    }

    /// The sandbox directory.
    pub fn dir(&self) -> &SandboxDir {
        &self.dir
    }

    /// The host process running the VM, if any.
    pub fn pid(&self) -> Option<u32> {
        self.hypervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pid()
    }

    /// Resolves once the VM has ended by itself (the guest powered off or
    /// crashed, QEMU died), with how; checked every `poll`. Works the same
    /// for a VM in its own process and one in this process.
    pub async fn ended(&mut self, poll: Duration) -> VmExit {
        let hypervisor = self.hypervisor.get_mut().unwrap_or_else(|e| e.into_inner());
        vm_ended(hypervisor.as_mut(), poll).await
    }

    /// How the VM ended, if it has ended by itself; never waits.
    pub fn try_exit(&self) -> Option<VmExit> {
        let mut hypervisor = self.hypervisor.lock().unwrap_or_else(|e| e.into_inner());
        hypervisor.wait(Duration::ZERO).ok().flatten()
    }

    /// Destroys the sandbox in the guest, waits up to `grace` for the VM to
    /// end (then kills it), stops the backends and removes the directory.
    /// An agent that does not answer only costs the grace period.
    pub async fn shutdown(self, grace: Duration) -> Result<Stopped, Error> {
        let ctx = context::with_timeout(DESTROY_TIMEOUT.as_nanos().try_into().unwrap_or(i64::MAX));
        if let Err(e) = self
            .agent
            .destroy_sandbox(ctx, &DestroySandboxRequest::default())
            .await
        {
            tracing::warn!(sandbox = %self.dir.path().display(), "DestroySandbox failed: {e}");
        }
        drop(self.agent);
        let hypervisor = self
            .hypervisor
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        teardown(hypervisor, self.dir, grace).await
    }
}

pub(crate) async fn teardown(
    mut hypervisor: Box<dyn Hypervisor>,
    dir: SandboxDir,
    grace: Duration,
) -> Result<Stopped, Error> {
    let stopped = blocking(move || hypervisor.stop(grace)).await?;
    let removed = dir.remove();
    let stopped = stopped?;
    removed?;
    Ok(stopped)
}

/// Connects to the agent (which listens by now) and logs the stage.
async fn connect_agent(
    socket: &std::path::Path,
    timeout: Duration,
) -> Result<AgentServiceClient, agent_client::Error> {
    let connecting = Instant::now();
    let agent = agent_client::connect(socket, AGENT_VSOCK_PORT, timeout).await?;
    tracing::info!(
        stage = "agent-answers",
        ms = stage_ms(connecting),
        "agent answers"
    );
    Ok(agent)
}

/// Creates the sandbox directory `dir` and pins it (see
/// [`mount_ns::pin`](super::mount_ns::pin)) before any backend opens it,
/// so that its descriptors survive the sandbox process's confinement.
fn create_dir(dir: &SandboxDir) -> Result<SandboxDir, Error> {
    dir.create()?;
    if let Err(e) = super::mount_ns::pin(dir.path()) {
        let _ = dir.remove();
        return Err(Error::Jail(e));
    }
    Ok(dir.clone())
}

/// Milliseconds since `since`, for a stage's `ms` field.
pub fn stage_ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e5).round() / 100.0
}

/// `hypervisor`'s words for an error message, if it said anything.
fn hypervisor_said(hypervisor: &str) -> String {
    if hypervisor.is_empty() {
        String::new()
    } else {
        format!("; the hypervisor said: {hypervisor}")
    }
}

/// How often the VM is polled while the agent boots: a VM that fails at
/// once (QEMU refusing an option) is reported within this.
pub(crate) const BOOT_POLL: Duration = Duration::from_millis(10);

/// Resolves once the VM has ended, with how. Polls the backend (a QEMU
/// process, or the builtin VMM's vCPU threads in this process) without
/// blocking; if it cannot be asked, never resolves (the agent timeout then
/// ends the boot).
pub(crate) async fn vm_ended(hypervisor: &mut dyn Hypervisor, poll: Duration) -> VmExit {
    loop {
        match hypervisor.wait(Duration::ZERO) {
            Ok(Some(exit)) => return exit,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("cannot watch the VM during boot: {e}");
                return std::future::pending().await;
            }
        }
        tokio::time::sleep(poll).await;
    }
}

/// Runs a blocking hypervisor call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use std::path::Path;

    use super::*;
    use crate::hypervisor::qemu::{Accel, Qemu};

    /// A VM spec with empty kernel and initrd files, and a shell script
    /// standing in for QEMU.
    fn fake_vm(root: &Path, name: &str, script: &str) -> (VmSpec, Box<Qemu>) {
        let kernel = root.join("vmlinux");
        let initrd = root.join("initrd");
        std::fs::write(&kernel, b"").unwrap();
        std::fs::write(&initrd, b"").unwrap();
        let fake = root.join("fake-qemu");
        std::fs::write(&fake, script).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = VmSpec {
            vcpus: 1,
            memory_mib: 128,
            kernel,
            initrd,
            kernel_args: vec![],
            sandbox: SandboxDir::new(root, name).unwrap(),
            nics: vec![],
        };
        (spec, Box::new(Qemu::with_program(fake, Accel::Tcg)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vm_that_dies_during_boot_fails_boot_without_waiting_for_the_agent_timeout() {
        let root = tempfile::tempdir().unwrap();
        // Boots for a while, then dies like a guest that crashed.
        let (spec, hv) = fake_vm(root.path(), "dies", "#!/bin/sh\nsleep 0.4\nexit 1\n");
        let dir = spec.sandbox.clone();
        // An agent timeout far longer than the test may take.
        let boot = SandboxVm::boot(hv, spec, Duration::from_secs(600));
        match tokio::time::timeout(Duration::from_secs(60), boot).await {
            Ok(Err(Error::VmEnded { exit, .. })) => {
                assert!(matches!(exit, VmExit::Process(status) if status.code() == Some(1)));
            }
            Ok(Err(other)) => panic!("expected VmEnded, got {other}"),
            Ok(Ok(_)) => panic!("booted without a VM"),
            Err(_) => panic!("boot waited for the agent although the VM had ended"),
        }
        assert!(!dir.path().exists(), "sandbox dir left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hypervisor_refusing_to_start_fails_boot_at_once_with_its_words() {
        let root = tempfile::tempdir().unwrap();
        let (spec, hv) = fake_vm(
            root.path(),
            "refuses",
            "#!/bin/sh\necho 'no such device' >&2\nexit 3\n",
        );
        let dir = spec.sandbox.clone();
        let boot = SandboxVm::boot(hv, spec, Duration::from_secs(600));
        let err = match tokio::time::timeout(Duration::from_secs(60), boot).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => panic!("booted without a VM"),
            Err(_) => panic!("boot waited for the agent although QEMU had exited"),
        };
        match &err {
            Error::VmEnded {
                exit, hypervisor, ..
            } => {
                assert!(matches!(exit, VmExit::Process(status) if status.code() == Some(3)));
                assert_eq!(hypervisor, "no such device");
            }
            other => panic!("expected VmEnded, got {other}"),
        }
        assert!(err
            .to_string()
            .contains("the hypervisor said: no such device"));
        assert!(!dir.path().exists(), "sandbox dir left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_guest_without_agent_fails_boot_and_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        // A "VM" that stays up, writes to its console and never serves the agent.
        let (spec, hv) = fake_vm(root.path(), "noagent", "#!/bin/sh\nfor a; do case $a in file,id=console,path=*) echo 'Kernel panic' >\"${a#*path=}\";; esac; done\nexec sleep 60\n");
        let dir = spec.sandbox.clone();
        let err = match SandboxVm::boot(hv, spec, Duration::from_millis(300)).await {
            Err(e) => e,
            Ok(_) => panic!("booted without an agent"),
        };
        match &err {
            Error::Agent { source, console } => {
                assert!(matches!(source, agent_client::Error::NotReady { .. }));
                assert_eq!(console, "Kernel panic");
            }
            other => panic!("expected an agent error, got {other}"),
        }
        assert!(!dir.path().exists(), "sandbox dir left behind");
    }
}
