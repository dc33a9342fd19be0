//! A guest process's stdio carried between host files and the agent's
//! stream RPCs: the CLI's proxies carry their inherited fds or pty, the
//! shim carries containerd's FIFOs.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentServiceClient;
use husk_protocol::ttrpc::context;

use crate::agent_client::ctx;

/// How much output to ask the agent for at a time.
const READ_CHUNK: u32 = 64 * 1024;
/// How long output may keep flowing after the process exited (a background
/// child holding the pipe open must not keep the process's exit waiting).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Host input → the process's stdin; end of input closes it.
pub async fn pump_stdin(agent: Arc<AgentServiceClient>, id: (String, String), input: Option<File>) {
    let Some(mut input) = input else { return };
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    // Reads block; a thread of its own keeps them off the runtime. It ends
    // with the process (the proxy exits) if the input never closes.
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    forward_stdin(agent, id, rx).await;
}

/// What arrives on `input` → the process's stdin; when the sender goes,
/// the stdin is closed.
pub async fn forward_stdin(
    agent: Arc<AgentServiceClient>,
    id: (String, String),
    mut input: tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    while let Some(mut data) = input.recv().await {
        while !data.is_empty() {
            let reply = agent
                .write_stdin(
                    ctx(),
                    &WriteStreamRequest {
                        container_id: id.0.clone(),
                        exec_id: id.1.clone(),
                        data: data.clone(),
                        ..Default::default()
                    },
                )
                .await;
            match reply {
                Ok(r) if r.len > 0 => {
                    let n = (r.len as usize).min(data.len());
                    data.drain(..n);
                }
                _ => return,
            }
        }
    }
    let _ = agent
        .close_stdin(
            ctx(),
            &ProcessRequest {
                container_id: id.0.clone(),
                exec_id: id.1.clone(),
                ..Default::default()
            },
        )
        .await;
}

/// The process's stdout or stderr → the host, until end of stream.
pub async fn pump_output(
    agent: Arc<AgentServiceClient>,
    id: (String, String),
    stderr: bool,
    output: Option<File>,
) {
    let Some(output) = output else { return };
    let output = Arc::new(std::sync::Mutex::new(output));
    loop {
        let req = ReadStreamRequest {
            container_id: id.0.clone(),
            exec_id: id.1.clone(),
            len: READ_CHUNK,
            ..Default::default()
        };
        let reply = if stderr {
            agent.read_stderr(context::with_timeout(0), &req).await
        } else {
            agent.read_stdout(context::with_timeout(0), &req).await
        };
        let data = match reply {
            Ok(r) if !r.data.is_empty() => r.data,
            _ => return,
        };
        let output = output.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut out = output
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            out.write_all(&data)?;
            out.flush()
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            // Nobody reads any more; the guest process will see its pipe
            // fill up, as it would on the host.
            return;
        }
    }
}
