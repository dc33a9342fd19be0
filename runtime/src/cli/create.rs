//! `create` and `run`, and the sandbox process they start.
//!
//! `create` starts the container's init proxy first (in a new network
//! namespace, or the one the spec names by path: its pid is the container's
//! pid for the hooks), runs the
//! prestart and createRuntime hooks, then starts the sandbox process in
//! that namespace, which boots the VM and creates the container. Once both
//! report ready, it records the container as created and writes the proxy's
//! pid to `--pid-file`. Any failure takes down what was started and removes
//! the container's directory.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use nix::fcntl::OFlag;

use super::Global;
use crate::cli::process::daemon;
use crate::cli::process::host_cgroup::HostCgroup;
use crate::cli::process::proxy::{FORWARDED, INIT_EXEC_ID};
use crate::cli::process::spawn::{spawn_self, Options, Reporter};
use crate::config::Config;
use crate::host_process::HostProcess;
use crate::oci::bundle::Bundle;
use crate::oci::hooks;
use crate::oci::netns::NetworkNamespace;
use crate::oci::state::Status;
use crate::store::{Record, Store};

/// How long `delete` waits for the sandbox process to take the VM down.
pub const SANDBOX_STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// `create`'s flags.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The bundle directory.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// A Unix socket to send the pty master to (for terminal: true).
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Write the init process's host pid here.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility (the guest never pivots from an initramfs).
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    /// Extra fds to pass to the container: none can cross into a VM.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    /// The container id.
    pub id: String,
}

/// `run`'s flags: `create`'s plus `--detach`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Return once started instead of waiting for the container.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the container after it exits (no delete).
    #[arg(long)]
    pub keep: bool,
    /// `create`'s flags.
    #[command(flatten)]
    pub create: CreateArgs,
}

/// `husk create`.
pub fn create(g: &Global, args: CreateArgs) -> anyhow::Result<()> {
    let created = Created::new(g, &args)?;
    let proxy = created.finish(args.pid_file.as_deref())?;
    // The proxy lives on without us as the container's pid: its new parent
    // (a subreaper such as containerd's shim) reaps it.
    std::mem::forget(proxy);
    Ok(())
}

/// `husk run`: create, start, and (unless detached) wait and delete;
/// returns the container's exit status.
pub fn run(g: &Global, args: RunArgs) -> anyhow::Result<i32> {
    let id = args.create.id.clone();
    let created = Created::new(g, &args.create)?;
    let mut proxy = created.finish(args.create.pid_file.as_deref())?;
    if let Err(e) = super::lifecycle::start(g, &id) {
        let _ = super::lifecycle::delete_container(g, &id, true);
        return Err(e);
    }
    if args.detach {
        return Ok(0);
    }
    // The proxy is our child here: forward what the terminal sends us.
    let status = wait_forwarding(&mut proxy);
    drop(proxy);
    if !args.keep {
        super::lifecycle::delete_container(g, &id, true)?;
    }
    Ok(status)
}

/// The sandbox process (`husk sandbox-daemon <id>`).
pub fn sandbox_daemon(g: &Global, id: &str) -> anyhow::Result<i32> {
    let mut reporter = Reporter::from_env();
    // First, while this process has one thread (docs/security.md).
    if let Err(e) = super::process::jail::restrict() {
        reporter.error(&format!("sandbox process: {e}"));
        return Ok(1);
    }
    // Also while it has one thread; QEMU, its child, inherits the namespace.
    if let Err(e) = crate::service::mount_ns::enter() {
        reporter.error(&format!("sandbox process: {e}"));
        return Ok(1);
    }
    let config = g.load_config()?;
    Ok(daemon::run(&g.store(), id, &config, reporter))
}

/// A container being created: what must be undone if creation fails.
struct Created {
    store: Store,
    record: Record,
    proxy: Option<Child>,
    daemon: Option<Child>,
    committed: bool,
}

impl Created {
    fn new(g: &Global, args: &CreateArgs) -> anyhow::Result<Self> {
        let begun = std::time::Instant::now();
        tracing::info!(stage = "cli", container = %args.id, "create");
        crate::store::check_id(&args.id)?;
        refuse_preserved_fds(args.preserve_fds)?;
        let config = g.load_config()?;
        check_guest_files(&config)?;
        let bundle = Bundle::load(&args.bundle)?;
        crate::oci::hooks::refuse_create_container(&bundle.spec)?;
        let netns = NetworkNamespace::from_spec(&bundle.spec)?;
        crate::oci::namespaces::check_paths(&bundle.spec)?;
        // Checked here too (the sandbox process sizes the VM) so that a
        // spec no VM can honour fails before anything is made.
        config.vm_size(
            bundle
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().as_ref()),
        )?;
        let terminal = bundle
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        if terminal
            && args.console_socket.is_none()
            && !crate::cli::process::tty::is_terminal(std::io::stdin().as_fd())
        {
            bail!("terminal: true needs --console-socket (or a terminal on stdin)");
        }
        let store = g.store();
        store.reserve(&args.id)?;
        let record = Record {
            id: args.id.clone(),
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            annotations: bundle.spec.annotations().clone().unwrap_or_default(),
            status: Status::Creating,
            init: None,
            sandbox: None,
            sandbox_dir: config.sandbox_root.join(random_name()),
            hooks: bundle.spec.hooks().clone(),
        };
        let mut created = Self {
            store,
            record,
            proxy: None,
            daemon: None,
            committed: false,
        };
        created.start_processes(g, args, terminal, netns)?;
        tracing::info!(stage = "created", ms = crate::service::vm::stage_ms(begun), container = %args.id, "created");
        Ok(created)
    }

    fn start_processes(
        &mut self,
        g: &Global,
        args: &CreateArgs,
        terminal: bool,
        netns: NetworkNamespace,
    ) -> anyhow::Result<()> {
        // The init proxy, waiting for "go" until the container exists.
        let (go_read, go_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let mut proxy_args = g.to_args();
        proxy_args.extend(proxy_command(
            &self.record.sandbox_dir,
            &self.record.id,
            INIT_EXEC_ID,
            terminal,
            args.console_socket.as_deref(),
            None,
        ));
        let (proxy, proxy_ready) = spawn_self(
            &proxy_args,
            Options {
                setsid: args.console_socket.is_some() || !terminal,
                new_netns: matches!(netns, NetworkNamespace::New),
                join_netns: match netns {
                    NetworkNamespace::New => None,
                    NetworkNamespace::Join { fd, .. } => Some(fd),
                },
                go: Some(go_read),
                // With a console socket, the pty is the process's stdio;
                // holding on to ours would keep the caller (containerd's
                // shim reads create's output to its end) waiting.
                stdio: args
                    .console_socket
                    .is_some()
                    .then(|| [Stdio::null(), Stdio::null(), Stdio::null()]),
            },
        )
        .context("starting the init proxy")?;
        let proxy_pid = proxy.id() as i32;
        self.proxy = Some(proxy);
        if let Some(cgroup) = HostCgroup::for_container(&self.record.id) {
            cgroup
                .enter(proxy_pid)
                .with_context(|| format!("host cgroup {}", cgroup.path().display()))?;
        }
        self.record.init = HostProcess::of(proxy_pid);
        self.store.save(&self.record)?;

        let state = self.record.state();
        hooks::run(
            "prestart",
            self.record
                .hooks
                .as_ref()
                .and_then(|h| h.prestart().as_ref()),
            &state,
        )?;
        hooks::run(
            "createRuntime",
            self.record
                .hooks
                .as_ref()
                .and_then(|h| h.create_runtime().as_ref()),
            &state,
        )?;

        // The sandbox process, in the proxy's network namespace.
        let netns: OwnedFd = File::open(format!("/proc/{proxy_pid}/ns/net"))
            .context("the init proxy's network namespace")?
            .into();
        let mut daemon_args = g.to_args();
        daemon_args.extend(["sandbox-daemon".into(), OsString::from(&self.record.id)]);
        let (daemon, daemon_ready) = spawn_self(
            &daemon_args,
            Options {
                setsid: true,
                join_netns: Some(netns),
                stdio: Some([Stdio::null(), Stdio::null(), Stdio::null()]),
                ..Options::default()
            },
        )
        .context("starting the sandbox process")?;
        self.record.sandbox = HostProcess::of(daemon.id() as i32);
        self.daemon = Some(daemon);
        self.store.save(&self.record)?;
        daemon_ready.wait().map_err(|e| anyhow!("{e}"))?;

        File::from(go_write)
            .write_all(b"g")
            .context("starting the init proxy")?;
        proxy_ready
            .wait()
            .map_err(|e| anyhow!("attaching to the container: {e}"))?;
        Ok(())
    }

    /// Records the container as created and writes the pid file; returns
    /// the init proxy (the caller's child).
    fn finish(mut self, pid_file: Option<&Path>) -> anyhow::Result<Child> {
        self.record.status = Status::Created;
        self.store.save(&self.record)?;
        if let Some(path) = pid_file {
            let pid = self.record.init.map_or(0, |p| p.pid);
            write_pid_file(path, pid)?;
        }
        let proxy = self.proxy.take().ok_or_else(|| anyhow!("no init proxy"))?;
        self.committed = true;
        // The sandbox process lives on until `delete`.
        if let Some(child) = self.daemon.take() {
            std::mem::forget(child);
        }
        Ok(proxy)
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Some(mut proxy) = self.proxy.take() {
            let _ = proxy.kill();
            let _ = proxy.wait();
        }
        if let Some(mut daemon) = self.daemon.take() {
            // It cleans up after itself on SIGTERM, or after failing.
            if let Some(p) = self.record.sandbox {
                p.signal(libc::SIGTERM);
                p.wait_gone(SANDBOX_STOP_TIMEOUT);
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        let _ = remove_sandbox_dir(&self.record.sandbox_dir);
        if let Some(cgroup) = HostCgroup::for_container(&self.record.id) {
            cgroup.remove();
        }
        let _ = self.store.remove(&self.record.id);
    }
}

/// Removes a sandbox directory a sandbox process left (it was killed).
pub fn remove_sandbox_dir(dir: &Path) -> Vec<i32> {
    crate::service::remove_leftover(dir)
}

/// The proxy's command line (after the global flags).
pub fn proxy_command(
    sandbox_dir: &Path,
    id: &str,
    exec_id: &str,
    terminal: bool,
    console_socket: Option<&Path>,
    process_file: Option<&Path>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "proxy".into(),
        "--socket".into(),
        crate::sandbox_dir::vsock_socket_in(sandbox_dir).into(),
        "--exec-id".into(),
        exec_id.into(),
    ];
    if terminal {
        args.push("--tty".into());
    }
    if let Some(socket) = console_socket {
        args.extend(["--console-socket".into(), socket.into()]);
    }
    if let Some(file) = process_file {
        args.extend(["--process-file".into(), file.into()]);
    } else {
        args.push("--host-cgroup".into());
    }
    args.push(id.into());
    args
}

/// `--preserve-fds N` with N > 0 is an error: host fds cannot cross into a VM.
pub fn refuse_preserved_fds(count: u32) -> anyhow::Result<()> {
    if count > 0 {
        bail!("--preserve-fds {count}: host file descriptors cannot be passed into a VM");
    }
    Ok(())
}

/// The kernel and image must exist before anything starts.
fn check_guest_files(config: &Config) -> anyhow::Result<()> {
    for (what, path) in [
        ("kernel", &config.guest.kernel),
        ("image", &config.guest.image),
    ] {
        if !path.is_file() {
            bail!(
                "guest {what} {} not found (set guest.{what} in configuration.toml, or run `make install`)",
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes `pid` to `path` atomically, as runc does.
pub fn write_pid_file(path: &Path, pid: i32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("pid")
    ));
    std::fs::write(&tmp, pid.to_string()).with_context(|| format!("pid file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("pid file {}", path.display()))?;
    Ok(())
}

/// 16 random hex digits.
pub fn random_name() -> String {
    let mut bytes = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = ((t as u64) ^ u64::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits for `child`, forwarding the signals we receive (a terminal
/// user's ^C, a resize) to it; returns its exit status the shell way.
pub fn wait_forwarding(child: &mut Child) -> i32 {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    for &signo in FORWARDED.iter().chain([libc::SIGWINCH].iter()) {
        if let Ok(signal) = Signal::try_from(signo) {
            set.add(signal);
        }
    }
    // Blocked here (and in every thread started from now on), delivered to
    // the forwarding thread's sigwait instead.
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    let pid = child.id() as i32;
    std::thread::spawn(move || loop {
        if let Ok(signal) = set.wait() {
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(pid, signal as libc::c_int) };
        }
    });
    match child.wait() {
        Ok(status) => exit_code(status),
        Err(_) => 255,
    }
}

/// An exit status as a shell reports it (128+N for signal N).
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}
