//! The sandbox: every container of the guest, their processes, the mounted
//! storages, and the operations the agent API exposes on them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk_protocol::agent::Storage;
use libcontainer::oci_spec::runtime::{
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, Process as OciProcess, Spec,
};
use tokio::sync::mpsc;

use crate::cgroups;
use crate::engine::Engine;
use crate::error::{AgentError, Result};
use crate::process::Process;
use crate::reaper::{lock, ExitStatus, Reaper};
use crate::storage;
use crate::validate;

/// How long RemoveContainer waits for killed processes by default.
const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most exec'd processes kept per container; exited ones are dropped first.
const MAX_PROCESSES: usize = 256;

/// One container and its processes.
struct ContainerEntry {
    /// The exec id the host gave the init process.
    init_exec_id: String,
    processes: Mutex<HashMap<String, Arc<Process>>>,
}

impl ContainerEntry {
    fn process(&self, exec_id: &str) -> Option<Arc<Process>> {
        let exec_id = if exec_id.is_empty() {
            self.init_exec_id.as_str()
        } else {
            exec_id
        };
        lock(&self.processes).get(exec_id).cloned()
    }

    fn init(&self) -> Option<Arc<Process>> {
        self.process(&self.init_exec_id.clone())
    }
}

/// Which namespaces a new container joins instead of creating.
#[derive(Debug, Default)]
pub struct Joins<'a> {
    /// The container whose init process's namespaces are joined.
    pub container_id: &'a str,
    /// Namespace types by their `/proc/<pid>/ns` names.
    pub types: &'a [String],
}

/// The name of a namespace type's file under `/proc/<pid>/ns`.
fn ns_file(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Time => "time",
    }
}

/// Everything the agent manages.
pub struct Sandbox {
    engine: Arc<Engine>,
    containers: Mutex<HashMap<String, Arc<ContainerEntry>>>,
    /// Serialises container-engine operations (it changes process-wide
    /// state such as the working directory while it creates containers).
    engine_ops: tokio::sync::Mutex<()>,
    storages: Mutex<Vec<PathBuf>>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

impl Sandbox {
    /// A sandbox keeping engine state under `state_dir`.
    pub fn new(state_dir: &Path, reaper: Arc<Reaper>) -> Result<Self> {
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        Ok(Self {
            engine: Arc::new(Engine::new(state_dir, reaper)?),
            containers: Mutex::new(HashMap::new()),
            engine_ops: tokio::sync::Mutex::new(()),
            storages: Mutex::new(Vec::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
        })
    }

    /// Runs a blocking engine call on a blocking thread, one at a time.
    async fn engine<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _serial = self.engine_ops.lock().await;
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| AgentError::Engine(format!("engine task failed: {e}")))?
    }

    fn container(&self, id: &str) -> Result<Arc<ContainerEntry>> {
        validate::container_id(id)?;
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("container {id}")))
    }

    /// Finds a process; an empty exec id names the container's init process.
    pub fn process(&self, container_id: &str, exec_id: &str) -> Result<Arc<Process>> {
        validate::exec_id(exec_id)?;
        self.container(container_id)?
            .process(exec_id)
            .ok_or_else(|| {
                AgentError::NotFound(format!("process {exec_id:?} of container {container_id}"))
            })
    }

    /// Mounts storages for the sandbox (kept until [`Sandbox::destroy`]).
    pub fn mount_storages(&self, storages: &[Storage]) -> Result<()> {
        for s in storages {
            let target = storage::mount_storage(s)?;
            lock(&self.storages).push(target);
        }
        Ok(())
    }

    /// Creates a container from its spec JSON, joining the namespaces
    /// `joins` names.
    pub async fn create_container(
        &self,
        container_id: &str,
        exec_id: &str,
        spec_json: &str,
        rootfs: &str,
        joins: &Joins<'_>,
    ) -> Result<()> {
        validate::container_id(container_id)?;
        validate::exec_id(exec_id)?;
        let mut spec: Spec = serde_json::from_str(spec_json)
            .map_err(|e| AgentError::InvalidArgument(format!("spec JSON: {e}")))?;
        self.join_namespaces(&mut spec, joins)?;
        let rootfs = if rootfs.is_empty() {
            spec.root()
                .as_ref()
                .map(|r| r.path().clone())
                .ok_or_else(|| AgentError::InvalidArgument("no rootfs given".into()))?
        } else {
            PathBuf::from(rootfs)
        };
        // Reserve the id first so a concurrent duplicate fails fast.
        {
            let mut containers = lock(&self.containers);
            if containers.contains_key(container_id) {
                return Err(AgentError::AlreadyExists(format!(
                    "container {container_id}"
                )));
            }
            containers.insert(
                container_id.to_owned(),
                Arc::new(ContainerEntry {
                    init_exec_id: exec_id.to_owned(),
                    processes: Mutex::new(HashMap::new()),
                }),
            );
        }
        let id = container_id.to_owned();
        let created = self
            .engine(move |engine| engine.create(&id, spec, &rootfs))
            .await;
        match created {
            Ok(process) => {
                let entry = self.container(container_id)?;
                lock(&entry.processes).insert(exec_id.to_owned(), Arc::new(process));
                cgroups::watch_oom(container_id.to_owned(), self.oom_tx.clone());
                tracing::info!(container_id, "container created");
                Ok(())
            }
            Err(err) => {
                lock(&self.containers).remove(container_id);
                Err(err)
            }
        }
    }

    /// Points the spec's namespaces of the types `joins` lists at those of
    /// the init process of container `joins.container_id` (a pod's
    /// containers share its sandbox container's IPC, UTS and, when asked,
    /// PID namespaces).
    fn join_namespaces(&self, spec: &mut Spec, joins: &Joins<'_>) -> Result<()> {
        if joins.types.is_empty() {
            return Ok(());
        }
        let init = self
            .container(joins.container_id)?
            .init()
            .filter(|p| p.exit_status().is_none())
            .ok_or_else(|| {
                AgentError::FailedPrecondition(format!(
                    "container {} has no running process whose namespaces could be joined",
                    joins.container_id
                ))
            })?;
        let mut wanted = Vec::with_capacity(joins.types.len());
        for name in joins.types {
            wanted.push(match name.as_str() {
                "ipc" => LinuxNamespaceType::Ipc,
                "uts" => LinuxNamespaceType::Uts,
                "pid" => LinuxNamespaceType::Pid,
                other => {
                    return Err(AgentError::InvalidArgument(format!(
                        "namespace type {other:?} cannot be joined (ipc, uts or pid)"
                    )))
                }
            });
        }
        let Some(linux) = spec.linux_mut() else {
            return Ok(());
        };
        let namespaces = linux.namespaces_mut().get_or_insert_with(Vec::new);
        for typ in wanted {
            let path = PathBuf::from(format!("/proc/{}/ns/{}", init.pid, ns_file(typ)));
            match namespaces.iter_mut().find(|ns| ns.typ() == typ) {
                Some(ns) => {
                    ns.set_path(Some(path));
                }
                None => namespaces.push(
                    LinuxNamespaceBuilder::default()
                        .typ(typ)
                        .path(path)
                        .build()
                        .map_err(|e| AgentError::InvalidArgument(e.to_string()))?,
                ),
            }
        }
        Ok(())
    }

    /// Starts a created container.
    pub async fn start_container(&self, container_id: &str) -> Result<()> {
        self.container(container_id)?;
        let id = container_id.to_owned();
        self.engine(move |engine| engine.start(&id)).await
    }

    /// Runs another process in a running container.
    pub async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: &str,
    ) -> Result<()> {
        validate::exec_id(exec_id)?;
        if exec_id.is_empty() {
            return Err(AgentError::InvalidArgument("exec id is empty".into()));
        }
        let entry = self.container(container_id)?;
        if entry.process(exec_id).is_some() {
            return Err(AgentError::AlreadyExists(format!(
                "process {exec_id} in container {container_id}"
            )));
        }
        let process: OciProcess = serde_json::from_str(process_json)
            .map_err(|e| AgentError::InvalidArgument(format!("process JSON: {e}")))?;
        let (id, eid) = (container_id.to_owned(), exec_id.to_owned());
        let started = self
            .engine(move |engine| engine.exec(&id, &eid, &process))
            .await?;
        let mut processes = lock(&entry.processes);
        if processes.len() >= MAX_PROCESSES {
            let init = entry.init_exec_id.clone();
            processes.retain(|eid, p| *eid == init || p.exit_status().is_none());
        }
        processes.insert(exec_id.to_owned(), Arc::new(started));
        Ok(())
    }

    /// Signals one process, or every process of the container.
    pub async fn signal(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let signal = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| AgentError::InvalidArgument(format!("invalid signal {signal}")))?;
        let entry = self.container(container_id)?;
        let is_init = exec_id.is_empty() || exec_id == entry.init_exec_id;
        if all || is_init {
            let id = container_id.to_owned();
            return self
                .engine(move |engine| engine.kill(&id, signal, all))
                .await;
        }
        let process = self.process(container_id, exec_id)?;
        if process.exit_status().is_some() {
            return Err(AgentError::FailedPrecondition(format!(
                "process {exec_id} has exited"
            )));
        }
        let signal = nix::sys::signal::Signal::try_from(signal)
            .map_err(|e| AgentError::InvalidArgument(format!("signal {signal}: {e}")))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(process.pid), signal)
            .map_err(|e| AgentError::errno(format!("signalling process {exec_id}"), e))
    }

    /// Stops a container's processes (SIGKILL) and removes all it left.
    pub async fn remove_container(
        &self,
        container_id: &str,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let entry = self.container(container_id)?;
        if let Some(init) = entry.init() {
            if init.exit_status().is_none() {
                let id = container_id.to_owned();
                if let Err(err) = self
                    .engine(move |engine| engine.kill(&id, libc::SIGKILL, true))
                    .await
                {
                    tracing::debug!(container_id, %err, "killing container for removal");
                }
                let timeout = timeout.unwrap_or(DEFAULT_REMOVE_TIMEOUT);
                if tokio::time::timeout(timeout, init.wait()).await.is_err() {
                    return Err(AgentError::FailedPrecondition(format!(
                        "container {container_id} did not stop within {timeout:?}"
                    )));
                }
            }
        }
        let id = container_id.to_owned();
        self.engine(move |engine| {
            engine.destroy(&id);
            Ok(())
        })
        .await?;
        lock(&self.containers).remove(container_id);
        tracing::info!(container_id, "container removed");
        Ok(())
    }

    /// Freezes a container.
    pub async fn pause(&self, container_id: &str) -> Result<()> {
        self.container(container_id)?;
        let id = container_id.to_owned();
        self.engine(move |engine| engine.pause(&id)).await
    }

    /// Thaws a container.
    pub async fn resume(&self, container_id: &str) -> Result<()> {
        self.container(container_id)?;
        let id = container_id.to_owned();
        self.engine(move |engine| engine.resume(&id)).await
    }

    /// Applies new resources (OCI linux.resources JSON).
    pub async fn update(&self, container_id: &str, resources_json: &str) -> Result<()> {
        self.container(container_id)?;
        let resources: LinuxResources = serde_json::from_str(resources_json)
            .map_err(|e| AgentError::InvalidArgument(format!("resources JSON: {e}")))?;
        let id = container_id.to_owned();
        self.engine(move |_| cgroups::update(&id, &resources)).await
    }

    /// Cgroup statistics.
    pub async fn stats(
        &self,
        container_id: &str,
    ) -> Result<husk_protocol::agent::StatsContainerResponse> {
        self.container(container_id)?;
        let id = container_id.to_owned();
        tokio::task::spawn_blocking(move || cgroups::stats(&id))
            .await
            .map_err(|e| AgentError::Cgroup(e.to_string()))?
    }

    /// The pids of a container's processes.
    pub async fn pids(&self, container_id: &str) -> Result<Vec<i32>> {
        self.container(container_id)?;
        let id = container_id.to_owned();
        tokio::task::spawn_blocking(move || cgroups::pids(&id))
            .await
            .map_err(|e| AgentError::Cgroup(e.to_string()))?
    }

    /// Waits for a process's exit status.
    pub async fn wait(&self, container_id: &str, exec_id: &str) -> Result<ExitStatus> {
        self.process(container_id, exec_id)?.wait().await
    }

    /// Waits for the next OOM kill; returns the container's id.
    pub async fn next_oom(&self) -> Result<String> {
        self.oom_rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| AgentError::FailedPrecondition("OOM events have ended".into()))
    }

    /// Removes every container and unmounts every storage.
    pub async fn destroy(&self, timeout: Option<Duration>) {
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        for id in ids {
            if let Err(err) = self.remove_container(&id, timeout).await {
                tracing::warn!(container_id = %id, %err, "removing container");
            }
        }
        cgroups::remove_parent();
        let storages: Vec<PathBuf> = lock(&self.storages).drain(..).rev().collect();
        for target in storages {
            storage::unmount(&target);
        }
    }
}
