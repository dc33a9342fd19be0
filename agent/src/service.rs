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

use crate::error::AgentError;
use crate::guest;
use crate::init;
use crate::sandbox::Sandbox;

type TtrpcResult<T> = ttrpc::Result<T>;

/// The agent's implementation of the API.
pub struct Service {
    sandbox: Arc<Sandbox>,
    /// Where CreateSandbox writes nameservers.
    resolv_conf: PathBuf,
}

impl Service {
    /// Serves `sandbox`; DNS settings go to `resolv_conf`.
    pub fn new(sandbox: Arc<Sandbox>, resolv_conf: PathBuf) -> Self {
        Self {
            sandbox,
            resolv_conf,
        }
    }
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
        let result = (|| {
            if !req.hostname.is_empty() {
                guest::set_hostname(&req.hostname)?;
            }
            if !req.dns.is_empty() {
                guest::set_dns(&self.resolv_conf, &req.dns)?;
            }
            self.sandbox.mount_storages(&req.storages)
        })();
        reply("CreateSandbox", result).map(|_| Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: DestroySandboxRequest,
    ) -> TtrpcResult<Empty> {
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
                .create_container(&req.container_id, &req.exec_id, &req.spec_json, &req.rootfs)
                .await
        }
        .await;
        reply("CreateContainer", result).map(|_| Empty::new())
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> TtrpcResult<Empty> {
        reply(
            "StartContainer",
            self.sandbox.start_container(&req.container_id).await,
        )
        .map(|_| Empty::new())
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
