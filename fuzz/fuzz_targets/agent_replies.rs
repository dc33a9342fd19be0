//! What the host takes from the guest's agent: the hybrid vsock handshake
//! reply (`OK <port>\n`, read by `agent_client::read_connect_reply`), then
//! ttrpc frames on the same stream, decoded by the ttrpc client into the
//! agent API's protobuf replies, and what the runtime does with them
//! (`shim::metrics`, the stdio pumps).
//!
//! A fake agent on one end of a socket pair writes the fuzzed bytes; the
//! runtime's own client code reads them on the other. Besides "no panic",
//! the handshake must stop reading right after the newline (what follows
//! belongs to ttrpc) and accept only `OK <u32>`; and every call must end
//! once the agent has closed its end.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentServiceClient;
use husk_protocol::ttrpc;
use husk_runtime::agent_client::{ctx, read_connect_reply};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// ttrpc's frame types.
const MESSAGE_TYPE_RESPONSE: u8 = 2;
const MESSAGE_TYPE_DATA: u8 = 3;
/// A call that has not ended this long after the agent closed its end hangs.
const HANG: Duration = Duration::from_secs(10);

#[derive(Arbitrary, Debug)]
enum Stream {
    /// The stream id of the client's `n % 4`th request (1, 3, 5, 7).
    Request(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum Body {
    /// A ttrpc `Response` message around `payload` (the method's reply).
    Response {
        status: Option<(i32, String)>,
        payload: Vec<u8>,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Frame {
    stream: Stream,
    /// 0: response; 1: data; anything else, raw.
    kind: u8,
    flags: u8,
    body: Body,
    /// A length field that lies.
    len: Option<u32>,
}

#[derive(Arbitrary, Debug)]
enum Call {
    Check,
    GuestDetails,
    /// `stats` as the shim turns it into containerd metrics.
    Stats,
    ListProcesses,
    WaitProcess,
    /// The stdout pump, until the agent says end of stream.
    Output,
    /// The stdin pump carrying one chunk, then closing stdin.
    Input(Vec<u8>),
    OomEvent,
    UpdateInterface,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// The handshake reply: `OK <port>\n` when `None`.
    handshake: Option<Vec<u8>>,
    frames: Vec<Frame>,
    call: Call,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fn encode(frame: &Frame) -> Vec<u8> {
    let stream_id = match frame.stream {
        Stream::Request(n) => u32::from(n % 4) * 2 + 1,
        Stream::Raw(id) => id,
    };
    let kind = match frame.kind {
        0 => MESSAGE_TYPE_RESPONSE,
        1 => MESSAGE_TYPE_DATA,
        k => k,
    };
    let body = match &frame.body {
        Body::Response { status, payload } => {
            let mut r = ttrpc::Response::new();
            if let Some((code, message)) = status {
                let mut s = ttrpc::Status::new();
                s.code = protobuf::EnumOrUnknown::from_i32(*code);
                s.message = message.clone();
                r.status = protobuf::MessageField::some(s);
            }
            r.payload = payload.clone();
            r.write_to_bytes().unwrap_or_default()
        }
        Body::Raw(raw) => raw.clone(),
    };
    let len = frame.len.unwrap_or(body.len() as u32);
    let mut out = Vec::with_capacity(10 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(kind);
    out.push(frame.flags);
    out.extend_from_slice(&body);
    out
}

/// The handshake on its own: what it accepts and how far it reads.
async fn check_handshake(reply: &[u8]) {
    let mut rest = reply;
    let result = read_connect_reply(&mut rest).await;
    let newline = reply.iter().position(|&b| b == b'\n');
    match result {
        Ok(port) => {
            let end = newline.expect("accepted without a newline");
            assert_eq!(rest, &reply[end + 1..], "read past the reply line");
            let line = &reply[..end];
            assert_eq!(line, format!("OK {port}").as_bytes(), "accepted {line:?}");
        }
        Err(_) => {
            if let Some(end) = newline {
                // Never past the newline, even when refusing the line.
                assert!(
                    rest.len() >= reply.len() - end - 1,
                    "read past the reply line"
                );
            }
        }
    }
}

async fn call(agent: AgentServiceClient, which: Call) {
    let id = ("c".to_string(), String::new());
    let container = ContainerRequest {
        container_id: id.0.clone(),
        ..Default::default()
    };
    match which {
        Call::Check => {
            let _ = agent.check(ctx(), &CheckRequest::default()).await;
        }
        Call::GuestDetails => {
            let _ = agent
                .get_guest_details(ctx(), &GuestDetailsRequest::default())
                .await;
        }
        Call::Stats => {
            if let Ok(stats) = agent.stats_container(ctx(), &container).await {
                let metrics = husk_runtime::shim::metrics::metrics(&stats);
                let _ = husk_runtime::shim::metrics::to_any(&metrics);
            }
        }
        Call::ListProcesses => {
            let _ = agent.list_processes(ctx(), &container).await;
        }
        Call::WaitProcess => {
            let _ = agent
                .wait_process(
                    ctx(),
                    &ProcessRequest {
                        container_id: id.0.clone(),
                        ..Default::default()
                    },
                )
                .await;
        }
        Call::Output => {
            let sink = std::fs::File::create("/dev/null").expect("/dev/null");
            husk_runtime::service::stdio::pump_output(Arc::new(agent), id, false, Some(sink)).await;
        }
        Call::Input(data) => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            if !data.is_empty() {
                let _ = tx.send(data).await;
            }
            drop(tx);
            husk_runtime::service::stdio::forward_stdin(Arc::new(agent), id, rx).await;
        }
        Call::OomEvent => {
            let _ = agent
                .get_oom_event(ctx(), &GetOOMEventRequest::default())
                .await;
        }
        Call::UpdateInterface => {
            let _ = agent
                .update_interface(ctx(), &UpdateInterfaceRequest::default())
                .await;
        }
    }
}

fuzz_target!(|input: Input| {
    runtime().block_on(async move {
        let handshake = input
            .handshake
            .unwrap_or_else(|| b"OK 1073741824\n".to_vec());
        check_handshake(&handshake).await;

        let (mut host, mut agent) = UnixStream::pair().expect("socket pair");
        let mut wire = handshake;
        for frame in input.frames.iter().take(16) {
            wire.extend_from_slice(&encode(frame));
        }
        // The fake agent: everything it has to say, then end of stream; it
        // keeps reading so the client's requests never block.
        let fake = tokio::spawn(async move {
            let _ = agent.write_all(&wire).await;
            let _ = agent.shutdown().await;
            let mut sink = [0u8; 4096];
            while matches!(agent.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        if read_connect_reply(&mut host).await.is_ok() {
            let client = AgentServiceClient::new(ttrpc::r#async::Client::new(host.into()));
            let done = tokio::time::timeout(HANG, call(client, input.call)).await;
            assert!(done.is_ok(), "an agent call hung after the agent closed");
        } else {
            drop(host);
        }
        let _ = fake.await;
    });
});
