//! Driving containers through the agent API, as the runtime will.

use std::time::Duration;

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentServiceClient;
use husk_protocol::ttrpc::{self, context};
use oci_spec::runtime::Spec;

/// Where the agent mounts the virtio-fs share in the guest.
pub const GUEST_SHARED: &str = "/run/husk/shared";

/// A context with a timeout generous enough for TCG.
pub fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

/// The storage that mounts the sandbox share (`husk` tag) at [`GUEST_SHARED`].
pub fn shared_storage() -> Storage {
    Storage {
        driver: "virtiofs".into(),
        source: "husk".into(),
        mount_point: GUEST_SHARED.into(),
        ..Default::default()
    }
}

/// The default (runc-like) OCI spec running `args`, with a writable root:
/// all of its namespaces (cgroup included) and mounts (its `cgroup` mount is
/// cgroup v2 in the guest).
pub fn spec(args: &[&str]) -> Spec {
    let mut spec = Spec::default();
    if let Some(mut process) = spec.process().clone() {
        process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        process.set_env(Some(vec!["PATH=/bin".into(), "HOME=/root".into()]));
        spec.set_process(Some(process));
    }
    if let Some(mut root) = spec.root().clone() {
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
    }
    spec
}

/// Creates container `id` (init exec id `init`) with its root at guest path `rootfs`.
pub async fn create(
    agent: &AgentServiceClient,
    id: &str,
    spec: &Spec,
    rootfs: &str,
) -> ttrpc::Result<Empty> {
    let spec_json = serde_json::to_string(spec)
        .map_err(|e| ttrpc::Error::Others(format!("spec to JSON: {e}")))?;
    agent
        .create_container(
            ctx(),
            &CreateContainerRequest {
                container_id: id.into(),
                exec_id: "init".into(),
                spec_json,
                rootfs: rootfs.into(),
                ..Default::default()
            },
        )
        .await
}

/// Starts container `id`.
pub async fn start(agent: &AgentServiceClient, id: &str) -> ttrpc::Result<Empty> {
    agent
        .start_container(
            ctx(),
            &ContainerRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await
}

/// One `ReadStdout` of the init process (empty at end of stream).
pub async fn read_stdout(agent: &AgentServiceClient, id: &str) -> ttrpc::Result<Vec<u8>> {
    let req = ReadStreamRequest {
        container_id: id.into(),
        exec_id: "init".into(),
        len: husk_protocol::MAX_READ_CHUNK,
        ..Default::default()
    };
    Ok(agent.read_stdout(ctx(), &req).await?.data)
}

/// Reads the init process's stdout to its end.
pub async fn read_stdout_to_end(agent: &AgentServiceClient, id: &str) -> ttrpc::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let chunk = read_stdout(agent, id).await?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
    }
}

/// Waits for the init process; returns its status (128+N if killed by signal N).
pub async fn wait(agent: &AgentServiceClient, id: &str) -> ttrpc::Result<i32> {
    let req = ProcessRequest {
        container_id: id.into(),
        exec_id: "init".into(),
        ..Default::default()
    };
    Ok(agent.wait_process(ctx(), &req).await?.status)
}

/// Removes container `id`.
pub async fn remove(agent: &AgentServiceClient, id: &str) -> ttrpc::Result<Empty> {
    let req = RemoveContainerRequest {
        container_id: id.into(),
        timeout_secs: 10,
        ..Default::default()
    };
    agent.remove_container(ctx(), &req).await
}

/// Sets the container's cgroup memory limit (`memory.max` under cgroup v2).
pub fn with_memory_limit(mut spec: Spec, bytes: i64) -> Spec {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut memory = resources.memory().unwrap_or_default();
    memory.set_limit(Some(bytes));
    resources.set_memory(Some(memory));
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    spec
}

/// Sets the container's cgroup pids limit (`pids.max`).
pub fn with_pids_limit(mut spec: Spec, limit: i64) -> Spec {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut pids = resources.pids().unwrap_or_default();
    pids.set_limit(limit);
    resources.set_pids(Some(pids));
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    spec
}

/// Reads the init process's stdout until it contains `needle`; returns all read.
pub async fn read_stdout_until(
    agent: &AgentServiceClient,
    id: &str,
    needle: &str,
) -> ttrpc::Result<String> {
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        let chunk = read_stdout(agent, id).await?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The container's cgroup statistics.
pub async fn stats(
    agent: &AgentServiceClient,
    id: &str,
) -> ttrpc::Result<husk_protocol::agent::StatsContainerResponse> {
    let req = ContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    agent.stats_container(ctx(), &req).await
}
