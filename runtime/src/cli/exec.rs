//! `exec`, and the hidden `proxy` verb that stands for a guest process.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use oci_spec::runtime::{Process, Spec};

use super::create::{proxy_command, random_name, refuse_preserved_fds, write_pid_file};
use super::Global;
use crate::cli::process::host_cgroup::HostCgroup;
use crate::cli::process::proxy::{self, ProxyArgs};
use crate::cli::process::spawn::{spawn_self, take_fd, Options, Reporter, GO_FD_ENV};
use crate::oci::state::Status;

/// `exec`'s flags (runc's).
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A Unix socket to send the pty master to.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Environment variables (KEY=VALUE) to add.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// User as uid[:gid].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional group ids.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// The process as an OCI process JSON file (`-` for stdin).
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Return once the process started.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the process's host pid here.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility (labels apply in the guest).
    #[arg(long = "process-label")]
    pub process_label: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Set no_new_privileges.
    #[arg(long = "no-new-privs")]
    pub no_new_privs: bool,
    /// Add a capability.
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Extra fds: none can cross into a VM.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Exec even if the container is paused.
    #[arg(long = "ignore-paused")]
    pub ignore_paused: bool,
    /// The container id.
    pub id: String,
    /// The command and its arguments (without --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The hidden `proxy` verb's flags.
#[derive(Debug, Args)]
pub struct ProxyCliArgs {
    /// The sandbox's hybrid vsock socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// The process's exec id.
    #[arg(long = "exec-id")]
    pub exec_id: String,
    /// The process has a terminal.
    #[arg(long)]
    pub tty: bool,
    /// Send the pty master here.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// For an exec: the OCI process JSON (read, then removed).
    #[arg(long = "process-file")]
    pub process_file: Option<PathBuf>,
    /// The proxy's host memory cgroup (an init proxy's), where a guest OOM
    /// kill is mirrored.
    #[arg(long = "host-cgroup")]
    pub host_cgroup: bool,
    /// The container id.
    pub id: String,
}

/// `husk proxy`: returns the guest process's exit status.
pub fn proxy(args: ProxyCliArgs) -> i32 {
    let mut reporter = Reporter::from_env();
    let go = take_fd(GO_FD_ENV);
    let exec_process = match &args.process_file {
        Some(path) => {
            let text = std::fs::read_to_string(path);
            let _ = std::fs::remove_file(path);
            match text {
                Ok(text) => Some(text),
                Err(e) => {
                    reporter.error(&format!("{}: {e}", path.display()));
                    return 1;
                }
            }
        }
        None => None,
    };
    let host_cgroup = args
        .host_cgroup
        .then(|| HostCgroup::for_container(&args.id))
        .flatten();
    proxy::run(
        ProxyArgs {
            socket: args.socket,
            container_id: args.id,
            exec_id: args.exec_id,
            exec_process,
            host_cgroup,
            terminal: args.tty,
            console_socket: args.console_socket,
        },
        go,
        reporter,
    )
}

/// `husk exec`: returns the process's exit status (0 when detached).
pub fn exec(g: &Global, args: ExecArgs) -> anyhow::Result<i32> {
    refuse_preserved_fds(args.preserve_fds)?;
    let store = g.store();
    let record = store.load(&args.id)?;
    let status = record.current_status();
    let runnable = status == Status::Running || (status == Status::Paused && args.ignore_paused);
    if !runnable {
        bail!("cannot exec in container {}: it is {status}", args.id);
    }
    let process = build_process(&record.bundle, &args)?;
    let terminal = process.terminal().unwrap_or(false);
    if terminal && args.detach && args.console_socket.is_none() {
        bail!("exec --detach --tty needs --console-socket");
    }
    let process_json = serde_json::to_string(&process)?;
    let exec_id = format!("exec-{}", random_name());

    if !args.detach {
        if let Some(path) = &args.pid_file {
            write_pid_file(path, std::process::id() as i32)?;
        }
        return Ok(proxy::run(
            ProxyArgs {
                socket: record.agent_socket(),
                container_id: args.id.clone(),
                exec_id,
                exec_process: Some(process_json),
                terminal,
                console_socket: args.console_socket.clone(),
                host_cgroup: None,
            },
            None,
            Reporter::none(),
        ));
    }

    let process_file = store.dir(&args.id)?.join(format!("{exec_id}.json"));
    std::fs::write(&process_file, &process_json)
        .with_context(|| format!("{}", process_file.display()))?;
    let mut proxy_args: Vec<OsString> = g.to_args();
    proxy_args.extend(proxy_command(
        &record.sandbox_dir,
        &args.id,
        &exec_id,
        terminal,
        args.console_socket.as_deref(),
        Some(&process_file),
    ));
    let (mut child, ready) = spawn_self(
        &proxy_args,
        Options {
            setsid: true,
            stdio: terminal.then(|| [Stdio::null(), Stdio::null(), Stdio::null()]),
            ..Options::default()
        },
    )
    .context("starting the exec proxy")?;
    if let Err(e) = ready.wait() {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&process_file);
        bail!("exec in container {}: {e}", args.id);
    }
    if let Some(path) = &args.pid_file {
        write_pid_file(path, child.id() as i32)?;
    }
    // The proxy lives on as the process's pid; its new parent reaps it.
    std::mem::forget(child);
    Ok(0)
}

/// The process to run: `--process`, or the container's own process with
/// the command line and the flags' changes.
fn build_process(bundle: &std::path::Path, args: &ExecArgs) -> anyhow::Result<Process> {
    if let Some(path) = &args.process {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(path)
                .with_context(|| format!("process file {}", path.display()))?
        };
        let process: Process = serde_json::from_str(&text)
            .map_err(|e| anyhow!("process file {}: {e}", path.display()))?;
        if process.args().as_ref().map_or(true, |a| a.is_empty()) {
            bail!("process file {}: no args", path.display());
        }
        return Ok(process);
    }
    if args.command.is_empty() {
        bail!("exec needs a command (or --process)");
    }
    let spec_path = bundle.join("config.json");
    let spec = Spec::load(&spec_path).map_err(|e| anyhow!("{}: {e}", spec_path.display()))?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(args.tty));
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.into());
    }
    if !args.env.is_empty() {
        let mut env = process.env().clone().unwrap_or_default();
        env.extend(args.env.iter().cloned());
        process.set_env(Some(env));
    }
    if let Some(user) = &args.user {
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user.as_str(), None),
        };
        let mut u = process.user().clone();
        u.set_uid(
            uid.parse()
                .map_err(|_| anyhow!("invalid --user {user:?} (want uid[:gid])"))?,
        );
        if let Some(g) = gid {
            u.set_gid(
                g.parse()
                    .map_err(|_| anyhow!("invalid --user {user:?} (want uid[:gid])"))?,
            );
        }
        if !args.additional_gids.is_empty() {
            u.set_additional_gids(Some(args.additional_gids.clone()));
        }
        process.set_user(u);
    }
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    if !args.cap.is_empty() {
        let mut caps = process.capabilities().clone().unwrap_or_default();
        for name in &args.cap {
            let cap: oci_spec::runtime::Capability = name
                .parse()
                .map_err(|_| anyhow!("invalid capability {name:?}"))?;
            let add = |set: Option<oci_spec::runtime::Capabilities>| {
                let mut set = set.unwrap_or_default();
                set.insert(cap);
                Some(set)
            };
            caps.set_bounding(add(caps.bounding().clone()));
            caps.set_effective(add(caps.effective().clone()));
            caps.set_permitted(add(caps.permitted().clone()));
        }
        process.set_capabilities(Some(caps));
    }
    Ok(process)
}
