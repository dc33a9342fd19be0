//! The sandbox process: boots the VM, shares the container's files with it,
//! creates the container through the agent, then holds all of that until
//! `delete` asks it to end (SIGTERM), when it takes everything down again.
//!
//! It runs in the network namespace of the container's init proxy, which
//! `create` made new (or joined), so whatever the OCI prestart and
//! createRuntime hooks set up there (Docker's libnetwork does) is in place
//! when the VM starts, and nothing they do touches the host's own
//! namespace. Before the VM boots it wires each of that namespace's links
//! to a tap for a guest NIC ([`crate::network`]); once the agent answers it
//! gives the guest the links' addresses, routes and neighbours, and relays
//! the guest's queries to loopback nameservers (Docker's 127.0.0.11).

use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentServiceClient;
use tokio::signal::unix::{signal, SignalKind};

use super::proxy::INIT_EXEC_ID;
use super::share::{self, Share};
use super::spawn::Reporter;
use crate::agent_client::{agent_message, ctx};
use crate::config::Config;
use crate::hypervisor::FS_TAG;
use crate::hypervisor::{self, NicSpec, VmSpec};
use crate::network::dns::DnsRelay;
use crate::network::{self, HostNetwork};
use crate::oci::bundle::Bundle;
use crate::oci::guest_spec::{self, GUEST_SHARE};
use crate::sandbox_dir::SandboxDir;
use crate::sandbox_vm::SandboxVm;
use crate::store::Store;

/// How long the VM gets to power off after the agent destroyed the sandbox.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the sandbox process checks that its VM still runs.
const VM_WATCH: Duration = Duration::from_millis(250);
/// How long the agent gets to remove the container on shutdown.
const REMOVE_TIMEOUT_SECS: u32 = 5;

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
        let mut sandbox = match Sandbox::up(store, id, config).await {
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
            exit = sandbox.vm.ended(VM_WATCH) => tracing::warn!(container = id, %exit, "the VM ended by itself"),
        }
        sandbox.down(id).await;
        0
    })
}

/// A running sandbox: the VM with its agent, the share's binds, the host
/// side of its network and the DNS relay.
struct Sandbox {
    vm: SandboxVm,
    share: Share,
    network: HostNetwork,
    /// Loopback nameservers the guest's queries are relayed to.
    dns_relay: Vec<std::net::IpAddr>,
    dns: Option<DnsRelay>,
}

impl Sandbox {
    async fn up(store: &Store, id: &str, config: &Config) -> Result<Self, String> {
        tracing::info!(
            stage = "sandbox-process",
            container = id,
            "sandbox process started"
        );
        let record = store.load(id).map_err(|e| e.to_string())?;
        let bundle = Bundle::load(&record.bundle).map_err(|e| e.to_string())?;
        let guest =
            guest_spec::translate(&bundle.spec, id, &bundle.rootfs).map_err(|e| e.to_string())?;
        let resources = bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref());
        let size = config.vm_size(resources).map_err(|e| e.to_string())?;
        let dir = sandbox_dir_of(&record.sandbox_dir).map_err(|e| e.to_string())?;
        let host = husk_vmm::machine::HostCheck::run();
        let (backend, _) = config.hypervisor.resolve(&host);
        let mut kernel_args = Vec::new();
        if config.guest.debug_console {
            kernel_args.push("loglevel=7".to_owned());
        }
        kernel_args.extend(
            config
                .guest
                .kernel_params
                .split_whitespace()
                .map(str::to_owned),
        );
        // Dropping `network` on any failure below removes the tc setup.
        let network = wire_network().await?;
        let dns_relay = network::resolv::relay_nameservers(&bundle);
        tracing::info!(
            stage = "network",
            container = id,
            nics = network.nics().len(),
            routes = network.scan().routes.len(),
            neighbours = network.scan().neighbours.len(),
            dns_relay = dns_relay.len(),
            "network wired"
        );
        let spec = VmSpec {
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            kernel: config.guest.kernel.clone(),
            initrd: config.guest.image.clone(),
            kernel_args,
            sandbox: dir,
            nics: network
                .nics()
                .iter()
                .map(|nic| NicSpec {
                    tap: nic.tap(),
                    config: nic.config(),
                })
                .collect(),
        };
        let hv = hypervisor::new_hypervisor(backend, &config.qemu, &host);
        let timeout = Duration::from_secs(config.guest.boot_timeout_secs.into());
        let vm = SandboxVm::boot(hv, spec, timeout)
            .await
            .map_err(|e| e.to_string())?;
        // The sandbox directory exists only now; the guest can ask no
        // query before CreateSandbox hands it the nameservers.
        let dns = if dns_relay.is_empty() {
            None
        } else {
            let socket = dns_relay_socket(vm.dir().path());
            match DnsRelay::start(&socket, dns_relay.clone()) {
                Ok(relay) => Some(relay),
                Err(e) => {
                    let _ = vm.shutdown(Duration::ZERO).await;
                    return Err(format!(
                        "the DNS relay cannot listen on {}: {e}",
                        socket.display()
                    ));
                }
            }
        };
        let share = match Share::mount(&vm.dir().shared_dir(), &guest.binds) {
            Ok(share) => share,
            Err(e) => {
                let _ = vm.shutdown(Duration::ZERO).await;
                return Err(e.to_string());
            }
        };
        let sandbox = Self {
            vm,
            share,
            network,
            dns_relay,
            dns,
        };
        if let Err(message) = sandbox.create_container(id, &bundle, &guest).await {
            sandbox.down(id).await;
            return Err(message);
        }
        tracing::info!(
            stage = "container-created",
            container = id,
            "container created"
        );
        Ok(sandbox)
    }

    async fn create_container(
        &self,
        id: &str,
        bundle: &Bundle,
        guest: &guest_spec::GuestSpec,
    ) -> Result<(), String> {
        let agent: &AgentServiceClient = self.vm.agent();
        self.configure_network().await?;
        let storage = Storage {
            driver: "virtiofs".into(),
            source: FS_TAG.into(),
            mount_point: GUEST_SHARE.into(),
            ..Default::default()
        };
        agent
            .create_sandbox(
                ctx(),
                &CreateSandboxRequest {
                    hostname: bundle.spec.hostname().clone().unwrap_or_default(),
                    storages: vec![storage],
                    sandbox_id: id.into(),
                    dns_relay: self.dns_relay.iter().map(ToString::to_string).collect(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("creating the sandbox in the guest: {}", agent_message(&e)))?;
        let spec_json = serde_json::to_string(&guest.spec).map_err(|e| e.to_string())?;
        agent
            .create_container(
                ctx(),
                &CreateContainerRequest {
                    container_id: id.into(),
                    exec_id: INIT_EXEC_ID.into(),
                    spec_json,
                    rootfs: guest.rootfs.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("creating the container in the guest: {}", agent_message(&e)))?;
        Ok(())
    }

    /// Gives the guest's NICs their links' names, addresses and MTUs, then
    /// the routes through them, then the permanent neighbours.
    async fn configure_network(&self) -> Result<(), String> {
        let agent: &AgentServiceClient = self.vm.agent();
        for nic in self.network.nics() {
            agent
                .update_interface(
                    ctx(),
                    &UpdateInterfaceRequest {
                        interface: Some(network::agent::interface(&nic.link)).into(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| {
                    format!(
                        "configuring the guest's {}: {}",
                        nic.link.name,
                        agent_message(&e)
                    )
                })?;
        }
        let scan = self.network.scan();
        if !scan.routes.is_empty() {
            agent
                .update_routes(
                    ctx(),
                    &UpdateRoutesRequest {
                        routes: scan.routes.iter().map(network::agent::route).collect(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| format!("adding the guest's routes: {}", agent_message(&e)))?;
        }
        if !scan.neighbours.is_empty() {
            agent
                .add_arp_neighbors(
                    ctx(),
                    &AddArpNeighborsRequest {
                        neighbors: scan
                            .neighbours
                            .iter()
                            .map(network::agent::neighbor)
                            .collect(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| format!("adding the guest's neighbours: {}", agent_message(&e)))?;
        }
        Ok(())
    }

    /// Removes the container, unmounts the share, stops the VM and removes
    /// the sandbox directory — in that order, so that no process in the
    /// guest sees its files vanish and nothing under a bind is ever deleted.
    async fn down(mut self, id: &str) {
        let removed = self
            .vm
            .agent()
            .remove_container(
                ctx(),
                &RemoveContainerRequest {
                    container_id: id.into(),
                    timeout_secs: REMOVE_TIMEOUT_SECS,
                    ..Default::default()
                },
            )
            .await;
        if let Err(e) = removed {
            tracing::debug!(
                container = id,
                "removing the container: {}",
                agent_message(&e)
            );
        }
        self.share.unmount();
        let dir = self.vm.dir().path().to_owned();
        share::unmount_all_under(&dir);
        if share::has_mounts_under(&dir) {
            // Never let the directory's removal reach into a host path.
            tracing::error!(container = id, dir = %dir.display(), "binds still mounted; keeping the sandbox directory");
            std::mem::forget(self.vm);
            drop(self.dns);
            self.network.teardown();
            return;
        }
        if let Err(e) = self.vm.shutdown(SHUTDOWN_GRACE).await {
            tracing::warn!(container = id, "stopping the VM: {e}");
        }
        drop(self.dns);
        // The taps closed with the VM; the links get their frames back.
        self.network.teardown();
    }
}

/// Wires the namespace's links to taps (blocking netlink calls, off the
/// async threads: every thread of this process is in the namespace).
async fn wire_network() -> Result<HostNetwork, String> {
    tokio::task::spawn_blocking(HostNetwork::wire)
        .await
        .map_err(|e| format!("wiring the container's network: {e}"))?
        .map_err(|e| format!("wiring the container's network: {e}"))
}

/// Where the guest's connections to the DNS relay's vsock port arrive:
/// `<sandbox>/vsock.sock_<port>`.
fn dns_relay_socket(dir: &Path) -> PathBuf {
    let mut path = crate::sandbox_dir::vsock_socket_in(dir).into_os_string();
    path.push(format!("_{}", husk_protocol::DNS_RELAY_VSOCK_PORT));
    PathBuf::from(path)
}

/// The [`SandboxDir`] at `path` (`<parent>/<name>`).
pub fn sandbox_dir_of(path: &Path) -> Result<SandboxDir, crate::sandbox_dir::Error> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    SandboxDir::new(path.parent().unwrap_or(Path::new("/")), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_relay_listens_where_the_vsock_device_sends_guest_connections_to_port_1025() {
        assert_eq!(
            dns_relay_socket(Path::new("/run/husk/sandboxes/abc")),
            Path::new("/run/husk/sandboxes/abc/vsock.sock_1025")
        );
    }
}
