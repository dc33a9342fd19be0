//! The sandbox service: one VM holding any number of containers, from boot
//! to teardown. Both faces of husk drive it: the runc-style CLI's sandbox
//! process holds a sandbox with one container ([`crate::cli::process::daemon`]),
//! containerd's shim holds a pod's ([`crate::shim`]).
//!
//! [`Sandbox::boot`] wires the network namespace's links to taps, boots the
//! VM, starts the DNS relay and gives the guest its network and hostname;
//! [`Sandbox::create_container`] shares a bundle's root file system and
//! bind sources with the guest and creates the container through the
//! agent; [`Sandbox::remove_container`] undoes that for one container;
//! [`Sandbox::down`] takes all of it down again, in an order in which no
//! guest process sees its files vanish and nothing under a bind is ever
//! deleted.

pub mod boot_stages;
pub mod from_template;
pub mod mount_ns;
pub mod share;
pub mod stdio;
pub mod vm;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentServiceClient;

use crate::agent_client::{self, agent_message, ctx};
use crate::config::{Config, VmSize};
use crate::host_process::HostProcess;
use crate::hypervisor::{NicSpec, VmExit, VmSpec, FS_TAG};
use crate::network::dns::DnsRelay;
use crate::network::{self, HostNetwork};
use crate::oci::bundle::Bundle;
use crate::oci::guest_spec::{self, GUEST_SHARE};
use crate::sandbox_dir::SandboxDir;
use share::Share;
use vm::SandboxVm;

/// The agent's exec id of every container's init process.
pub const INIT_EXEC_ID: &str = "init";

/// The small multi-threaded tokio runtime the sandbox's owners (the CLI's
/// sandbox process and proxies, the shim) run on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// How long the VM gets to power off after the agent destroyed the sandbox.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a killed leftover process gets to be gone.
const LEFTOVER_GONE: Duration = Duration::from_secs(5);
/// How long the agent gets to remove a container.
const REMOVE_TIMEOUT_SECS: u32 = 5;

/// Why a sandbox or one of its containers could not be made; the message
/// names the step and the cause, for one line on stderr or to containerd.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl Error {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self(message)
    }
}

/// What a sandbox is booted with.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Its id (the CLI container's, or the pod sandbox's).
    pub id: String,
    /// The sandbox directory to create for the VM.
    pub dir: SandboxDir,
    /// vCPUs and memory.
    pub size: VmSize,
    /// The guest's hostname.
    pub hostname: String,
    /// The network namespace whose links become the guest's NICs.
    pub network: Network,
    /// Loopback nameservers the guest's DNS queries are relayed to (only
    /// reachable from the calling thread's namespace).
    pub dns_relay: Vec<IpAddr>,
}

/// Where the guest's NICs come from.
#[derive(Debug, Clone)]
pub enum Network {
    /// The links of the calling thread's network namespace (the CLI's
    /// sandbox process runs in the container's).
    Current,
    /// The links of the namespace at this path (a pod's, from CNI).
    Join(PathBuf),
    /// None: the guest has only loopback, as a container in a new, empty
    /// namespace would.
    Isolated,
}

/// Which namespaces of another container of the sandbox a new one joins.
#[derive(Debug, Clone, Default)]
pub struct Joins {
    /// The container (a pod's sandbox container).
    pub container_id: String,
    /// `ipc`, `uts`, `pid`.
    pub types: Vec<String>,
}

/// A running sandbox: the VM with its agent, each container's share binds,
/// the host side of its network and the DNS relay.
pub struct Sandbox {
    id: String,
    vm: SandboxVm,
    shares: HashMap<String, Share>,
    network: HostNetwork,
    dns: Option<DnsRelay>,
    /// How long CreateContainer may take (`guest.create_container_timeout_secs`).
    create_timeout: Duration,
}

impl Sandbox {
    /// Wires the network, boots the VM and sets the guest up (hostname,
    /// shared directory, NICs, routes, neighbours). On failure nothing of
    /// it is left.
    pub async fn boot(config: &Config, options: SandboxOptions) -> Result<Self, Error> {
        let id = options.id.clone();
        let begun = std::time::Instant::now();
        // Before any VMM or vhost-user thread starts: they read it when they start.
        husk_vmm::seccomp::set_enabled(config.vmm.seccomp);
        let host = husk_vmm::machine::HostCheck::run();
        let (backend, _) = config.hypervisor.resolve(&host);
        let kernel_args = sandbox_kernel_args(&config.guest);
        // Dropping `network` on any failure below removes the tc setup.
        let network = wire_network(options.network.clone()).await?;
        tracing::info!(
            stage = "network",
            ms = vm::stage_ms(begun),
            sandbox = %id,
            nics = network.nics().len(),
            routes = network.scan().routes.len(),
            neighbours = network.scan().neighbours.len(),
            dns_relay = options.dns_relay.len(),
            "network wired"
        );
        let spec = VmSpec {
            vcpus: options.size.vcpus,
            memory_mib: options.size.memory_mib,
            kernel: config.guest.kernel.clone(),
            initrd: config.guest.image.clone(),
            kernel_args,
            sandbox: options.dir.clone(),
            nics: network
                .nics()
                .iter()
                .map(|nic| NicSpec {
                    tap: nic.tap(),
                    config: nic.config(),
                })
                .collect(),
        };
        let timeout = Duration::from_secs(config.guest.boot_timeout_secs.into());
        let vm = from_template::boot_vm(config, backend, &host, spec, timeout)
            .await
            .map_err(|e| Error::new(e.to_string()))?;
        // The sandbox directory exists only now; the guest can ask no
        // query before CreateSandbox hands it the nameservers.
        let dns = if options.dns_relay.is_empty() {
            None
        } else {
            let socket = dns_relay_socket(vm.dir().path());
            match DnsRelay::start(&socket, options.dns_relay.clone()) {
                Ok(relay) => Some(relay),
                Err(e) => {
                    let _ = vm.shutdown(Duration::ZERO).await;
                    return Err(Error::new(format!(
                        "the DNS relay cannot listen on {}: {e}",
                        socket.display()
                    )));
                }
            }
        };
        let sandbox = Self {
            id,
            vm,
            shares: HashMap::new(),
            network,
            dns,
            create_timeout: Duration::from_secs(config.guest.create_container_timeout_secs.into()),
        };
        if let Err(e) = sandbox.set_up_guest(&options).await {
            sandbox.down().await;
            return Err(e);
        }
        Ok(sandbox)
    }

    /// The agent's client.
    pub fn agent(&self) -> &AgentServiceClient {
        self.vm.agent()
    }

    /// Resolves once the VM has ended by itself, with how.
    pub async fn ended(&mut self, poll: Duration) -> VmExit {
        self.vm.ended(poll).await
    }

    /// How the VM ended, if it has ended by itself; never waits.
    pub fn try_exit(&self) -> Option<VmExit> {
        self.vm.try_exit()
    }

    async fn set_up_guest(&self, options: &SandboxOptions) -> Result<(), Error> {
        let begun = std::time::Instant::now();
        // Before anything else, every boot alike: a guest restored from a
        // template has the template's clock and RNG state (cold boots get
        // the same two calls, so both paths stay one path).
        self.make_guest_unique().await?;
        self.configure_network().await?;
        let storage = Storage {
            driver: "virtiofs".into(),
            source: FS_TAG.into(),
            mount_point: GUEST_SHARE.into(),
            ..Default::default()
        };
        self.agent()
            .create_sandbox(
                ctx(),
                &CreateSandboxRequest {
                    hostname: options.hostname.clone(),
                    storages: vec![storage],
                    sandbox_id: self.id.clone(),
                    dns_relay: options.dns_relay.iter().map(ToString::to_string).collect(),
                    entropy: entropy()
                        .map_err(|e| Error::new(format!("reading entropy for the guest: {e}")))?,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                Error::new(format!(
                    "creating the sandbox in the guest: {}",
                    agent_message(&e)
                ))
            })?;
        tracing::info!(stage = "sandbox-created", ms = vm::stage_ms(begun), sandbox = %self.id, "sandbox created");
        Ok(())
    }

    /// Sets the guest's wall clock from the host's. CreateSandbox then
    /// brings fresh entropy (see [`entropy`]) and the hostname.
    async fn make_guest_unique(&self) -> Result<(), Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.agent()
            .set_guest_date_time(
                ctx(),
                &SetGuestDateTimeRequest {
                    sec: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
                    usec: i64::from(now.subsec_micros()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::new(format!("setting the guest's clock: {}", agent_message(&e))))?;
        Ok(())
    }

    /// Creates container `id` of `bundle` in the guest (its init process
    /// waits for StartContainer under `exec_id`), sharing its root file
    /// system and bind sources first. On failure its binds are undone.
    pub async fn create_container(
        &mut self,
        id: &str,
        exec_id: &str,
        bundle: &Bundle,
        joins: Option<&Joins>,
    ) -> Result<(), Error> {
        if self.shares.contains_key(id) {
            return Err(Error::new(format!(
                "container {id} already exists in sandbox {}",
                self.id
            )));
        }
        let begun = std::time::Instant::now();
        let guest = guest_spec::translate(&bundle.spec, id, &bundle.rootfs)
            .map_err(|e| Error::new(e.to_string()))?;
        let share = Share::mount(&self.vm.dir().shared_dir(), &guest.binds)
            .map_err(|e| Error::new(e.to_string()))?;
        let spec_json =
            serde_json::to_string(&guest.spec).map_err(|e| Error::new(e.to_string()))?;
        let joins = joins.cloned().unwrap_or_default();
        let asked = std::time::Instant::now();
        let created = self
            .agent()
            .create_container(
                agent_client::ctx_with_timeout(self.create_timeout),
                &CreateContainerRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    spec_json,
                    rootfs: guest.rootfs.clone(),
                    namespaces_of: joins.container_id,
                    join_namespaces: joins.types,
                    ..Default::default()
                },
            )
            .await;
        if let Err(e) = created {
            drop(share);
            self.remove_share_dir(id);
            let why = create_failure(agent_message(&e), asked.elapsed(), self.create_timeout);
            return Err(Error::new(format!(
                "creating the container in the guest: {why}"
            )));
        }
        self.shares.insert(id.to_owned(), share);
        // guest_ms: the CreateContainer call alone, apart from the host's
        // spec translation and share binds before it.
        tracing::info!(stage = "container-created", ms = vm::stage_ms(begun), guest_ms = vm::stage_ms(asked), sandbox = %self.id, container = id, "container created");
        Ok(())
    }

    /// Removes container `id` from the guest (killing what still runs)
    /// and unshares its files.
    pub async fn remove_container(&mut self, id: &str) {
        let removed = self
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
        if let Some(mut share) = self.shares.remove(id) {
            share.unmount();
            self.remove_share_dir(id);
        }
    }

    /// The container's directory under the share, once nothing is bound
    /// under it any more.
    fn remove_share_dir(&self, id: &str) {
        let dir = self.vm.dir().shared_dir().join(id);
        if !share::has_mounts_under(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// Gives the guest's NICs their links' names, addresses and MTUs (and,
    /// in a guest restored from a template, their MACs: each NIC is found
    /// by its placeholder MAC, by its index in the spec's order, which is
    /// the guest's), then the routes through them, then the permanent
    /// neighbours.
    async fn configure_network(&self) -> Result<(), Error> {
        let agent = self.agent();
        for (i, nic) in self.network.nics().iter().enumerate() {
            let mut interface = network::agent::interface(&nic.link);
            if self.vm.restored() {
                interface.current_mac =
                    husk_vmm::devices::net::format_mac(&network::placeholder::mac(i));
            }
            agent
                .update_interface(
                    ctx(),
                    &UpdateInterfaceRequest {
                        interface: Some(interface).into(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| {
                    Error::new(format!(
                        "configuring the guest's {}: {}",
                        nic.link.name,
                        agent_message(&e)
                    ))
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
                .map_err(|e| {
                    Error::new(format!("adding the guest's routes: {}", agent_message(&e)))
                })?;
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
                .map_err(|e| {
                    Error::new(format!(
                        "adding the guest's neighbours: {}",
                        agent_message(&e)
                    ))
                })?;
        }
        Ok(())
    }

    /// Confines the calling process (when it has a mount namespace of its
    /// own, [`mount_ns::enter`]) to the sandbox directory: called once the
    /// VM is up and the containers it will ever hold are shared.
    pub fn confine(&self) -> Result<(), Error> {
        mount_ns::confine(self.vm.dir().path()).map_err(|e| Error::new(e.to_string()))
    }

    /// Removes every container, unmounts the share, stops the VM and
    /// removes the sandbox directory, in that order.
    pub async fn down(mut self) {
        let ids: Vec<String> = self.shares.keys().cloned().collect();
        for id in ids {
            self.remove_container(&id).await;
        }
        // The binds are all under the share; the sandbox directory itself
        // is a mount of its own in a confined sandbox process (mount_ns).
        let dir = self.vm.dir().shared_dir();
        share::unmount_all_under(&dir);
        if share::has_mounts_under(&dir) {
            // Never let the directory's removal reach into a host path.
            tracing::error!(sandbox = %self.id, dir = %dir.display(), "binds still mounted; keeping the sandbox directory");
            std::mem::forget(self.vm);
            drop(self.dns);
            self.network.teardown();
            return;
        }
        if let Err(e) = self.vm.shutdown(SHUTDOWN_GRACE).await {
            tracing::warn!(sandbox = %self.id, "stopping the VM: {e}");
        }
        drop(self.dns);
        // The taps closed with the VM; the links get their frames back.
        self.network.teardown();
    }
}

/// How many random bytes each guest gets from the host at CreateSandbox.
const GUEST_ENTROPY_BYTES: usize = 64;

/// Fresh random bytes from the host's kernel (getrandom, which works in
/// any mount namespace or jail), for the guest to credit to its pool and
/// reseed from.
fn entropy() -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; GUEST_ENTROPY_BYTES];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(bytes)
}

/// Wires the namespace's links to taps (blocking netlink calls, off the
/// async threads).
async fn wire_network(network: Network) -> Result<HostNetwork, Error> {
    let wired = tokio::task::spawn_blocking(move || match network {
        Network::Current => HostNetwork::wire(),
        Network::Join(path) => HostNetwork::wire_in(&path),
        Network::Isolated => Ok(HostNetwork::none()),
    })
    .await
    .map_err(|e| Error::new(format!("wiring the container's network: {e}")))?;
    wired.map_err(|e| Error::new(format!("wiring the container's network: {e}")))
}

/// Removes a sandbox directory whose owner (a CLI sandbox process or a
/// shim) was killed: kills what still runs on it (its QEMU) and waits for
/// it to be gone (a CLI sandbox's binds live in a mount namespace that
/// QEMU keeps alive), then unmounts the binds a shim left in this
/// namespace, and never removes through a mount still in place. Returns
/// the pids of the processes it killed.
pub fn remove_leftover(dir: &Path) -> Vec<i32> {
    if !dir.exists() {
        return Vec::new();
    }
    let killed = kill_processes_using(dir);
    for &pid in &killed {
        if let Some(process) = HostProcess::of(pid) {
            process.wait_gone(LEFTOVER_GONE);
        }
    }
    share::unmount_all_under(dir);
    if share::has_mounts_under(dir) {
        tracing::error!(dir = %dir.display(), "mounts remain; not removing");
        return killed;
    }
    let _ = std::fs::remove_dir_all(dir);
    killed
}

/// Kills what a killed owner left running on this sandbox (its QEMU names
/// the sandbox directory on its command line); returns their pids.
fn kill_processes_using(dir: &Path) -> Vec<i32> {
    let mut killed = Vec::new();
    let Some(needle) = dir.to_str().map(|d| format!("{d}/")) else {
        return killed;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killed;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            if let Some(process) = HostProcess::of(pid) {
                tracing::warn!(pid, dir = %dir.display(), "killing a process left on the sandbox");
                if process.signal(libc::SIGKILL) {
                    killed.push(pid);
                }
            }
        }
    }
    killed
}

/// Where the guest's connections to the DNS relay's vsock port arrive:
/// `<sandbox>/vsock.sock_<port>`.
fn dns_relay_socket(dir: &Path) -> PathBuf {
    let mut path = crate::sandbox_dir::vsock_socket_in(dir).into_os_string();
    path.push(format!("_{}", husk_protocol::DNS_RELAY_VSOCK_PORT));
    PathBuf::from(path)
}

/// The sandbox's own words for the guest kernel's command line, after the
/// backend's: with `debug_console`, every kernel message and the agent's
/// debug log; then `kernel_params`.
fn sandbox_kernel_args(guest: &crate::config::Guest) -> Vec<String> {
    let mut args = Vec::new();
    if guest.debug_console {
        args.push("loglevel=7".to_owned());
        args.push(format!("{}=debug", husk_protocol::AGENT_LOG_ENV));
    }
    args.extend(guest.kernel_params.split_whitespace().map(str::to_owned));
    args
}

/// Why CreateContainer failed, from the agent's message and how long the
/// call waited: ttrpc words a deadline as "Request deadline elapsed", so a
/// call that reached `timeout` names the setting that gives it more time.
fn create_failure(agent_said: String, waited: Duration, timeout: Duration) -> String {
    if waited >= timeout {
        format!(
            "no answer within {} s (guest.create_container_timeout_secs)",
            timeout.as_secs()
        )
    } else {
        agent_said
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_console_asks_the_kernel_and_the_agent_for_everything_before_kernel_params() {
        let mut guest = crate::config::Guest {
            kernel_params: "a  b=1".into(),
            ..Default::default()
        };
        assert_eq!(sandbox_kernel_args(&guest), ["a", "b=1"]);
        guest.debug_console = true;
        assert_eq!(
            sandbox_kernel_args(&guest),
            ["loglevel=7", "husk_agent_log=debug", "a", "b=1"]
        );
    }

    #[test]
    fn a_create_that_reached_its_deadline_names_the_setting() {
        let timeout = Duration::from_secs(60);
        let why = create_failure(
            "ttrpc err: Request deadline elapsed".into(),
            timeout,
            timeout,
        );
        assert_eq!(
            why,
            "no answer within 60 s (guest.create_container_timeout_secs)"
        );
        let why = create_failure("no such file".into(), Duration::from_secs(1), timeout);
        assert_eq!(why, "no such file");
    }

    #[test]
    fn each_guest_gets_its_own_entropy() {
        let (a, b) = (entropy().unwrap(), entropy().unwrap());
        assert_eq!(a.len(), GUEST_ENTROPY_BYTES);
        assert!(a.len() <= 512, "within what the agent accepts");
        assert_ne!(a, b);
    }

    #[test]
    fn the_dns_relay_listens_where_the_vsock_device_sends_guest_connections_to_port_1025() {
        assert_eq!(
            dns_relay_socket(Path::new("/run/husk/sandboxes/abc")),
            Path::new("/run/husk/sandboxes/abc/vsock.sock_1025")
        );
    }
}
