//! The runc-compatible command line.
//!
//! Verbs, flags and output follow runc, because Docker (through
//! containerd's runc shim) calls husk exactly as it calls runc, with the
//! global flags before the verb.

mod create;
mod exec;
mod info;
mod lifecycle;
pub mod process;
mod query;
mod update;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::logging::LogFormat;
use crate::store::{Store, DEFAULT_ROOT};

/// husk: a microVM container runtime (runc-compatible).
#[derive(Debug, Parser)]
#[command(name = "husk", about, disable_version_flag = true)]
pub struct Cli {
    /// Global flags.
    #[command(flatten)]
    pub global: Global,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The flags before the verb.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Where container state is kept.
    #[arg(long, global = true, default_value = DEFAULT_ROOT, overrides_with = "root")]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true, overrides_with = "log")]
    pub log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    pub log_format: LogFormat,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for runc compatibility: cgroups are managed in the guest.
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility.
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
    /// The configuration file (else $HUSK_CONFIG, /etc/husk/configuration.toml);
    /// given twice, the last one counts (a wrapper may add its own).
    #[arg(long, global = true, overrides_with = "config")]
    pub config: Option<PathBuf>,
}

impl Global {
    /// The container store.
    pub fn store(&self) -> Store {
        Store::new(&self.root)
    }

    /// The configuration these flags name.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        Ok(Config::load(self.config.as_deref())?)
    }

    /// The flags again, for husk's own child processes, with absolute
    /// paths: the sandbox process works from `/` (service::mount_ns).
    pub fn to_args(&self) -> Vec<OsString> {
        let absolute = |p: &PathBuf| -> OsString {
            std::path::absolute(p).unwrap_or_else(|_| p.clone()).into()
        };
        let mut args: Vec<OsString> = vec!["--root".into(), absolute(&self.root)];
        if let Some(log) = &self.log {
            args.extend(["--log".into(), absolute(log)]);
        }
        let format = match self.log_format {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        };
        args.extend(["--log-format".into(), format.into()]);
        if self.debug {
            args.push("--debug".into());
        }
        if let Some(config) = &self.config {
            args.extend(["--config".into(), absolute(config)]);
        }
        args
    }
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container (its process waits for `start`).
    Create(create::CreateArgs),
    /// Start a created container's process.
    Start(IdArg),
    /// Create and start a container; wait for it unless --detach.
    Run(create::RunArgs),
    /// Print a container's OCI state.
    State(IdArg),
    /// Send a signal to a container's init (or every) process.
    Kill(lifecycle::KillArgs),
    /// Delete a container and everything it left.
    Delete(lifecycle::DeleteArgs),
    /// Run a process in a running container.
    Exec(exec::ExecArgs),
    /// List a container's processes (guest pids).
    Ps(query::PsArgs),
    /// List containers.
    #[command(alias = "ls")]
    List(query::ListArgs),
    /// Freeze a container's processes.
    Pause(IdArg),
    /// Thaw a paused container.
    Resume(IdArg),
    /// Print a container's events (OOM) or statistics.
    Events(query::EventsArgs),
    /// Change a container's resource limits.
    Update(update::UpdateArgs),
    /// Print what this runtime supports (JSON).
    Features,
    /// Write a default config.json.
    Spec(info::SpecArgs),
    /// Tell what this host can run, before anything boots.
    Check(info::CheckArgs),
    /// The sandbox process (internal).
    #[command(name = "sandbox-daemon", hide = true)]
    SandboxDaemon(IdArg),
    /// A process proxy (internal).
    #[command(hide = true)]
    Proxy(exec::ProxyCliArgs),
}

/// A container id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// The container id.
    pub id: String,
}

/// `--version` text in runc's shape (`containerd` reads the first line).
pub fn version_text() -> &'static str {
    concat!(
        "husk version ",
        env!("CARGO_PKG_VERSION"),
        "\nspec: ",
        "1.2.0"
    )
}

/// Whether `--version` or `-v` comes among the global flags (before the verb).
pub fn asks_for_version(args: &[String]) -> bool {
    const WITH_VALUE: [&str; 4] = ["--root", "--log", "--log-format", "--config"];
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--version" | "-v" => return true,
            flag if WITH_VALUE.contains(&flag) => {
                args.next();
            }
            flag if flag.starts_with('-') => {}
            _ => return false,
        }
    }
    false
}

/// Runs a parsed command line; returns the exit status.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let g = &cli.global;
    match cli.command {
        Command::Create(args) => create::create(g, args).map(|()| 0),
        Command::Run(args) => create::run(g, args),
        Command::Start(IdArg { id }) => lifecycle::start(g, &id).map(|()| 0),
        Command::State(IdArg { id }) => query::state(g, &id).map(|()| 0),
        Command::Kill(args) => lifecycle::kill(g, args).map(|()| 0),
        Command::Delete(args) => lifecycle::delete(g, args).map(|()| 0),
        Command::Exec(args) => exec::exec(g, args),
        Command::Ps(args) => query::ps(g, args).map(|()| 0),
        Command::List(args) => query::list(g, args).map(|()| 0),
        Command::Pause(IdArg { id }) => lifecycle::pause(g, &id, true).map(|()| 0),
        Command::Resume(IdArg { id }) => lifecycle::pause(g, &id, false).map(|()| 0),
        Command::Events(args) => query::events(g, args).map(|()| 0),
        Command::Update(args) => update::update(g, args).map(|()| 0),
        Command::Features => info::features().map(|()| 0),
        Command::Spec(args) => info::spec(args).map(|()| 0),
        Command::Check(args) => info::check(g, args),
        Command::SandboxDaemon(IdArg { id }) => create::sandbox_daemon(g, &id),
        Command::Proxy(args) => Ok(exec::proxy(args)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_come_before_the_verb_as_containerd_passes_them() {
        let cli = Cli::try_parse_from([
            "husk",
            "--root",
            "/r",
            "--log",
            "/l.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "c1",
        ])
        .unwrap();
        assert_eq!(cli.global.root, PathBuf::from("/r"));
        assert_eq!(cli.global.log_format, LogFormat::Json);
        let args = cli.global.to_args();
        let again = Cli::try_parse_from(
            std::iter::once(OsString::from("husk"))
                .chain(args)
                .chain(["state".into(), "c1".into()]),
        )
        .unwrap();
        assert_eq!(again.global.root, PathBuf::from("/r"));
        assert_eq!(again.global.log, Some(PathBuf::from("/l.json")));
        assert!(Cli::try_parse_from(["husk", "--log-format", "xml", "list"]).is_err());
        let twice =
            Cli::try_parse_from(["husk", "--config", "/a", "--config", "/b", "list"]).unwrap();
        assert_eq!(twice.global.config, Some(PathBuf::from("/b")));
    }
}
