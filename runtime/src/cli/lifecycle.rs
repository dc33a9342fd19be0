//! `start`, `kill`, `delete`, `pause` and `resume`.

use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;
use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentServiceClient;

use super::create::{remove_sandbox_dir, SANDBOX_STOP_TIMEOUT};
use super::Global;
use crate::agent_client;
use crate::agent_client::{agent_message, ctx};
use crate::cli::process::host_cgroup::HostCgroup;
use crate::oci::hooks;
use crate::oci::state::Status;
use crate::service::vm::stage_ms;
use crate::service::{boot_stages, INIT_EXEC_ID};
use crate::store::Record;

/// `kill`'s flags.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal every process of the container.
    #[arg(short, long)]
    pub all: bool,
    /// The container id.
    pub id: String,
    /// The signal, by name (TERM, SIGTERM) or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

/// `delete`'s flags.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kill a running container first.
    #[arg(short, long)]
    pub force: bool,
    /// The container id.
    pub id: String,
}

/// Runs `f` to completion on a small runtime.
pub fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(f))
}

/// Connects to the agent of `record`'s sandbox.
pub async fn connect(record: &Record) -> anyhow::Result<AgentServiceClient> {
    agent_client::connect_running(&record.agent_socket())
        .await
        .map_err(|e| anyhow!("container {}: sandbox not reachable: {e}", record.id))
}

/// The record of `id` with its status checked against `allowed`.
fn load_in(g: &Global, id: &str, allowed: &[Status], verb: &str) -> anyhow::Result<Record> {
    let record = g.store().load(id)?;
    let status = record.current_status();
    if !allowed.contains(&status) {
        bail!("cannot {verb} container {id}: it is {status}");
    }
    Ok(record)
}

/// `husk start`.
pub fn start(g: &Global, id: &str) -> anyhow::Result<()> {
    let mut record = load_in(g, id, &[Status::Created], "start")?;
    block_on(async {
        let begun = std::time::Instant::now();
        let agent = connect(&record).await?;
        agent
            .start_container(
                ctx(),
                &ContainerRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow!("starting container {id}: {}", agent_message(&e)))?;
        tracing::info!(
            stage = "started",
            ms = stage_ms(begun),
            container = id,
            "container started"
        );
        // The guest's own stages are complete now; one more call, made
        // only when someone reads info logs.
        if tracing::enabled!(tracing::Level::INFO) {
            boot_stages::log(&agent, id).await;
        }
        anyhow::Ok(())
    })??;
    record.status = Status::Running;
    g.store().save(&record)?;
    // The spec names "running" for poststart, even when a short-lived
    // process has already exited by now and `state` would say stopped.
    let mut state = record.state();
    state.status = Status::Running;
    if let Some(init) = record.init {
        state.pid = init.pid;
    }
    hooks::run_logged(
        "poststart",
        record.hooks.as_ref().and_then(|h| h.poststart().as_ref()),
        &state,
    );
    Ok(())
}

/// `husk kill`.
pub fn kill(g: &Global, args: KillArgs) -> anyhow::Result<()> {
    let signal = parse_signal(&args.signal)?;
    let record = g.store().load(&args.id)?;
    // runc's words ("container not running"), which callers such as
    // containerd's shim look for, whatever else the status is.
    let status = record.current_status();
    if !matches!(status, Status::Created | Status::Running | Status::Paused) {
        bail!(
            "cannot kill container {}: container not running (it is {status})",
            args.id
        );
    }
    block_on(signal_init(&record, signal, args.all))?
}

/// Sends `signal` to the container's init process (`all`: to every process
/// of the container) through the agent.
async fn signal_init(record: &Record, signal: u32, all: bool) -> anyhow::Result<()> {
    let agent = connect(record).await?;
    agent
        .signal_process(
            ctx(),
            &SignalProcessRequest {
                container_id: record.id.clone(),
                exec_id: INIT_EXEC_ID.into(),
                signal,
                all,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow!("signalling container {}: {}", record.id, agent_message(&e)))?;
    Ok(())
}

/// `husk pause` (`pause`) and `husk resume` (`!pause`).
pub fn pause(g: &Global, id: &str, pause: bool) -> anyhow::Result<()> {
    let (from, to, verb) = if pause {
        (Status::Running, Status::Paused, "pause")
    } else {
        (Status::Paused, Status::Running, "resume")
    };
    let mut record = load_in(g, id, &[from], verb)?;
    block_on(async {
        let agent = connect(&record).await?;
        let req = ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let reply = if pause {
            agent.pause_container(ctx(), &req).await
        } else {
            agent.resume_container(ctx(), &req).await
        };
        reply.map_err(|e| anyhow!("{verb} container {id}: {}", agent_message(&e)))
    })??;
    record.status = to;
    g.store().save(&record)?;
    Ok(())
}

/// `husk delete`.
pub fn delete(g: &Global, args: DeleteArgs) -> anyhow::Result<()> {
    delete_container(g, &args.id, args.force)
}

/// Deletes container `id`: kills it (if `force`, or if it never started),
/// ends its sandbox process (which takes the VM and the share down), runs
/// the poststop hooks and removes every trace.
pub fn delete_container(g: &Global, id: &str, force: bool) -> anyhow::Result<()> {
    let store = g.store();
    let record = match store.load(id) {
        Ok(record) => record,
        // `create` died before recording anything: only its directory is left.
        Err(crate::store::Error::Io { .. }) if force => {
            store.remove(id)?;
            tracing::warn!(
                container = id,
                "delete --force: create had died before recording anything; removed its state"
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let status = record.current_status();
    if matches!(status, Status::Running | Status::Paused) && !force {
        bail!("cannot delete container {id}: it is {status} (stop it first, or use --force)");
    }
    let mut crash = crash_signs(&record);
    if status != Status::Stopped {
        if let Some(init) = record.init {
            // The proxy ends when the guest process does; SIGKILL cannot
            // be forwarded, so end the guest process through the agent.
            let killed = block_on(signal_init(&record, libc::SIGKILL as u32, true));
            if let Err(e) = killed.and_then(|r| r) {
                tracing::debug!(container = id, "killing through the agent: {e}");
            }
            init.wait_gone(Duration::from_secs(5));
            init.signal(libc::SIGKILL);
        }
    }
    if let Some(sandbox) = record.sandbox {
        sandbox.signal(libc::SIGTERM);
        if !sandbox.wait_gone(SANDBOX_STOP_TIMEOUT) {
            tracing::warn!(
                container = id,
                "the sandbox process did not stop; killing it"
            );
            sandbox.signal(libc::SIGKILL);
            sandbox.wait_gone(Duration::from_secs(5));
        }
    }
    let killed = remove_sandbox_dir(&record.sandbox_dir);
    if !killed.is_empty() {
        crash.push(format!(
            "killed processes left on its sandbox (pids {killed:?})"
        ));
    }
    if !crash.is_empty() {
        // What a crash left, and that it is gone: runc's delete is silent,
        // but a caller cleaning up after a crash needs to know what it was.
        tracing::warn!(
            container = id,
            "delete: cleaned up after a crash: {}",
            crash.join("; ")
        );
    }
    if let Some(cgroup) = HostCgroup::for_container(id) {
        cgroup.remove();
    }
    let mut state = record.state();
    state.status = Status::Stopped;
    hooks::run_logged(
        "poststop",
        record.hooks.as_ref().and_then(|h| h.poststop().as_ref()),
        &state,
    );
    store.remove(id)?;
    Ok(())
}

/// What in `record` shows that one of the container's host processes, or
/// its `create`, died before its time.
fn crash_signs(record: &Record) -> Vec<String> {
    let mut signs = Vec::new();
    if record.status == Status::Creating {
        signs.push("its create never finished".to_owned());
    }
    match &record.sandbox {
        Some(sandbox) if !sandbox.is_alive() => {
            signs.push(format!(
                "its sandbox process (pid {}) was gone",
                sandbox.pid
            ));
        }
        None => signs.push("no sandbox process was recorded".to_owned()),
        Some(_) => {}
    }
    signs
}

/// A signal by number, name or SIG-name (case-insensitive).
pub fn parse_signal(text: &str) -> anyhow::Result<u32> {
    use std::str::FromStr;
    if let Ok(n) = text.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("invalid signal {text:?}");
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map(|s| s as u32)
        .map_err(|_| anyhow!("invalid signal {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_number_and_sig_name() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("usr1").unwrap(), 10);
        for bad in ["0", "65", "SIGNOPE", "", "-1"] {
            assert!(
                parse_signal(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("invalid signal"),
                "{bad}"
            );
        }
    }
}
