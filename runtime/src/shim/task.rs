//! containerd's task service (API v2) over one [`Sandbox`]: the first
//! container created (a pod's sandbox container, or a container on its
//! own) boots the VM; the pod's other containers are created in it; the
//! VM goes when the last container is deleted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext, Code, Status as RpcStatus};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, Task};
use husk_protocol::agent::{
    ContainerRequest, GetOOMEventRequest, ProcessRequest, SignalProcessRequest,
    TtyWinResizeRequest, UpdateContainerRequest,
};
use husk_protocol::agent_ttrpc::AgentServiceClient;
use oci_spec::runtime::LinuxNamespaceType;

use super::metrics;
use super::pod::{self, Role};
use super::process::{Exit, Phase, Proc};
use super::rootfs::Rootfs;
use super::stdio::{Carried, StdioPaths};
use crate::agent_client::{agent_message, ctx};
use crate::config::Config;
use crate::oci::bundle::Bundle;
use crate::oci::netns::NetworkNamespace;
use crate::sandbox_dir::SandboxDir;
use crate::service::INIT_EXEC_ID;
use crate::service::{Joins, Network, Sandbox, SandboxOptions};

/// The exit status of a process whose VM went away under it.
const LOST_STATUS: u32 = 255;
/// How often the shim looks whether the pod's VM still runs.
const VM_WATCH: std::time::Duration = std::time::Duration::from_millis(250);
/// Most containers one pod's sandbox holds.
const MAX_CONTAINERS: usize = 128;

type RpcResult<T> = ttrpc::Result<T>;

/// A container of the pod.
#[derive(Debug)]
struct Container {
    bundle: PathBuf,
    rootfs: Mutex<Option<Rootfs>>,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
}

/// What the shim serves from: its pod's sandbox and containers.
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    config: Result<Config, String>,
    sandbox_dir: SandboxDir,
    exit: Arc<ExitSignal>,
    publisher: RemotePublisher,
    sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    agent: Mutex<Option<Arc<AgentServiceClient>>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn error(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(RpcStatus {
        code: code.into(),
        message: message.into(),
        ..Default::default()
    })
}

fn not_found(what: impl std::fmt::Display) -> ttrpc::Error {
    error(Code::NOT_FOUND, format!("{what}: not found"))
}

fn agent_error(what: &str, e: &husk_protocol::ttrpc::Error) -> ttrpc::Error {
    let code = match e {
        husk_protocol::ttrpc::Error::RpcStatus(s) => match s.code() {
            husk_protocol::ttrpc::Code::NOT_FOUND => Code::NOT_FOUND,
            husk_protocol::ttrpc::Code::ALREADY_EXISTS => Code::ALREADY_EXISTS,
            husk_protocol::ttrpc::Code::INVALID_ARGUMENT => Code::INVALID_ARGUMENT,
            husk_protocol::ttrpc::Code::FAILED_PRECONDITION => Code::FAILED_PRECONDITION,
            _ => Code::UNKNOWN,
        },
        _ => Code::UNAVAILABLE,
    };
    error(code, format!("{what}: {}", agent_message(e)))
}

impl TaskService {
    /// The service of the shim for `namespace`, whose sandbox directory is
    /// `sandbox_dir`.
    pub fn new(
        namespace: &str,
        config: Result<Config, String>,
        sandbox_dir: SandboxDir,
        exit: Arc<ExitSignal>,
        publisher: RemotePublisher,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                namespace: namespace.to_owned(),
                config,
                sandbox_dir,
                exit,
                publisher,
                sandbox: tokio::sync::Mutex::new(None),
                agent: Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Inner {
    fn container(&self, id: &str) -> RpcResult<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(format!("container {id}")))
    }

    fn process(&self, id: &str, exec_id: &str) -> RpcResult<Arc<Proc>> {
        let container = self.container(id)?;
        if exec_id.is_empty() {
            return Ok(container.init.clone());
        }
        let found = lock(&container.execs).get(exec_id).cloned();
        found.ok_or_else(|| not_found(format!("process {exec_id} of container {id}")))
    }

    fn agent(&self) -> RpcResult<Arc<AgentServiceClient>> {
        lock(&self.agent)
            .clone()
            .ok_or_else(|| error(Code::FAILED_PRECONDITION, "the sandbox VM is not running"))
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, "publishing an event to containerd: {e}");
        }
    }

    /// Boots the pod's VM for its first container.
    async fn boot(self: &Arc<Self>, id: &str, bundle: &Bundle) -> Result<Sandbox, String> {
        let config = self.config.as_ref().map_err(Clone::clone)?;
        let network = match NetworkNamespace::from_spec(&bundle.spec).map_err(|e| e.to_string())? {
            NetworkNamespace::New => Network::Isolated,
            NetworkNamespace::Join { path, .. } => Network::Join(path),
        };
        let size = pod::vm_size(config, &bundle.spec).map_err(|e| e.to_string())?;
        let options = SandboxOptions {
            id: id.to_owned(),
            dir: self.sandbox_dir.clone(),
            size,
            hostname: bundle.spec.hostname().clone().unwrap_or_default(),
            network,
            // Loopback nameservers are reachable only from the pod's
            // namespace, which no thread of the shim is in; Kubernetes
            // gives pods the cluster's DNS service instead.
            dns_relay: Vec::new(),
        };
        let sandbox = Sandbox::boot(config, options)
            .await
            .map_err(|e| e.to_string())?;
        let agent = Arc::new(sandbox.agent().clone());
        *lock(&self.agent) = Some(agent.clone());
        tokio::spawn(Arc::clone(self).forward_oom_events(agent));
        tokio::spawn(Arc::clone(self).watch_vm());
        Ok(sandbox)
    }

    /// Ends every process of the pod with [`LOST_STATUS`] once the VM has
    /// ended by itself (QEMU killed, the guest crashed): the agent's
    /// connection lives in this process and would not notice.
    async fn watch_vm(self: Arc<Self>) {
        loop {
            tokio::time::sleep(VM_WATCH).await;
            // Skipped while a create or delete holds the sandbox.
            let Ok(guard) = self.sandbox.try_lock() else {
                continue;
            };
            let Some(sandbox) = guard.as_ref() else {
                return;
            };
            let Some(exit) = sandbox.try_exit() else {
                continue;
            };
            drop(guard);
            tracing::warn!(%exit, "the pod's VM ended by itself");
            *lock(&self.agent) = None;
            let containers: Vec<Arc<Container>> =
                lock(&self.containers).values().cloned().collect();
            for container in containers {
                let execs: Vec<Arc<Proc>> = lock(&container.execs).values().cloned().collect();
                for process in std::iter::once(container.init.clone()).chain(execs) {
                    if process.phase() == Phase::Stopped {
                        continue;
                    }
                    // Its output cannot come any more.
                    drop(process.carried.lock().await.take());
                    self.publish_exit(&process, LOST_STATUS).await;
                }
            }
            return;
        }
    }

    /// TaskOOM for every container the guest's kernel OOM-kills in, until
    /// the agent is gone.
    async fn forward_oom_events(self: Arc<Self>, agent: Arc<AgentServiceClient>) {
        loop {
            let event = agent
                .get_oom_event(
                    husk_protocol::ttrpc::context::with_timeout(0),
                    &GetOOMEventRequest::default(),
                )
                .await;
            match event {
                Ok(event) => {
                    tracing::info!(container = event.container_id, "OOM kill in the guest");
                    self.publish(
                        topics::TASK_OOM_EVENT_TOPIC,
                        Box::new(TaskOOM {
                            container_id: event.container_id,
                            ..Default::default()
                        }),
                    )
                    .await;
                }
                Err(_) => return,
            }
        }
    }

    /// Waits for `process` in the guest, drains its output, records its
    /// exit and publishes TaskExit.
    async fn watch_exit(self: Arc<Self>, agent: Arc<AgentServiceClient>, process: Arc<Proc>) {
        let waited = agent
            .wait_process(
                husk_protocol::ttrpc::context::with_timeout(0),
                &ProcessRequest {
                    container_id: process.container_id.clone(),
                    exec_id: process.agent_exec_id.clone(),
                    ..Default::default()
                },
            )
            .await;
        let status = match waited {
            Ok(reply) => u32::try_from(reply.status).unwrap_or(LOST_STATUS),
            Err(e) => {
                tracing::warn!(container = %process.container_id, exec = %process.exec_id, "waiting for the process: {}", agent_message(&e));
                LOST_STATUS
            }
        };
        if let Some(carried) = process.carried.lock().await.as_mut() {
            carried.drain().await;
        }
        if process.exit().is_some() {
            // The VM watch ended it already (and said so).
            return;
        }
        self.publish_exit(&process, status).await;
    }

    /// Records `process`'s exit with `status` and publishes TaskExit.
    async fn publish_exit(&self, process: &Proc, status: u32) {
        let exit = process.exited(status);
        let id = if process.exec_id.is_empty() {
            process.container_id.clone()
        } else {
            process.exec_id.clone()
        };
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: process.container_id.clone(),
                id,
                pid: std::process::id(),
                exit_status: exit.status,
                exited_at: MessageField::some(exit.at),
                ..Default::default()
            }),
        )
        .await;
    }

    async fn create(self: &Arc<Self>, req: &CreateTaskRequest) -> RpcResult<()> {
        let id = req.id.as_str();
        crate::sandbox_dir::validate_id(id)
            .map_err(|e| error(Code::INVALID_ARGUMENT, format!("container id {id:?}: {e}")))?;
        if lock(&self.containers).contains_key(id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("container {id} already exists"),
            ));
        }
        if lock(&self.containers).len() >= MAX_CONTAINERS {
            return Err(error(
                Code::RESOURCE_EXHAUSTED,
                format!("a sandbox holds at most {MAX_CONTAINERS} containers"),
            ));
        }
        let bundle_dir = PathBuf::from(&req.bundle);
        let rootfs = Rootfs::mount(&bundle_dir.join("rootfs"), &req.rootfs)
            .map_err(|e| error(Code::INVALID_ARGUMENT, e.to_string()))?;
        // From here on, dropping `rootfs` unmounts it.
        let bundle =
            Bundle::load(&bundle_dir).map_err(|e| error(Code::INVALID_ARGUMENT, e.to_string()))?;
        refuse_host_namespaces(&bundle)?;
        let role = pod::role(&bundle.spec, id);
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut guard = self.sandbox.lock().await;
        let booted_here = guard.is_none();
        if booted_here {
            if let Role::Member { sandbox_id } = &role {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "pod sandbox {sandbox_id} of container {id} is not running in this shim"
                    ),
                ));
            }
            let sandbox = self
                .boot(id, &bundle)
                .await
                .map_err(|e| error(Code::UNKNOWN, e))?;
            *guard = Some(sandbox);
        }
        let Some(sandbox) = guard.as_mut() else {
            return Err(error(Code::UNKNOWN, "the sandbox is gone"));
        };
        let joins = match &role {
            Role::Member { sandbox_id } => Some(Joins {
                container_id: sandbox_id.clone(),
                types: shared_namespaces(&bundle),
            }),
            Role::Sandbox => None,
        };
        let mut created = sandbox
            .create_container(id, INIT_EXEC_ID, &bundle, joins.as_ref())
            .await
            .map_err(|e| error(Code::UNKNOWN, e.to_string()));
        let init = Arc::new(Proc::new(id, "", INIT_EXEC_ID, stdio.clone(), None));
        if created.is_ok() {
            let agent = Arc::new(sandbox.agent().clone());
            match Carried::start(
                &stdio,
                agent,
                (id.to_owned(), INIT_EXEC_ID.to_owned()),
                &self.namespace,
            ) {
                Ok(carried) => *init.carried.lock().await = Some(carried),
                Err(e) => {
                    sandbox.remove_container(id).await;
                    created = Err(error(Code::INVALID_ARGUMENT, e.to_string()));
                }
            }
        }
        if let Err(e) = created {
            if booted_here {
                if let Some(sandbox) = guard.take() {
                    *lock(&self.agent) = None;
                    sandbox.down().await;
                }
            }
            return Err(e);
        }
        drop(guard);
        lock(&self.containers).insert(
            id.to_owned(),
            Arc::new(Container {
                bundle: bundle_dir,
                rootfs: Mutex::new(Some(rootfs)),
                init,
                execs: Mutex::new(HashMap::new()),
            }),
        );
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: id.to_owned(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: std::process::id(),
                ..Default::default()
            }),
        )
        .await;
        Ok(())
    }

    async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> RpcResult<()> {
        let process = self.process(id, exec_id)?;
        if process.phase() != Phase::Created {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!(
                    "process {} of container {id} is not in the created state",
                    display_exec(exec_id)
                ),
            ));
        }
        let agent = self.agent()?;
        if exec_id.is_empty() {
            let begun = std::time::Instant::now();
            agent
                .start_container(ctx(), &container_request(id))
                .await
                .map_err(|e| agent_error("starting the container", &e))?;
            tracing::info!(
                stage = "started",
                ms = crate::service::vm::stage_ms(begun),
                container = id,
                "container started"
            );
            // The guest's stages, as `husk start` logs them: one more call,
            // only when someone reads info logs.
            if tracing::enabled!(tracing::Level::INFO) {
                crate::service::boot_stages::log(&agent, id).await;
            }
        } else {
            agent
                .exec_process(
                    ctx(),
                    &husk_protocol::agent::ExecProcessRequest {
                        container_id: id.to_owned(),
                        exec_id: process.agent_exec_id.clone(),
                        process_json: process.process_json.clone().unwrap_or_default(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| agent_error("starting the exec", &e))?;
            let carried = Carried::start(
                &process.stdio,
                agent.clone(),
                (id.to_owned(), process.agent_exec_id.clone()),
                &self.namespace,
            );
            match carried {
                Ok(carried) => *process.carried.lock().await = Some(carried),
                Err(e) => tracing::warn!(container = id, exec = exec_id, "exec stdio: {e}"),
            }
        }
        process.set_phase(Phase::Running);
        tokio::spawn(Arc::clone(self).watch_exit(agent, process));
        let pid = std::process::id();
        if exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id.to_owned(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        } else {
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        }
        Ok(())
    }

    async fn delete(self: &Arc<Self>, id: &str, exec_id: &str) -> RpcResult<Exit> {
        let container = self.container(id)?;
        let process = self.process(id, exec_id)?;
        if matches!(process.phase(), Phase::Running | Phase::Paused) {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!(
                    "cannot delete running process {} of container {id}",
                    display_exec(exec_id)
                ),
            ));
        }
        let exit = process.exit().unwrap_or_else(|| process.exited(0));
        if !exec_id.is_empty() {
            lock(&container.execs).remove(exec_id);
            return Ok(exit);
        }
        {
            let mut guard = self.sandbox.lock().await;
            if let Some(sandbox) = guard.as_mut() {
                sandbox.remove_container(id).await;
            }
            lock(&self.containers).remove(id);
            if lock(&self.containers).is_empty() {
                if let Some(sandbox) = guard.take() {
                    *lock(&self.agent) = None;
                    sandbox.down().await;
                }
            }
        }
        drop(lock(&container.rootfs).take());
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.to_owned(),
                pid: std::process::id(),
                exit_status: exit.status,
                exited_at: MessageField::some(exit.at.clone()),
                id: id.to_owned(),
                ..Default::default()
            }),
        )
        .await;
        Ok(exit)
    }

    async fn exec(self: &Arc<Self>, req: &ExecProcessRequest) -> RpcResult<()> {
        let container = self.container(&req.id)?;
        if container.init.phase() == Phase::Stopped {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("container {} is not running", req.id),
            ));
        }
        crate::sandbox_dir::validate_id(&req.exec_id).map_err(|e| {
            error(
                Code::INVALID_ARGUMENT,
                format!("exec id {:?}: {e}", req.exec_id),
            )
        })?;
        let process_json = std::str::from_utf8(&req.spec.value)
            .map_err(|_| {
                error(
                    Code::INVALID_ARGUMENT,
                    "the exec's process spec is not UTF-8 JSON",
                )
            })?
            .to_owned();
        serde_json::from_str::<oci_spec::runtime::Process>(&process_json).map_err(|e| {
            error(
                Code::INVALID_ARGUMENT,
                format!("the exec's process spec: {e}"),
            )
        })?;
        {
            let mut execs = lock(&container.execs);
            if execs.contains_key(&req.exec_id) {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!(
                        "exec {} of container {} already exists",
                        req.exec_id, req.id
                    ),
                ));
            }
            execs.insert(
                req.exec_id.clone(),
                Arc::new(Proc::new(
                    &req.id,
                    &req.exec_id,
                    &req.exec_id,
                    StdioPaths {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                    },
                    Some(process_json),
                )),
            );
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(())
    }

    async fn pause(self: &Arc<Self>, id: &str, pause: bool) -> RpcResult<()> {
        let container = self.container(id)?;
        let agent = self.agent()?;
        let req = container_request(id);
        if pause {
            agent
                .pause_container(ctx(), &req)
                .await
                .map_err(|e| agent_error("pausing the container", &e))?;
            container.init.set_phase(Phase::Paused);
            self.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: id.to_owned(),
                    ..Default::default()
                }),
            )
            .await;
        } else {
            agent
                .resume_container(ctx(), &req)
                .await
                .map_err(|e| agent_error("resuming the container", &e))?;
            container.init.set_phase(Phase::Running);
            self.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: id.to_owned(),
                    ..Default::default()
                }),
            )
            .await;
        }
        Ok(())
    }
}

/// The namespaces a pod member's spec asks to share by path (containerd
/// points them at the sandbox task's): in the VM, those of the sandbox
/// container. Its network is the VM's in any case.
fn shared_namespaces(bundle: &Bundle) -> Vec<String> {
    let namespaces = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    namespaces
        .iter()
        .filter(|ns| ns.path().is_some())
        .filter_map(|ns| match ns.typ() {
            LinuxNamespaceType::Ipc => Some("ipc"),
            LinuxNamespaceType::Uts => Some("uts"),
            LinuxNamespaceType::Pid => Some("pid"),
            _ => None,
        })
        .map(str::to_owned)
        .collect()
}

/// A container in a VM cannot share the host's PID or IPC namespace
/// (Kubernetes' hostPID and hostIPC): without one of its own it would share
/// the guest agent's, so it is refused by name. (hostNetwork is refused
/// when the pod's VM boots: there is no namespace whose links it could
/// take.)
fn refuse_host_namespaces(bundle: &Bundle) -> RpcResult<()> {
    let namespaces = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for (typ, what) in [
        (
            LinuxNamespaceType::Pid,
            "the host's PID namespace (hostPID)",
        ),
        (
            LinuxNamespaceType::Ipc,
            "the host's IPC namespace (hostIPC)",
        ),
    ] {
        if !namespaces.iter().any(|ns| ns.typ() == typ) {
            return Err(error(
                Code::INVALID_ARGUMENT,
                format!("{what} cannot be shared with a container in a VM"),
            ));
        }
    }
    Ok(())
}

/// The agent's request naming container `id`.
fn container_request(id: &str) -> ContainerRequest {
    ContainerRequest {
        container_id: id.to_owned(),
        ..Default::default()
    }
}

fn display_exec(exec_id: &str) -> &str {
    if exec_id.is_empty() {
        "init"
    } else {
        exec_id
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> RpcResult<CreateTaskResponse> {
        tracing::info!(container = req.id, bundle = req.bundle, "create");
        self.inner.create(&req).await.inspect_err(|e| {
            tracing::error!(container = req.id, "create: {e}");
        })?;
        Ok(CreateTaskResponse {
            pid: std::process::id(),
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> RpcResult<StartResponse> {
        self.inner.start(&req.id, &req.exec_id).await?;
        Ok(StartResponse {
            pid: std::process::id(),
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> RpcResult<DeleteResponse> {
        let exit = self.inner.delete(&req.id, &req.exec_id).await?;
        Ok(DeleteResponse {
            pid: std::process::id(),
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> RpcResult<StateResponse> {
        let container = self.inner.container(&req.id)?;
        let process = self.inner.process(&req.id, &req.exec_id)?;
        let exit = process.exit();
        let phase = if req.exec_id.is_empty() || process.phase() != Phase::Running {
            process.phase()
        } else if container.init.phase() == Phase::Paused {
            Phase::Paused
        } else {
            Phase::Running
        };
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: container.bundle.display().to_string(),
            pid: std::process::id(),
            status: phase.status().into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.at).into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> RpcResult<PidsResponse> {
        self.inner.container(&req.id)?;
        let reply = self
            .inner
            .agent()?
            .list_processes(ctx(), &container_request(&req.id))
            .await
            .map_err(|e| agent_error("listing the container's processes", &e))?;
        Ok(PidsResponse {
            processes: reply
                .pids
                .iter()
                .filter_map(|&pid| u32::try_from(pid).ok())
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> RpcResult<Empty> {
        self.inner.pause(&req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> RpcResult<Empty> {
        self.inner.pause(&req.id, false).await?;
        Ok(Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> RpcResult<Empty> {
        let process = self.inner.process(&req.id, &req.exec_id)?;
        if process.phase() == Phase::Stopped && !req.all {
            return Err(not_found(format!(
                "process {} of container {} (already finished)",
                display_exec(&req.exec_id),
                req.id
            )));
        }
        self.inner
            .agent()?
            .signal_process(
                ctx(),
                &SignalProcessRequest {
                    container_id: req.id.clone(),
                    exec_id: process.agent_exec_id.clone(),
                    signal: req.signal,
                    all: req.all,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| agent_error("signalling the process", &e))?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> RpcResult<Empty> {
        self.inner.exec(&req).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> RpcResult<Empty> {
        let process = self.inner.process(&req.id, &req.exec_id)?;
        self.inner
            .agent()?
            .tty_win_resize(
                ctx(),
                &TtyWinResizeRequest {
                    container_id: req.id.clone(),
                    exec_id: process.agent_exec_id.clone(),
                    rows: req.height,
                    cols: req.width,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| agent_error("resizing the terminal", &e))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> RpcResult<Empty> {
        let process = self.inner.process(&req.id, &req.exec_id)?;
        // A stdin FIFO is closed by its end of file, after what was written
        // to it; without one the guest side is closed here.
        if req.stdin && process.stdio.stdin.is_empty() {
            let closed = self
                .inner
                .agent()?
                .close_stdin(
                    ctx(),
                    &ProcessRequest {
                        container_id: req.id.clone(),
                        exec_id: process.agent_exec_id.clone(),
                        ..Default::default()
                    },
                )
                .await;
            if let Err(e) = closed {
                tracing::debug!(container = req.id, "closing stdin: {}", agent_message(&e));
            }
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> RpcResult<Empty> {
        self.inner.container(&req.id)?;
        let resources_json = std::str::from_utf8(&req.resources.value)
            .map_err(|_| error(Code::INVALID_ARGUMENT, "the resources are not UTF-8 JSON"))?
            .to_owned();
        self.inner
            .agent()?
            .update_container(
                ctx(),
                &UpdateContainerRequest {
                    container_id: req.id.clone(),
                    resources_json,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| agent_error("updating the container's resources", &e))?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> RpcResult<WaitResponse> {
        let process = self.inner.process(&req.id, &req.exec_id)?;
        let exit = process.wait().await;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> RpcResult<StatsResponse> {
        self.inner.container(&req.id)?;
        let stats = self
            .inner
            .agent()?
            .stats_container(ctx(), &container_request(&req.id))
            .await
            .map_err(|e| agent_error("reading the container's statistics", &e))?;
        let any = metrics::to_any(&metrics::metrics(&stats))
            .map_err(|e| error(Code::INTERNAL, e.to_string()))?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> RpcResult<ConnectResponse> {
        self.inner.container(&req.id)?;
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> RpcResult<Empty> {
        if !lock(&self.inner.containers).is_empty() {
            return Ok(Empty::new());
        }
        if let Some(sandbox) = self.inner.sandbox.lock().await.take() {
            *lock(&self.inner.agent) = None;
            sandbox.down().await;
        }
        self.inner.exit.signal();
        Ok(Empty::new())
    }
}
