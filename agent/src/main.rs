//! `husk-agent`: PID 1 of the husk guest (or a plain process for host tests).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use husk_agent::boot_stages::{self, Stage};
use husk_agent::dns_relay::HostAddr;
use husk_agent::init;
use husk_agent::listen::ListenAddr;
use husk_agent::reaper::Reaper;
use husk_agent::sandbox::Sandbox;
use husk_agent::service::Service;
use husk_protocol::agent_ttrpc::create_agent_service;

const USAGE: &str = "usage: husk-agent [--listen vsock:PORT|unix:PATH] [--state-dir DIR] [--resolv-conf PATH] [--dns-relay-host vsock:CID:PORT|unix:PATH|tcp:IP:PORT] [--ready-host vsock:CID:PORT|unix:PATH|tcp:IP:PORT|none] [--log-level LEVEL]";

struct Options {
    listen: ListenAddr,
    state_dir: PathBuf,
    resolv_conf: PathBuf,
    dns_relay_host: HostAddr,
    /// Where to say ready once listening; none outside the guest.
    ready_host: Option<HostAddr>,
    log_level: String,
}

/// The log filter unless told otherwise: info, without what libcgroups
/// says of every container at info and warn (the cgroup version, the
/// controllers it does not know). The console is a serial port, each byte
/// a VM exit.
const DEFAULT_LOG_FILTER: &str = "info,libcgroups::common=warn,libcgroups::v2::util=error";

/// The log level before any `--log-level`: as /init, the one the host set
/// on the kernel command line (`from_kernel`), if any.
fn default_log_level(from_kernel: Option<String>, as_init: bool) -> String {
    from_kernel
        .filter(|level| as_init && !level.is_empty())
        .unwrap_or_else(|| DEFAULT_LOG_FILTER.into())
}

fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        listen: ListenAddr::Vsock(husk_protocol::AGENT_VSOCK_PORT),
        state_dir: PathBuf::from("/run/husk-agent"),
        resolv_conf: PathBuf::from("/etc/resolv.conf"),
        dns_relay_host: HostAddr::default(),
        // As /init the host waits for the ready line; a host test asks.
        ready_host: init::is_init().then(husk_agent::ready::host_default),
        log_level: default_log_level(
            std::env::var(husk_protocol::AGENT_LOG_ENV).ok(),
            init::is_init(),
        ),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--listen" => options.listen = value()?.parse().map_err(anyhow::Error::msg)?,
            "--state-dir" => options.state_dir = value()?.into(),
            "--resolv-conf" => options.resolv_conf = value()?.into(),
            "--dns-relay-host" => {
                options.dns_relay_host = value()?.parse().map_err(anyhow::Error::msg)?
            }
            "--ready-host" => {
                options.ready_host = match value()?.as_str() {
                    "none" => None,
                    addr => Some(addr.parse().map_err(anyhow::Error::msg)?),
                }
            }
            "--log-level" => options.log_level = value()?,
            "--version" => {
                println!("husk-agent {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // The kernel passes unknown command-line words to init.
            other if init::is_init() => tracing::debug!(arg = other, "ignoring argument"),
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(options)
}

fn main() {
    if let Err(err) = run() {
        eprintln!("husk-agent: {err:#}");
        if init::is_init() {
            // PID 1 must not exit: the kernel would panic. Power off instead.
            init::power_off();
        }
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    boot_stages::mark(Stage::Init);
    let options = parse_args()?;
    // A copy of stderr (the console, as /init) that closes on exec: a
    // container's init is forked from this process and logs through the
    // same subscriber until it execs, by then with its stderr being the
    // container's, where the agent's lines must not go.
    let log = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(|fd| Arc::new(std::fs::File::from(fd)))
        .context("duplicating stderr for the log")?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&options.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(log)
        .init();

    if init::is_init() {
        init::setup_base_system().context("setting up the guest")?;
        // Only as PID 1: in host tests the agent shares a namespace that is
        // not its own to configure.
        if let Err(err) = husk_agent::network::loopback_up() {
            // Containers without loopback are degraded, not impossible.
            tracing::warn!(%err, "bringing lo up");
        }
        boot_stages::mark(Stage::BaseSystem);
    } else {
        // Outside a VM, orphans of our containers must still come to us.
        nix::sys::prctl::set_child_subreaper(true).context("becoming a subreaper")?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(options))
}

async fn serve(options: Options) -> anyhow::Result<()> {
    let reaper = Reaper::new();
    tokio::spawn(Arc::clone(&reaper).run());

    let sandbox = Arc::new(Sandbox::new(&options.state_dir, reaper).context("preparing state")?);
    let service: Arc<dyn husk_protocol::agent_ttrpc::AgentService + Send + Sync> = Arc::new(
        Service::new(Arc::clone(&sandbox), options.resolv_conf.clone())
            .with_dns_connector(Arc::new(options.dns_relay_host.clone())),
    );

    if let ListenAddr::Unix(path) = &options.listen {
        // A stale socket from an earlier run would make bind fail.
        let _ = std::fs::remove_file(path);
    }
    let mut server = ttrpc::r#async::Server::new()
        .bind(&options.listen.ttrpc_url())
        .with_context(|| format!("listening on {:?}", options.listen))?
        .register_service(create_agent_service(service));
    server.start().await.context("starting the ttrpc server")?;
    boot_stages::mark(Stage::Listening);
    tracing::info!(listen = ?options.listen, "husk-agent serving");
    if let Some(host) = &options.ready_host {
        match husk_agent::ready::signal(host).await {
            Ok(()) => boot_stages::mark(Stage::ReadySent),
            Err(err) => tracing::error!(%host, %err, "telling the host the agent is ready"),
        }
    }

    wait_for_termination().await;
    // Leave nothing behind: containers are killed and removed, storages unmounted.
    sandbox.destroy(None).await;
    let _ = server.shutdown().await;
    Ok(())
}

/// Serves until SIGTERM or SIGINT (host tests); as PID 1 those never come.
async fn wait_for_termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_log_filter_parses() {
        tracing_subscriber::EnvFilter::try_new(DEFAULT_LOG_FILTER).unwrap();
    }

    #[test]
    fn only_init_takes_its_log_level_from_the_kernel_line() {
        assert_eq!(default_log_level(Some("debug".into()), true), "debug");
        assert_eq!(
            default_log_level(Some("debug".into()), false),
            DEFAULT_LOG_FILTER
        );
        assert_eq!(
            default_log_level(Some(String::new()), true),
            DEFAULT_LOG_FILTER
        );
        assert_eq!(default_log_level(None, true), DEFAULT_LOG_FILTER);
    }
}
