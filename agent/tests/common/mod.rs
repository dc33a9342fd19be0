//! Test harness: a busybox root file system, the real `husk-agent` binary on
//! a Unix socket, and the generated ttrpc client.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentServiceClient;
use husk_protocol::ttrpc::context;
use oci_spec::runtime::{ProcessBuilder, Spec};

/// A busybox root file system built from Debian's `busybox-static`, once per
/// test binary, under cargo's target tmp dir.
pub fn busybox_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("busybox-rootfs");
        let building = root.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&building);
        husk_tests::rootfs::busybox(&building).expect("busybox rootfs");
        let _ = std::fs::remove_dir_all(&root);
        // Another test binary may have won the race; theirs is as good.
        if std::fs::rename(&building, &root).is_err() {
            let _ = std::fs::remove_dir_all(&building);
        }
        root
    })
}

/// A unique container id for this test process.
pub fn unique_id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// A running `husk-agent` on a private Unix socket, in its own mount and UTS
/// namespaces so that hostname and storage mounts stay out of the host.
pub struct Agent {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(false, &[])
    }

    /// Like [`Agent::start`], in a network namespace of its own as well
    /// (only a down `lo` in it), with more agent arguments.
    pub fn start_in_netns(args: &[&str]) -> Agent {
        Agent::start_with(true, args)
    }

    /// Like [`Agent::start`], with more agent arguments.
    pub fn start_args(args: &[&str]) -> Agent {
        Agent::start_with(false, args)
    }

    fn start_with(netns: bool, args: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let child = Command::new("unshare")
            .args(["--mount", "--uts", "--propagation", "private"])
            .args(netns.then_some("--net"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_husk-agent"))
            // Before `args`, which may set their own (the last one wins).
            .arg("--log-level")
            .arg(std::env::var("HUSK_TEST_AGENT_LOG").unwrap_or_else(|_| "error".into()))
            .args(args)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--resolv-conf")
            .arg(dir.path().join("resolv.conf"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn husk-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "agent did not listen in 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent {
            child: Some(child),
            dir,
            socket,
        }
    }

    pub async fn client(&self) -> AgentServiceClient {
        let client = husk_protocol::ttrpc::r#async::Client::connect(&format!(
            "unix://{}",
            self.socket.display()
        ))
        .await
        .expect("connect to agent");
        AgentServiceClient::new(client)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for the agent process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the agent process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the agent removes its containers, then exits.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

/// The default OCI spec (runc-like) running `args` in the busybox rootfs.
pub fn spec(args: &[&str]) -> Spec {
    let mut spec = Spec::default();
    let mut process = spec.process().clone().expect("default process");
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    process.set_env(Some(vec![
        "PATH=/bin".to_string(),
        "HOME=/root".to_string(),
        "TERM=xterm".to_string(),
    ]));
    spec.set_process(Some(process));
    spec.set_hostname(Some("husk-test".into()));
    // The host runs cgroup v1; a cgroup mount inside adds nothing to these tests.
    if let Some(mounts) = spec.mounts().clone() {
        let kept = mounts
            .into_iter()
            .filter(|m| m.typ().as_deref() != Some("cgroup"))
            .collect();
        spec.set_mounts(Some(kept));
    }
    spec
}

/// An OCI process for exec.
pub fn exec_process(args: &[&str], terminal: bool) -> oci_spec::runtime::Process {
    ProcessBuilder::default()
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .terminal(terminal)
        .build()
        .expect("process")
}

pub async fn create(
    client: &AgentServiceClient,
    id: &str,
    spec: &Spec,
) -> husk_protocol::ttrpc::Result<Empty> {
    client
        .create_container(
            ctx(),
            &CreateContainerRequest {
                container_id: id.into(),
                exec_id: "init".into(),
                spec_json: serde_json::to_string(spec).expect("spec json"),
                rootfs: busybox_rootfs().display().to_string(),
                ..Default::default()
            },
        )
        .await
}

pub async fn start(client: &AgentServiceClient, id: &str) {
    client
        .start_container(
            ctx(),
            &ContainerRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await
        .expect("start container");
}

/// Reads a stream to its end.
pub async fn read_all(client: &AgentServiceClient, id: &str, exec: &str, stderr: bool) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let req = ReadStreamRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            len: 1 << 20,
            ..Default::default()
        };
        let chunk = if stderr {
            client.read_stderr(ctx(), &req).await
        } else {
            client.read_stdout(ctx(), &req).await
        }
        .expect("read stream");
        if chunk.data.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk.data);
    }
}

pub async fn wait(client: &AgentServiceClient, id: &str, exec: &str) -> i32 {
    client
        .wait_process(
            ctx(),
            &ProcessRequest {
                container_id: id.into(),
                exec_id: exec.into(),
                ..Default::default()
            },
        )
        .await
        .expect("wait process")
        .status
}

pub async fn remove(client: &AgentServiceClient, id: &str) {
    client
        .remove_container(
            ctx(),
            &RemoveContainerRequest {
                container_id: id.into(),
                timeout_secs: 10,
                ..Default::default()
            },
        )
        .await
        .expect("remove container");
}

/// Creates, starts and waits for a container; returns (stdout, stderr, status).
pub async fn run(client: &AgentServiceClient, id: &str, spec: &Spec) -> (String, String, i32) {
    create(client, id, spec).await.expect("create container");
    start(client, id).await;
    let (out, err) = tokio::join!(
        read_all(client, id, "init", false),
        read_all(client, id, "init", true)
    );
    let status = wait(client, id, "init").await;
    remove(client, id).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        status,
    )
}

/// The ttrpc status code of a failed call.
pub fn code(err: &husk_protocol::ttrpc::Error) -> husk_protocol::ttrpc::Code {
    match err {
        husk_protocol::ttrpc::Error::RpcStatus(status) => status.code(),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

/// Execs `process` as `exec_id` in a running container and waits for it;
/// returns (stdout and stderr, status).
pub async fn exec_output(
    client: &AgentServiceClient,
    id: &str,
    exec_id: &str,
    process: &oci_spec::runtime::Process,
) -> (String, i32) {
    client
        .exec_process(
            ctx(),
            &ExecProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                process_json: serde_json::to_string(process).expect("json"),
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    let (out, err) = tokio::join!(
        read_all(client, id, exec_id, false),
        read_all(client, id, exec_id, true)
    );
    let status = wait(client, id, exec_id).await;
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push_str(&String::from_utf8_lossy(&err));
    (text, status)
}
