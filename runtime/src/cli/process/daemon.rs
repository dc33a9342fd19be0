//! The CLI's sandbox process: boots a [`Sandbox`] holding the one
//! container, then holds it until `delete` asks it to end (SIGTERM), when
//! it takes everything down again.
//!
//! It runs in the network namespace of the container's init proxy, which
//! `create` made new (or joined), so whatever the OCI prestart and
//! createRuntime hooks set up there (Docker's libnetwork does) is in place
//! when the VM starts, and nothing they do touches the host's own
//! namespace, and the sandbox relays the guest's DNS queries to loopback
//! nameservers (Docker's 127.0.0.11) only this namespace reaches.

use std::path::Path;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use super::proxy::INIT_EXEC_ID;
use super::spawn::Reporter;
use crate::config::Config;
use crate::network;
use crate::oci::bundle::Bundle;
use crate::sandbox_dir::SandboxDir;
use crate::service::{Network, Sandbox, SandboxOptions};
use crate::store::Store;

/// How often the sandbox process checks that its VM still runs.
const VM_WATCH: Duration = Duration::from_millis(250);

/// Runs the sandbox process of container `id`; returns its exit status.
pub fn run(store: &Store, id: &str, config: &Config, mut reporter: Reporter) -> i32 {
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            reporter.error(&format!("sandbox runtime: {e}"));
            return 1;
        }
    };
    runtime.block_on(async move {
        // Registered before readiness so that a `delete` right after
        // `create` is never lost.
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                reporter.error(&format!("signal handler: {e}"));
                return 1;
            }
        };
        let mut sandbox = match up(store, id, config).await {
            Ok(sandbox) => sandbox,
            Err(message) => {
                tracing::error!(container = id, "{message}");
                reporter.error(&message);
                return 1;
            }
        };
        reporter.ok();
        tokio::select! {
            _ = term.recv() => tracing::info!(container = id, "stopping the sandbox"),
            exit = sandbox.ended(VM_WATCH) => tracing::warn!(container = id, %exit, "the VM ended by itself"),
        }
        sandbox.down().await;
        0
    })
}

/// Boots the sandbox of the CLI's container `id` (in this process's
/// network namespace, the container's) and creates the container in it.
async fn up(store: &Store, id: &str, config: &Config) -> Result<Sandbox, String> {
    tracing::info!(
        stage = "sandbox-process",
        container = id,
        "sandbox process started"
    );
    let record = store.load(id).map_err(|e| e.to_string())?;
    let bundle = Bundle::load(&record.bundle).map_err(|e| e.to_string())?;
    let resources = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref());
    let size = config.vm_size(resources).map_err(|e| e.to_string())?;
    let options = SandboxOptions {
        id: id.to_owned(),
        dir: sandbox_dir_of(&record.sandbox_dir).map_err(|e| e.to_string())?,
        size,
        hostname: bundle.spec.hostname().clone().unwrap_or_default(),
        network: Network::Current,
        dns_relay: network::resolv::relay_nameservers(&bundle),
    };
    let mut sandbox = Sandbox::boot(config, options)
        .await
        .map_err(|e| e.to_string())?;
    if let Err(e) = sandbox
        .create_container(id, INIT_EXEC_ID, &bundle, None)
        .await
    {
        sandbox.down().await;
        return Err(e.to_string());
    }
    // The container holds everything this sandbox will ever share: from
    // now on the process sees only its sandbox directory.
    if let Err(e) = sandbox.confine() {
        sandbox.down().await;
        return Err(e.to_string());
    }
    Ok(sandbox)
}

/// The [`SandboxDir`] at `path` (`<parent>/<name>`).
pub fn sandbox_dir_of(path: &Path) -> Result<SandboxDir, crate::sandbox_dir::Error> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    SandboxDir::new(path.parent().unwrap_or(Path::new("/")), name)
}
