//! The process proxy: the host process that stands for one container
//! process (the init or an exec) in the guest.
//!
//! Docker, through containerd's runc shim, waits on the pid `create` and
//! `exec --detach` write to `--pid-file` and takes that process's exit
//! status as the container's. So the proxy lives exactly as long as its
//! guest process: it carries the process's stdio (the fds it inherited, or
//! a pty whose master went over `--console-socket`), forwards every signal
//! it receives (SIGWINCH as a terminal resize), and exits with the guest
//! process's status.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentServiceClient;
use husk_protocol::ttrpc::context;
use tokio::signal::unix::{signal, SignalKind};

use super::host_cgroup::HostCgroup;
use super::spawn::Reporter;
use super::tty;
use crate::agent_client::{self, agent_message, ctx};
use crate::service::stdio::{pump_output, pump_stdin, DRAIN_TIMEOUT};

pub use crate::service::INIT_EXEC_ID;
/// Exit status when the sandbox went away under the process.
const LOST_STATUS: i32 = 255;

/// Signals the proxy forwards to its guest process. SIGKILL and SIGSTOP
/// cannot be caught; SIGCHLD and SIGPIPE are the proxy's own business.
pub const FORWARDED: &[libc::c_int] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGCONT,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGURG,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGSYS,
];

/// What the proxy stands for.
#[derive(Debug, Clone)]
pub struct ProxyArgs {
    /// The sandbox's hybrid vsock socket.
    pub socket: PathBuf,
    /// The container.
    pub container_id: String,
    /// The process: [`INIT_EXEC_ID`] or an exec id.
    pub exec_id: String,
    /// For an exec: the OCI process to start (JSON).
    pub exec_process: Option<String>,
    /// The process has a terminal.
    pub terminal: bool,
    /// Send the terminal's master here (else use the inherited stdio).
    pub console_socket: Option<PathBuf>,
    /// The init proxy's own host memory cgroup, where a guest OOM kill is
    /// mirrored.
    pub host_cgroup: Option<HostCgroup>,
}

/// Where the process's stdio goes on the host.
struct HostIo {
    input: File,
    output: File,
    errors: File,
    /// The terminal, if any: resized from, restored on exit.
    terminal: Option<(OwnedFd, Option<nix::sys::termios::Termios>)>,
}

/// Runs the proxy: waits for `go` (an init proxy is started before its
/// container exists), attaches, reports readiness, and returns the exit
/// status to exit with.
pub fn run(args: ProxyArgs, go: Option<OwnedFd>, mut reporter: Reporter) -> i32 {
    if let Some(go) = go {
        let mut byte = [0u8; 1];
        // End of file instead of a byte: `create` gave up.
        if !matches!(File::from(go).read(&mut byte), Ok(1)) {
            return 1;
        }
    }
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            reporter.error(&format!("proxy runtime: {e}"));
            return 1;
        }
    };
    runtime.block_on(async move {
        let (agent, io) = match attach(&args).await {
            Ok(attached) => attached,
            Err(message) => {
                reporter.error(&message);
                return 1;
            }
        };
        reporter.ok();
        let status = serve(&args, agent, &io).await;
        if let Some((fd, Some(saved))) = &io.terminal {
            tty::restore(fd.as_fd(), saved);
        }
        status
    })
}

async fn attach(args: &ProxyArgs) -> Result<(Arc<AgentServiceClient>, HostIo), String> {
    let agent = agent_client::connect_running(&args.socket)
        .await
        .map_err(|e| e.to_string())?;
    let io = host_io(args)?;
    if let Some(process_json) = &args.exec_process {
        agent
            .exec_process(
                ctx(),
                &ExecProcessRequest {
                    container_id: args.container_id.clone(),
                    exec_id: args.exec_id.clone(),
                    process_json: process_json.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("exec: {}", agent_message(&e)))?;
    }
    Ok((Arc::new(agent), io))
}

fn host_io(args: &ProxyArgs) -> Result<HostIo, String> {
    let dup = |fd: i32| -> Result<File, String> {
        nix::unistd::dup(fd)
            .map(|fd| {
                // SAFETY: dup returned a new fd that nothing else owns.
                unsafe { File::from_raw_fd(fd) }
            })
            .map_err(|e| format!("stdio: {e}"))
    };
    if let (true, Some(socket)) = (args.terminal, &args.console_socket) {
        let slave = tty::console_socket_pty(socket).map_err(|e| e.to_string())?;
        let file = File::from(slave.try_clone().map_err(|e| e.to_string())?);
        return Ok(HostIo {
            input: file.try_clone().map_err(|e| e.to_string())?,
            errors: file.try_clone().map_err(|e| e.to_string())?,
            output: file,
            terminal: Some((slave, None)),
        });
    }
    let mut io = HostIo {
        input: dup(0)?,
        output: dup(1)?,
        errors: dup(2)?,
        terminal: None,
    };
    // `husk run -t` / `exec -t` from a terminal: use it, raw.
    if args.terminal && tty::is_terminal(io.input.as_fd()) {
        let fd: OwnedFd = io.input.try_clone().map_err(|e| e.to_string())?.into();
        let saved = tty::set_raw(fd.as_fd()).ok();
        io.terminal = Some((fd, saved));
    }
    Ok(io)
}

async fn serve(args: &ProxyArgs, agent: Arc<AgentServiceClient>, io: &HostIo) -> i32 {
    let id = (args.container_id.clone(), args.exec_id.clone());
    let stdin = tokio::spawn(pump_stdin(agent.clone(), id.clone(), clone(&io.input)));
    let stdout = tokio::spawn(pump_output(
        agent.clone(),
        id.clone(),
        false,
        clone(&io.output),
    ));
    // A terminal has one output stream.
    let stderr = (!args.terminal).then(|| {
        tokio::spawn(pump_output(
            agent.clone(),
            id.clone(),
            true,
            clone(&io.errors),
        ))
    });
    let terminal = io.terminal.as_ref().and_then(|(fd, _)| fd.try_clone().ok());
    if let Some(fd) = &terminal {
        resize(&agent, &id, fd).await;
    }
    let signals = tokio::spawn(forward_signals(agent.clone(), id.clone(), terminal));

    let wait = agent
        .wait_process(
            context::with_timeout(0),
            &ProcessRequest {
                container_id: id.0.clone(),
                exec_id: id.1.clone(),
                ..Default::default()
            },
        )
        .await;
    let status = match wait {
        Ok(reply) => {
            tracing::info!(stage = "exited", container = %id.0, exec = %id.1, status = reply.status, "process exited");
            reply.status
        }
        Err(e) => {
            tracing::warn!(container = %id.0, exec = %id.1, "waiting for the process: {}", agent_message(&e));
            LOST_STATUS
        }
    };
    let drained = async {
        let _ = stdout.await;
        if let Some(stderr) = stderr {
            let _ = stderr.await;
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
    stdin.abort();
    signals.abort();
    if status == 128 + libc::SIGKILL {
        if let Some(cgroup) = &args.host_cgroup {
            if oom_killed(&agent, &id.0).await {
                let e = cgroup.die_of_oom();
                tracing::warn!(container = %id.0, "could not mirror the guest's OOM kill on the host: {e}");
            }
        }
    }
    status.clamp(0, 255)
}

/// Whether the guest's kernel OOM-killed in the container's cgroup.
async fn oom_killed(agent: &AgentServiceClient, container_id: &str) -> bool {
    let stats = agent
        .stats_container(
            ctx(),
            &ContainerRequest {
                container_id: container_id.into(),
                ..Default::default()
            },
        )
        .await;
    stats.is_ok_and(|s| s.memory.as_ref().is_some_and(|m| m.oom_kills > 0))
}

fn clone(file: &File) -> Option<File> {
    file.try_clone().ok()
}

/// Every forwarded signal → the guest process; SIGWINCH → a resize.
async fn forward_signals(
    agent: Arc<AgentServiceClient>,
    id: (String, String),
    terminal: Option<OwnedFd>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<libc::c_int>(16);
    for &signo in FORWARDED.iter().chain([libc::SIGWINCH].iter()) {
        let Ok(mut stream) = signal(SignalKind::from_raw(signo)) else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(signo).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    while let Some(signo) = rx.recv().await {
        if signo == libc::SIGWINCH {
            if let Some(fd) = &terminal {
                resize(&agent, &id, fd).await;
            }
            continue;
        }
        let sent = agent
            .signal_process(
                ctx(),
                &SignalProcessRequest {
                    container_id: id.0.clone(),
                    exec_id: id.1.clone(),
                    signal: signo as u32,
                    ..Default::default()
                },
            )
            .await;
        if let Err(e) = sent {
            tracing::debug!(signal = signo, "forwarding a signal: {}", agent_message(&e));
        }
    }
}

async fn resize(agent: &AgentServiceClient, id: &(String, String), terminal: &OwnedFd) {
    let Some((rows, cols)) = tty::window_size(terminal.as_fd()) else {
        return;
    };
    let _ = agent
        .tty_win_resize(
            ctx(),
            &TtyWinResizeRequest {
                container_id: id.0.clone(),
                exec_id: id.1.clone(),
                rows: rows.into(),
                cols: cols.into(),
                ..Default::default()
            },
        )
        .await;
}
