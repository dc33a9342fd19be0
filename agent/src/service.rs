//! The ttrpc `AgentService`: decodes requests, calls the sandbox, encodes
//! replies. Every failure becomes a ttrpc status; nothing here panics on a
//! request, so one bad request never takes the agent down.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentService;
use husk_protocol::MAX_READ_CHUNK;
use ttrpc::r#async::TtrpcContext;

use crate::boot_stages::{self, Stage};
use crate::dns_relay::{self, Connector, DnsRelay, HostAddr};
use crate::error::AgentError;
use crate::guest;
use crate::init;
use crate::network;
use crate::sandbox::Sandbox;

type TtrpcResult<T> = ttrpc::Result<T>;

/// The agent's implementation of the API.
pub struct Service {
    sandbox: Arc<Sandbox>,
    /// Where CreateSandbox writes nameservers.
    resolv_conf: PathBuf,
    /// How the DNS relay reaches the host.
    dns_connector: Arc<dyn Connector>,
    /// The running DNS relay, from CreateSandbox to DestroySandbox (an
    /// async lock: stopping it waits for its sockets to close).
    dns_relay: tokio::sync::Mutex<Option<DnsRelay>>,
}

impl Service {
    /// Serves `sandbox`; DNS settings go to `resolv_conf`; the DNS relay
    /// reaches the host on vsock CID 2, port 1025.
    pub fn new(sandbox: Arc<Sandbox>, resolv_conf: PathBuf) -> Self {
        Self {
            sandbox,
            resolv_conf,
            dns_connector: Arc::new(HostAddr::default()),
            dns_relay: tokio::sync::Mutex::new(None),
        }
    }

    /// Relays DNS queries through `connector` instead (host tests).
    pub fn with_dns_connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.dns_connector = connector;
        self
    }

    /// (Re)starts the DNS relay for `addresses` (none: stops it).
    async fn start_dns_relay(&self, addresses: &[String]) -> Result<(), AgentError> {
        let addresses = dns_relay::parse_addresses(addresses)?;
        let mut relay = self.dns_relay.lock().await;
        // The old listeners must be gone before the same ports are bound.
        if let Some(old) = relay.take() {
            old.stop().await;
        }
        if !addresses.is_empty() {
            *relay = Some(DnsRelay::start(
                &addresses,
                dns_relay::DNS_PORT,
                Arc::clone(&self.dns_connector),
            )?);
        }
        Ok(())
    }
}

/// Runs a blocking network call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::Engine(format!("network task failed: {e}")))?
}

/// Which output stream of a process a read is for.
enum Stream {
    Stdout,
    Stderr,
}

impl Service {
    async fn read_stream(
        &self,
        method: &str,
        req: ReadStreamRequest,
        stream: Stream,
    ) -> TtrpcResult<ReadStreamResponse> {
        let result = async {
            let process = self.sandbox.process(&req.container_id, &req.exec_id)?;
            let max = read_len(req.len);
            match stream {
                Stream::Stdout => process.read_stdout(max).await,
                Stream::Stderr => process.read_stderr(max).await,
            }
        }
        .await;
        Ok(ReadStreamResponse {
            data: reply(method, result)?,
            ..Default::default()
        })
    }
}

fn timeout(secs: u32) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs.into()))
}

fn read_len(len: u32) -> usize {
    len.clamp(1, MAX_READ_CHUNK) as usize
}

/// Logs a failed request and turns it into a ttrpc status.
fn reply<T>(method: &str, result: Result<T, AgentError>) -> TtrpcResult<T> {
    result.map_err(|err| {
        tracing::info!(method, %err, "request failed");
        err.into()
    })
}

#[async_trait]
impl AgentService for Service {
    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> TtrpcResult<Empty> {
        let result = async {
            // First: nothing of the sandbox may draw on the template's RNG.
            guest::add_entropy(&req.entropy)?;
            if !req.hostname.is_empty() {
                guest::set_hostname(&req.hostname)?;
            }
            if !req.dns.is_empty() {
                guest::set_dns(&self.resolv_conf, &req.dns)?;
            }
            self.sandbox.mount_storages(&req.storages)?;
            self.start_dns_relay(&req.dns_relay).await
        }
        .await;
        if result.is_ok() {
            boot_stages::mark(Stage::SandboxCreated);
        }
        reply("CreateSandbox", result).map(|_| Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: DestroySandboxRequest,
    ) -> TtrpcResult<Empty> {
        if let Some(relay) = self.dns_relay.lock().await.take() {
            relay.stop().await;
        }
        self.sandbox.destroy(timeout(req.timeout_secs)).await;
        // Power off once the reply is on its way.
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            init::power_off();
        });
        Ok(Empty::new())
    }

    async fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> TtrpcResult<CheckResponse> {
        Ok(CheckResponse {
            status: "SERVING".into(),
            ..Default::default()
        })
    }

    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: GuestDetailsRequest,
    ) -> TtrpcResult<GuestDetailsResponse> {
        reply("GetGuestDetails", guest::details(init::is_init()))
    }

    async fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        req: SetGuestDateTimeRequest,
    ) -> TtrpcResult<Empty> {
        reply("SetGuestDateTime", guest::set_date_time(req.sec, req.usec)).map(|_| Empty::new())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> TtrpcResult<Empty> {
        let result = async {
            self.sandbox.mount_storages(&req.storages)?;
            self.sandbox
                .create_container(
                    &req.container_id,
                    &req.exec_id,
                    &req.spec_json,
                    &req.rootfs,
                    &crate::sandbox::Joins {
                        container_id: &req.namespaces_of,
                        types: &req.join_namespaces,
                    },
                )
                .await
        }
        .await;
        if result.is_ok() {
            boot_stages::mark(Stage::ContainerCreated);
        }
        reply("CreateContainer", result).map(|_| Empty::new())
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> TtrpcResult<Empty> {
        let result = self.sandbox.start_container(&req.container_id).await;
        if result.is_ok() {
            // start_container returns once the process exec'd.
            boot_stages::mark(Stage::ContainerStarted);
        }
        reply("StartContainer", result).map(|_| Empty::new())
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> TtrpcResult<Empty> {
        let result = self
            .sandbox
            .remove_container(&req.container_id, timeout(req.timeout_secs))
            .await;
        reply("RemoveContainer", result).map(|_| Empty::new())
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> TtrpcResult<Empty> {
        reply(
            "PauseContainer",
            self.sandbox.pause(&req.container_id).await,
        )
        .map(|_| Empty::new())
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> TtrpcResult<Empty> {
        reply(
            "ResumeContainer",
            self.sandbox.resume(&req.container_id).await,
        )
        .map(|_| Empty::new())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> TtrpcResult<Empty> {
        let result = self
            .sandbox
            .update(&req.container_id, &req.resources_json)
            .await;
        reply("UpdateContainer", result).map(|_| Empty::new())
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> TtrpcResult<StatsContainerResponse> {
        reply(
            "StatsContainer",
            self.sandbox.stats(&req.container_id).await,
        )
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> TtrpcResult<ListProcessesResponse> {
        let pids = reply("ListProcesses", self.sandbox.pids(&req.container_id).await)?;
        Ok(ListProcessesResponse {
            pids,
            ..Default::default()
        })
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> TtrpcResult<Empty> {
        let result = self
            .sandbox
            .exec_process(&req.container_id, &req.exec_id, &req.process_json)
            .await;
        reply("ExecProcess", result).map(|_| Empty::new())
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> TtrpcResult<Empty> {
        let result = self
            .sandbox
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)
            .await;
        reply("SignalProcess", result).map(|_| Empty::new())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: ProcessRequest,
    ) -> TtrpcResult<WaitProcessResponse> {
        let status = reply(
            "WaitProcess",
            self.sandbox.wait(&req.container_id, &req.exec_id).await,
        )?;
        Ok(WaitProcessResponse {
            status,
            ..Default::default()
        })
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> TtrpcResult<ReadStreamResponse> {
        self.read_stream("ReadStdout", req, Stream::Stdout).await
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> TtrpcResult<ReadStreamResponse> {
        self.read_stream("ReadStderr", req, Stream::Stderr).await
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> TtrpcResult<WriteStreamResponse> {
        let result = async {
            let process = self.sandbox.process(&req.container_id, &req.exec_id)?;
            process.write_stdin(&req.data).await
        }
        .await;
        reply("WriteStdin", result)?;
        Ok(WriteStreamResponse {
            len: req.data.len() as u32,
            ..Default::default()
        })
    }

    async fn close_stdin(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> TtrpcResult<Empty> {
        let result = async {
            let process = self.sandbox.process(&req.container_id, &req.exec_id)?;
            process.close_stdin().await
        }
        .await;
        reply("CloseStdin", result).map(|_| Empty::new())
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> TtrpcResult<Empty> {
        let result = (|| {
            let rows = u16::try_from(req.rows)
                .map_err(|_| AgentError::InvalidArgument(format!("rows {}", req.rows)))?;
            let cols = u16::try_from(req.cols)
                .map_err(|_| AgentError::InvalidArgument(format!("cols {}", req.cols)))?;
            self.sandbox
                .process(&req.container_id, &req.exec_id)?
                .resize(rows, cols)
        })();
        reply("TtyWinResize", result).map(|_| Empty::new())
    }

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> TtrpcResult<Interface> {
        let iface = req.interface.into_option().unwrap_or_default();
        reply(
            "UpdateInterface",
            blocking(move || network::update_interface(&iface)).await,
        )
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateRoutesRequest,
    ) -> TtrpcResult<Empty> {
        reply(
            "UpdateRoutes",
            blocking(move || network::update_routes(&req.routes)).await,
        )
        .map(|_| Empty::new())
    }

    async fn add_arp_neighbors(
        &self,
        _ctx: &TtrpcContext,
        req: AddArpNeighborsRequest,
    ) -> TtrpcResult<Empty> {
        reply(
            "AddArpNeighbors",
            blocking(move || network::add_neighbors(&req.neighbors)).await,
        )
        .map(|_| Empty::new())
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: GetOOMEventRequest,
    ) -> TtrpcResult<OOMEvent> {
        let container_id = reply("GetOOMEvent", self.sandbox.next_oom().await)?;
        Ok(OOMEvent {
            container_id,
            ..Default::default()
        })
    }
}
