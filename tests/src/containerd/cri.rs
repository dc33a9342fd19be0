//! A blocking CRI v1 client (the kubelet's side of the Container Runtime
//! Interface) for tests: k8s-cri's generated tonic clients over
//! containerd's Unix socket, driven by a tokio runtime of its own, every
//! call bounded by a deadline. Plus builders for the pod and container
//! configurations a kubelet would send.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one CRI call may take by default. Generous: under husk on
/// TCG a pod sandbox boots a VM.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long connecting to the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What `ExecSync` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The command's standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// Its exit code.
    pub exit_code: i32,
}

/// A pod sandbox's status, the parts tests look at.
#[derive(Debug, Clone)]
pub struct PodStatus {
    /// The whole status as the CRI plugin sent it.
    pub status: api::PodSandboxStatus,
    /// The pod's IPv4 address (empty with host networking).
    pub ip: String,
    /// Whether the sandbox is ready.
    pub ready: bool,
    /// The verbose `info` map (containerd: key `info`, a JSON document with
    /// the sandbox's PID, runtime handler, OCI spec and CNI result).
    pub info: HashMap<String, String>,
}

/// A blocking CRI client on one socket.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    timeout: Duration,
}

impl Cri {
    /// Connects to the CRI server on the Unix socket `socket`; each call
    /// then gets `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the CRI client's tokio runtime")?;
        let path: PathBuf = socket.to_owned();
        // The URI is a placeholder: the connector dials the socket.
        let endpoint = Endpoint::from_static("http://localhost")
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout);
        let connect = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }));
        let channel = rt
            .block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, connect).await })
            .map_err(|_| anyhow!("connecting to {} timed out", socket.display()))?
            .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(Self {
            rt,
            channel,
            timeout,
        })
    }

    /// The same client with another per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs one call to completion within the deadline; `what` names it
    /// in errors.
    fn call<T, F>(&self, what: &str, fut: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let timeout = self.timeout;
        match self
            .rt
            .block_on(async { tokio::time::timeout(timeout, fut).await })
        {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => bail!("CRI {what}: {:?}: {}", status.code(), status.message()),
            Err(_) => bail!("CRI {what} did not answer within {timeout:?}"),
        }
    }

    /// `Version`: the runtime's name and versions.
    pub fn version(&self) -> Result<api::VersionResponse> {
        let req = api::VersionRequest {
            version: "v1".into(),
        };
        self.call("Version", self.runtime().version(req))
    }

    /// `Status`: the runtime's conditions (`RuntimeReady`, `NetworkReady`).
    pub fn status(&self) -> Result<api::RuntimeStatus> {
        let req = api::StatusRequest { verbose: false };
        let resp = self.call("Status", self.runtime().status(req))?;
        resp.status
            .ok_or_else(|| anyhow!("CRI Status without a status"))
    }

    /// `RunPodSandbox` with the runtime `handler` (a RuntimeClass's
    /// handler; "" for containerd's default); the pod's ID.
    pub fn run_pod_sandbox(&self, config: &api::PodSandboxConfig, handler: &str) -> Result<String> {
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let resp = self.call("RunPodSandbox", self.runtime().run_pod_sandbox(req))?;
        Ok(resp.pod_sandbox_id)
    }

    /// `StopPodSandbox`: stops every container of the pod and the sandbox,
    /// and tears its network down.
    pub fn stop_pod_sandbox(&self, pod_id: &str) -> Result<()> {
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        };
        self.call("StopPodSandbox", self.runtime().stop_pod_sandbox(req))
            .map(drop)
    }

    /// `RemovePodSandbox`: removes the pod and its containers.
    pub fn remove_pod_sandbox(&self, pod_id: &str) -> Result<()> {
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        };
        self.call("RemovePodSandbox", self.runtime().remove_pod_sandbox(req))
            .map(drop)
    }

    /// `PodSandboxStatus`, verbose.
    pub fn pod_sandbox_status(&self, pod_id: &str) -> Result<PodStatus> {
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        };
        let resp = self.call("PodSandboxStatus", self.runtime().pod_sandbox_status(req))?;
        let status = resp
            .status
            .ok_or_else(|| anyhow!("PodSandboxStatus of {pod_id} without a status"))?;
        Ok(PodStatus {
            ip: status
                .network
                .as_ref()
                .map(|n| n.ip.clone())
                .unwrap_or_default(),
            ready: status.state == api::PodSandboxState::SandboxReady as i32,
            status,
            info: resp.info,
        })
    }

    /// `ListPodSandbox`, unfiltered.
    pub fn list_pod_sandboxes(&self) -> Result<Vec<api::PodSandbox>> {
        let req = api::ListPodSandboxRequest { filter: None };
        Ok(self
            .call("ListPodSandbox", self.runtime().list_pod_sandbox(req))?
            .items)
    }

    /// `CreateContainer` in pod `pod_id` (whose configuration was `pod`);
    /// the container's ID. A container without namespace options gets the
    /// pod's, as the kubelet sends them: the CRI default would share the
    /// sandbox's PID namespace whatever the pod says.
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        pod: &api::PodSandboxConfig,
    ) -> Result<String> {
        let mut config = config.clone();
        let pod_namespaces = pod
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|c| c.namespace_options.clone());
        let context = config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default);
        if context.namespace_options.is_none() {
            context.namespace_options = pod_namespaces;
        }
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        };
        Ok(self
            .call("CreateContainer", self.runtime().create_container(req))?
            .container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> Result<()> {
        let req = api::StartContainerRequest {
            container_id: id.into(),
        };
        self.call("StartContainer", self.runtime().start_container(req))
            .map(drop)
    }

    /// `StopContainer`, SIGKILL after `grace_secs`.
    pub fn stop_container(&self, id: &str, grace_secs: i64) -> Result<()> {
        let req = api::StopContainerRequest {
            container_id: id.into(),
            timeout: grace_secs,
        };
        self.call("StopContainer", self.runtime().stop_container(req))
            .map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        let req = api::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call("RemoveContainer", self.runtime().remove_container(req))
            .map(drop)
    }

    /// `ExecSync`: runs `cmd` in container `id`, killed by the runtime
    /// after `timeout` (whole seconds, at least one).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let req = api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs().max(1) as i64,
        };
        let resp = self.call("ExecSync", self.runtime().exec_sync(req))?;
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&resp.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&resp.stderr).into_owned(),
            exit_code: resp.exit_code,
        })
    }

    /// `ContainerStatus` (state, exit code, reason such as `OOMKilled`,
    /// log path).
    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus> {
        let req = api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call("ContainerStatus", self.runtime().container_status(req))?
            .status
            .ok_or_else(|| anyhow!("ContainerStatus of {id} without a status"))
    }

    /// Polls [`Cri::container_status`] until the container has exited, at
    /// most `timeout`; its final status.
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> Result<api::ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id)?;
            if status.state == api::ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "container {id} still {} after {timeout:?}",
                    state_name(status.state)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `ContainerStats`.
    pub fn container_stats(&self, id: &str) -> Result<api::ContainerStats> {
        let req = api::ContainerStatsRequest {
            container_id: id.into(),
        };
        self.call("ContainerStats", self.runtime().container_stats(req))?
            .stats
            .ok_or_else(|| anyhow!("ContainerStats of {id} without stats"))
    }

    /// `ListContainers`, unfiltered (every pod's).
    pub fn list_containers(&self) -> Result<Vec<api::Container>> {
        let req = api::ListContainersRequest { filter: None };
        Ok(self
            .call("ListContainers", self.runtime().list_containers(req))?
            .containers)
    }

    /// `ImageStatus`: the image as the CRI plugin sees it, if it does.
    pub fn image_status(&self, image: &str) -> Result<Option<api::Image>> {
        let req = api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        Ok(self
            .call("ImageStatus", self.images().image_status(req))?
            .image)
    }
}

/// A container state's CRI name (`CONTAINER_RUNNING`...), for messages.
pub fn state_name(state: i32) -> String {
    api::ContainerState::try_from(state)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("state {state}"))
}

/// The configuration of one pod sandbox, as a kubelet would send it.
#[derive(Debug, Clone)]
pub struct PodConfig {
    config: api::PodSandboxConfig,
}

impl PodConfig {
    /// Pod `namespace/name` with `uid`, its containers' logs under
    /// `log_directory`, its own network namespace (POD) and, like
    /// Kubernetes pods by default, a PID namespace per container.
    pub fn new(name: &str, namespace: &str, uid: &str, log_directory: &Path) -> Self {
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(api::NamespaceOption {
                        network: api::NamespaceMode::Pod as i32,
                        pid: api::NamespaceMode::Container as i32,
                        ipc: api::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Self { config }
    }

    fn linux(&mut self) -> &mut api::LinuxPodSandboxConfig {
        self.config.linux.get_or_insert_with(Default::default)
    }

    fn namespaces(&mut self) -> &mut api::NamespaceOption {
        self.linux()
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options
            .get_or_insert_with(Default::default)
    }

    /// `shareProcessNamespace`: one PID namespace for the whole pod.
    pub fn share_process_namespace(mut self, share: bool) -> Self {
        self.namespaces().pid = if share {
            api::NamespaceMode::Pod
        } else {
            api::NamespaceMode::Container
        } as i32;
        self
    }

    /// The pod's parent cgroup (cgroupfs syntax).
    pub fn cgroup_parent(mut self, parent: &str) -> Self {
        self.linux().cgroup_parent = parent.into();
        self
    }

    /// Replaces the pod's Linux security context (keeping the namespace
    /// options when `context` has none).
    pub fn security_context(mut self, mut context: api::LinuxSandboxSecurityContext) -> Self {
        let linux = self.linux();
        if context.namespace_options.is_none() {
            context.namespace_options = linux
                .security_context
                .take()
                .and_then(|c| c.namespace_options);
        }
        linux.security_context = Some(context);
        self
    }

    /// Adds a pod annotation (passed to runtimes that ask for it).
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.config.annotations.insert(key.into(), value.into());
        self
    }

    /// Adds a pod label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.config.labels.insert(key.into(), value.into());
        self
    }

    /// The pod's log directory.
    pub fn log_directory(&self) -> PathBuf {
        PathBuf::from(&self.config.log_directory)
    }

    /// The CRI message.
    pub fn build(&self) -> api::PodSandboxConfig {
        self.config.clone()
    }
}

/// The configuration of one container in a pod.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    config: api::ContainerConfig,
}

impl ContainerConfig {
    /// Container `name` of `image`, its log at `<name>.log` in the pod's
    /// log directory, the image's own command.
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            config: api::ContainerConfig {
                metadata: Some(api::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(api::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                log_path: format!("{name}.log"),
                linux: Some(api::LinuxContainerConfig::default()),
                ..Default::default()
            },
        }
    }

    /// The entrypoint (the image's `Entrypoint` is replaced).
    pub fn command(mut self, command: &[&str]) -> Self {
        self.config.command = command.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The arguments (the image's `Cmd` is replaced).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.config.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.config.envs.push(api::KeyValue {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Bind-mounts the host directory or file `host_path` at
    /// `container_path` (an emptyDir or hostPath volume).
    pub fn mount(mut self, host_path: &Path, container_path: &str, readonly: bool) -> Self {
        self.config.mounts.push(api::Mount {
            host_path: host_path.to_string_lossy().into_owned(),
            container_path: container_path.into(),
            readonly,
            ..Default::default()
        });
        self
    }

    /// `resources.limits.memory`.
    pub fn memory_limit(mut self, bytes: i64) -> Self {
        self.resources().memory_limit_in_bytes = bytes;
        self
    }

    /// The log file, relative to the pod's log directory.
    pub fn log_path(mut self, path: &str) -> Self {
        self.config.log_path = path.into();
        self
    }

    /// Replaces the container's Linux security context.
    pub fn security_context(mut self, context: api::LinuxContainerSecurityContext) -> Self {
        self.linux().security_context = Some(context);
        self
    }

    /// Adds a container annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.config.annotations.insert(key.into(), value.into());
        self
    }

    fn linux(&mut self) -> &mut api::LinuxContainerConfig {
        self.config.linux.get_or_insert_with(Default::default)
    }

    fn resources(&mut self) -> &mut api::LinuxContainerResources {
        self.linux().resources.get_or_insert_with(Default::default)
    }

    /// The CRI message.
    pub fn build(&self) -> api::ContainerConfig {
        self.config.clone()
    }
}

/// One line of a CRI container log (`<RFC 3339 time> <stream> <P|F> <text>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The time stamp as written.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// `F` for a full line, `P` for a part of one.
    pub tag: String,
    /// The text, without its newline.
    pub text: String,
}

/// Parses a CRI log file's text; a line not in the format is an error.
pub fn parse_log(text: &str) -> Result<Vec<LogLine>> {
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
            else {
                bail!("not a CRI log line: {line:?}");
            };
            if !matches!(stream, "stdout" | "stderr") || !matches!(tag, "F" | "P") {
                bail!("not a CRI log line: {line:?}");
            }
            // RFC 3339: a date, a T, a time.
            if time.len() < 20 || time.as_bytes().get(10) != Some(&b'T') {
                bail!("not an RFC 3339 time stamp in {line:?}");
            }
            Ok(LogLine {
                time: time.into(),
                stream: stream.into(),
                tag: tag.into(),
                text: parts.next().unwrap_or_default().into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_are_parsed() {
        let lines = parse_log(
            "2024-01-02T03:04:05.123456789Z stdout F hello world\n\
             2024-01-02T03:04:05.2Z stderr P part\n\
             2024-01-02T03:04:05.3Z stdout F \n",
        )
        .unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].text, "hello world");
        assert_eq!(lines[1].stream, "stderr");
        assert_eq!(lines[1].tag, "P");
        assert_eq!(lines[2].text, "");
        assert!(parse_log("hello\n").is_err());
        assert!(parse_log("2024-01-02T03:04:05Z stdin F x\n").is_err());
    }

    #[test]
    fn a_pod_config_has_its_own_network_and_per_container_pids_by_default() {
        let pod = PodConfig::new("p", "ns", "u1", Path::new("/logs")).build();
        let ns = pod
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network, api::NamespaceMode::Pod as i32);
        assert_eq!(ns.pid, api::NamespaceMode::Container as i32);
        assert_eq!(pod.log_directory, "/logs");
    }

    #[test]
    fn sharing_the_pid_namespace_survives_a_new_security_context() {
        let pod = PodConfig::new("p", "ns", "u1", Path::new("/logs"))
            .share_process_namespace(true)
            .security_context(api::LinuxSandboxSecurityContext {
                privileged: false,
                ..Default::default()
            })
            .cgroup_parent("/parent")
            .build();
        let linux = pod.linux.unwrap();
        assert_eq!(linux.cgroup_parent, "/parent");
        let ns = linux.security_context.unwrap().namespace_options.unwrap();
        assert_eq!(ns.pid, api::NamespaceMode::Pod as i32);
    }

    #[test]
    fn a_container_config_carries_mounts_limits_and_log_path() {
        let c = ContainerConfig::new("a", "busybox")
            .command(&["sh", "-c"])
            .args(&["echo hi"])
            .mount(Path::new("/host/dir"), "/data", false)
            .memory_limit(32 << 20)
            .build();
        assert_eq!(c.log_path, "a.log");
        assert_eq!(c.command, ["sh", "-c"]);
        assert_eq!(c.mounts[0].host_path, "/host/dir");
        assert_eq!(
            c.linux.unwrap().resources.unwrap().memory_limit_in_bytes,
            32 << 20
        );
    }
}
