//! `containerd-shim-husk-v2`: containerd's runtime v2 shim for husk, so
//! containerd (`ctr run --runtime io.containerd.husk.v2`, and Kubernetes
//! through the CRI plugin with a RuntimeClass) runs containers in husk's
//! microVMs, one VM per pod.
//!
//! It speaks task API v2 (containerd 1.6 and 1.7) through the
//! `containerd-shim` crate, which also does the shim protocol's chores:
//! `start` spawns one long-lived shim per pod (containers are grouped by
//! their pod's sandbox id, so a pod's second container finds the first's
//! socket in use and shares its shim) and prints its address; `delete`
//! cleans up after a shim that died. The long-lived shim serves
//! [`task::TaskService`] over the sandbox service ([`crate::service`]),
//! the same one the CLI's sandbox process drives.
//!
//! - [`task`]: the task service.
//! - [`process`]: a task process's phase and exit.
//! - [`stdio`]: containerd's FIFOs, files and logger binaries.
//! - [`rootfs`]: the snapshot mounts of a container's root.
//! - [`pod`]: grouping, roles and VM size from the pod's annotations.
//! - [`metrics`]: guest cgroup statistics as containerd's metrics.

pub mod metrics;
pub mod pod;
pub mod process;
pub mod rootfs;
pub mod stdio;
pub mod task;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::write_str_to_file;
use containerd_shim::{spawn, Config as ShimConfig, ExitSignal, Flags, Shim, StartOpts};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::logging::{self, LogFormat};
use crate::sandbox_dir::SandboxDir;

/// The runtime name containerd knows husk by.
pub const RUNTIME_NAME: &str = "io.containerd.husk.v2";
/// What a shim that died reports as its tasks' exit status (SIGKILL).
const DEAD_SHIM_STATUS: u32 = 128 + 9;

/// Runs the shim binary; containerd's flags are on the command line.
pub fn main() {
    let runtime = match crate::service::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_NAME}: runtime: {e}");
            std::process::exit(1);
        }
    };
    let config = ShimConfig {
        // Logs go through tracing, to containerd's log FIFO.
        no_setup_logger: true,
        // QEMU is a child the backend waits for by itself; a reaper
        // reaping every child would take its exit status.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    runtime.block_on(containerd_shim::run::<HuskShim>(RUNTIME_NAME, Some(config)));
}

/// The shim's process-level half: start, delete, and the task service.
pub struct HuskShim {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
}

/// The sandbox directory of the shim of `grouping` in `namespace`:
/// derived, so that `delete` after a killed shim finds it again.
pub fn sandbox_dir(config: &Config, namespace: &str, grouping: &str) -> Option<SandboxDir> {
    let digest = Sha256::digest(format!("{namespace}/{grouping}").as_bytes());
    let name: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    SandboxDir::new(&config.sandbox_root, &format!("pod-{name}")).ok()
}

/// The bundle's spec (the shim's working directory is the bundle).
fn bundle_spec(bundle: &Path) -> Option<oci_spec::runtime::Spec> {
    let text = std::fs::read_to_string(bundle.join("config.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The grouping of container `id` by the spec of the bundle the shim runs
/// in (its working directory): its pod's sandbox id, else its own.
fn grouping_here(id: &str) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|bundle| bundle_spec(&bundle))
        .map(|spec| pod::grouping(&spec, id))
        .unwrap_or_else(|| id.to_owned())
}

/// Sends tracing to containerd's `log` FIFO in the bundle, which containerd
/// reads into its own log; without a reader, logs are dropped.
fn init_logging(debug: bool) {
    let level = if debug {
        "debug".to_owned()
    } else {
        Config::load(None)
            .map(|c| c.log_level)
            .unwrap_or_else(|_| "warn".into())
    };
    // Opening a FIFO without a reader for writing would block: ask first.
    let has_reader = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
        .is_ok();
    let file = has_reader.then(|| PathBuf::from("log"));
    let _ = logging::init(file.as_deref(), LogFormat::Text, &level);
}

/// Removes the socket of the shim that served the bundle (its `address`
/// file names it) if nothing answers on it any more: a killed shim leaves
/// it behind, and a pod's other containers may still share a live one.
fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let Some(path) = address.trim().strip_prefix("unix://") else {
        return;
    };
    if std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

#[async_trait]
impl Shim for HuskShim {
    type T = task::TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        if !matches!(args.action.as_str(), "start" | "delete") {
            init_logging(args.debug);
        }
        Self {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = grouping_here(&opts.id);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // The shim that served this container is gone: take down what it
        // left. Its VM went with it (the builtin VMM) or is killed here
        // (QEMU names the sandbox directory on its command line).
        let bundle = std::env::current_dir().unwrap_or_default();
        let spec = bundle_spec(&bundle);
        if let (Ok(config), Some(spec)) = (Config::load(None), spec.as_ref()) {
            let grouping = pod::grouping(spec, &self.id);
            if grouping == self.id {
                if let Some(dir) = sandbox_dir(&config, &self.namespace, &grouping) {
                    let _ = crate::service::remove_leftover(dir.path());
                }
            }
        }
        rootfs::unmount_all(&bundle.join("rootfs"));
        remove_dead_socket(&bundle);
        Ok(DeleteResponse {
            pid: 0,
            exit_status: DEAD_SHIM_STATUS,
            exited_at: MessageField::some(Timestamp::now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let config = Config::load(None).map_err(|e| e.to_string());
        let grouping = grouping_here(&self.id);
        let dir = match &config {
            Ok(c) => sandbox_dir(c, &self.namespace, &grouping),
            Err(_) => None,
        };
        let dir = dir.or_else(|| {
            SandboxDir::new(Path::new(crate::config::DEFAULT_SANDBOX_ROOT), "pod").ok()
        });
        task::TaskService::new(
            &self.namespace,
            config,
            dir.expect("a fixed sandbox directory name is valid"),
            self.exit.clone(),
            publisher,
        )
    }
}
