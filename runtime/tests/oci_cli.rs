//! The runc-compatible CLI end to end: the real `husk` binary, a busybox
//! bundle, and a microVM (QEMU here; the same code runs the builtin VMM).
//!
//! The test process is a child subreaper, as containerd's shim is, so the
//! init and exec proxies `create`/`exec --detach` leave behind become its
//! children and their exit statuses can be read the way the shim reads them.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use husk_runtime::host_process::Stat;
use husk_runtime::store::Store;
use husk_tests::guest::{self, GuestArtifacts};
use husk_tests::netns::{HttpServer, NetNs};
use husk_tests::{containers, rootfs};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

fn artifacts() -> &'static GuestArtifacts {
    static ARTIFACTS: OnceLock<GuestArtifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        guest::artifacts(&dir).unwrap_or_else(|e| panic!("guest artifacts: {e}"))
    })
}

fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
}

/// One test's world: a state root, a sandbox root, a configuration, a log.
struct World {
    tmp: tempfile::TempDir,
    root: PathBuf,
    sandboxes: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl World {
    fn new() -> Self {
        Self::with_kernel_params("")
    }

    /// A world whose guests boot with `kernel_params` added.
    fn with_kernel_params(kernel_params: &str) -> Self {
        become_subreaper();
        let a = artifacts();
        // A short path: sandbox sockets live under it.
        let tmp = tempfile::Builder::new()
            .prefix("hk")
            .tempdir_in("/tmp")
            .unwrap();
        let sandboxes = tmp.path().join("vm");
        let config = tmp.path().join("husk.toml");
        std::fs::write(
            &config,
            format!(
                "hypervisor = \"qemu\"\nsandbox_root = \"{}\"\n[guest]\nkernel = \"{}\"\nimage = \"{}\"\nboot_timeout_secs = 120\nkernel_params = \"{kernel_params}\"\n",
                sandboxes.display(),
                a.kernel.display(),
                a.initrd.display()
            ),
        )
        .unwrap();
        Self {
            root: tmp.path().join("root"),
            log: tmp.path().join("log.json"),
            sandboxes,
            config,
            tmp,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
        c.arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(&self.config)
            .arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json")
            .args(args);
        c
    }

    /// Runs husk to completion. Its output goes through files, not pipes:
    /// the proxies `create` leaves behind inherit its stdio and would hold
    /// pipes open for as long as their container lives.
    fn husk(&self, args: &[&str]) -> Output {
        husk_tests::cli::output(&mut self.command(args), None).unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.husk(args);
        assert!(
            out.status.success(),
            "husk {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A busybox bundle whose process runs `args`.
    fn bundle(&self, name: &str, args: &[&str], tweak: impl FnOnce(&mut Spec)) -> PathBuf {
        let dir = self.tmp.path().join(name);
        rootfs::busybox(&dir.join("rootfs")).unwrap();
        // No terminal: oci-spec's default process has none.
        let mut spec = containers::spec(args);
        tweak(&mut spec);
        spec.save(dir.join("config.json")).unwrap();
        dir
    }

    fn state(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    /// `husk run --detach`; returns the init proxy's pid.
    fn run_detached(&self, bundle: &Path, id: &str) -> i32 {
        let pid_file = self.tmp.path().join(format!("{id}.pid"));
        self.ok(&[
            "run",
            "--detach",
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            id,
        ]);
        read_pid(&pid_file)
    }

    /// `husk run` of `bundle` as `id`, which must succeed; its stdout.
    fn run_ok(&self, bundle: &Path, id: &str) -> String {
        let out = self.husk(&["run", "--bundle", bundle.to_str().unwrap(), id]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "husk run: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Starts husk with `args` and SIGKILLs it after `delay` (if it has
    /// not ended by then); returns whether it was still running.
    fn kill_after(&self, args: &[&str], delay: Duration) -> bool {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let running = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        running
    }

    /// `create`s `id` from bundle `b` and SIGKILLs the process `victim`
    /// finds (polled until it finds one) while create runs; create must
    /// then fail, not hang.
    fn create_killing(&self, b: &str, id: &str, victim: impl Fn() -> Option<i32>) {
        let mut create = self
            .command(&["create", "--bundle", b, id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid = loop {
            if let Some(pid) = victim() {
                break pid;
            }
            assert!(Instant::now() < deadline, "{id}: nothing to kill appeared");
            std::thread::sleep(Duration::from_millis(10));
        };
        // SAFETY: kill(2) of a process this test's create started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(status) = create.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{id}: create hung");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            !status.success(),
            "{id}: create succeeded without what was killed"
        );
    }

    /// `delete --force` after a crash: it succeeds (or finds nothing was
    /// ever recorded), `list` no longer names the container, and no
    /// process of this world (they all carry its configuration's path on
    /// their command line) is left.
    fn force_clean(&self, id: &str) {
        let out = self.husk(&["delete", "--force", id]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("does not exist"),
            "delete --force {id}: {stderr}"
        );
        let list = self.ok(&["list"]);
        assert!(!list.contains(id), "{id} still listed: {list}");
        let config = self.config.to_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_naming(config);
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after delete --force {id}, processes left: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.assert_clean();
    }

    /// The sandbox directory and process `create` recorded for `id`.
    fn record(&self, id: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.root.join(id).join("state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Nothing of any container is left: state, sandbox dirs, mounts.
    fn assert_clean(&self) {
        let left = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(
            left(&self.root),
            0,
            "state left under {}",
            self.root.display()
        );
        assert_eq!(
            left(&self.sandboxes),
            0,
            "sandbox dirs left under {}",
            self.sandboxes.display()
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let prefix = self.tmp.path().to_str().unwrap();
        assert!(!mounts.contains(prefix), "mounts left under {prefix}");
    }
}

impl Drop for World {
    /// A failed test must not leave VMs behind, nor let the temporary
    /// directory's removal reach through a sandbox's binds.
    fn drop(&mut self) {
        // Never panics: a panic here, while a failed test unwinds, would
        // abort the test binary and hide the failure.
        for id in Store::new(&self.root).ids().unwrap_or_default() {
            let _ = self.husk(&["delete", "--force", &id]);
        }
    }
}

/// Live (not zombie) processes whose command line contains `needle`:
/// (pid, command line with spaces for NULs).
fn processes_naming(needle: &str) -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// The QEMU processes whose command line names `needle` (a sandbox
/// directory, or the sandbox root).
fn qemus_naming(needle: &str) -> Vec<i32> {
    processes_naming(needle)
        .into_iter()
        .filter(|(_, cmdline)| {
            cmdline.starts_with("qemu-system") || cmdline.contains("/qemu-system")
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Waits for our (adopted) child `pid`; its exit status the shell way.
fn wait_pid(pid: i32, timeout: Duration) -> i32 {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).unwrap() {
            WaitStatus::Exited(_, code) => return code,
            WaitStatus::Signaled(_, sig, _) => return 128 + sig as i32,
            _ => {}
        }
        assert!(Instant::now() < deadline, "pid {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid `create --pid-file` wrote.
fn read_pid(pid_file: &Path) -> i32 {
    std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Replaces the hooks of `bundle`'s config.json with `hooks`.
fn set_hooks(bundle: &Path, hooks: serde_json::Value) {
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    spec["hooks"] = hooks;
    std::fs::write(&config, spec.to_string()).unwrap();
}

/// A hook that appends `<name> <state JSON>` to `log`.
fn logging_hook(log: &Path, name: &str) -> serde_json::Value {
    serde_json::json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", format!("read -r state; echo \"{name} $state\" >> {}", log.display())],
    })
}

/// Points the spec's network namespace at `path`, or removes it (the
/// host's network) when `path` is `None`.
fn set_network_namespace(spec: &mut Spec, path: Option<&Path>) {
    let mut linux = spec.linux().clone().unwrap();
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    let namespaces = namespaces
        .into_iter()
        .filter_map(|mut ns| {
            if ns.typ() == LinuxNamespaceType::Network {
                ns.set_path(Some(path?.to_owned()));
            }
            Some(ns)
        })
        .collect();
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
}

/// Sets the path of the spec's namespace of type `typ` (adding it if the
/// spec has none).
fn set_namespace_path(spec: &mut Spec, typ: LinuxNamespaceType, path: &str) {
    let mut linux = spec.linux().clone().unwrap();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|ns| ns.typ() != typ);
    namespaces.push(
        oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(typ)
            .path(path)
            .build()
            .unwrap(),
    );
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
}

fn process_alive(pid: i64) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(Stat::read)
        .is_some_and(|s| !s.has_ended())
}

fn wait_for_file(path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never appeared in {}: {text:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_container_goes_through_every_verb() {
    let w = World::new();
    let bundle = w.bundle(
        "b",
        &[
            "sh",
            "-c",
            "trap 'echo got-usr1' USR1; echo started; while :; do sleep 0.1; done",
        ],
        |_| {},
    );
    let out_path = w.tmp.path().join("out");
    let pid_file = w.tmp.path().join("pid");
    let status = w
        .command(&[
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c1",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(status.success());
    let pid: i32 = read_pid(&pid_file);
    let state = w.state("c1");
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"], pid);
    assert_eq!(state["bundle"], bundle.to_str().unwrap());
    assert!(process_alive(pid.into()));
    let sandbox_dir = PathBuf::from(w.record("c1")["sandbox_dir"].as_str().unwrap());
    let daemon = w.record("c1")["sandbox"]["pid"].as_i64().unwrap();
    assert!(sandbox_dir.join("vsock.sock").exists());

    // Duplicate ids are refused while it exists.
    let dup = w.husk(&["create", "--bundle", bundle.to_str().unwrap(), "c1"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));

    w.ok(&["start", "c1"]);
    assert_eq!(w.state("c1")["status"], "running");
    wait_for_file(&out_path, "started", Duration::from_secs(60));

    // exec: output and exit code, attached; then detached with a pid file.
    let exec = w.husk(&["exec", "c1", "sh", "-c", "echo in-exec; exit 4"]);
    assert_eq!(exec.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "in-exec\n");
    let exec_pid_file = w.tmp.path().join("exec.pid");
    w.ok(&[
        "exec",
        "--detach",
        "--pid-file",
        exec_pid_file.to_str().unwrap(),
        "c1",
        "sh",
        "-c",
        "exit 6",
    ]);
    let exec_pid: i32 = std::fs::read_to_string(&exec_pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(wait_pid(exec_pid, Duration::from_secs(60)), 6);

    // kill reaches the trap; ps lists guest processes.
    w.ok(&["kill", "c1", "USR1"]);
    wait_for_file(&out_path, "got-usr1", Duration::from_secs(30));
    let ps: Vec<i32> = serde_json::from_str(&w.ok(&["ps", "--format", "json", "c1"])).unwrap();
    assert!(!ps.is_empty());

    // pause and resume; update and stats.
    w.ok(&["pause", "c1"]);
    assert_eq!(w.state("c1")["status"], "paused");
    assert!(!w.husk(&["pause", "c1"]).status.success(), "pausing twice");
    w.ok(&["resume", "c1"]);
    assert_eq!(w.state("c1")["status"], "running");
    w.ok(&["update", "--memory", "100m", "--pids-limit", "50", "c1"]);
    let stats: serde_json::Value =
        serde_json::from_str(&w.ok(&["events", "--stats", "c1"])).unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["data"]["memory"]["usage"]["limit"], 100u64 << 20);
    assert_eq!(stats["data"]["pids"]["limit"], 50);
    assert!(stats["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0);

    let list: serde_json::Value =
        serde_json::from_str(&w.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list[0]["id"], "c1");
    assert_eq!(w.ok(&["list", "-q"]), "c1\n");

    // A running container is not deleted without --force.
    let del = w.husk(&["delete", "c1"]);
    assert!(!del.status.success());
    assert!(String::from_utf8_lossy(&del.stderr).contains("running"));

    // SIGKILL ends it (a shell as PID 1 ignores an untrapped TERM, as
    // under runc): the proxy exits with the guest's status.
    w.ok(&["kill", "c1", "KILL"]);
    assert_eq!(wait_pid(pid, Duration::from_secs(60)), 137);
    let state = w.state("c1");
    assert_eq!(state["status"], "stopped");
    assert_eq!(state["pid"], 0);
    assert!(
        !w.husk(&["start", "c1"]).status.success(),
        "starting a stopped container"
    );

    w.ok(&["delete", "c1"]);
    assert!(!sandbox_dir.exists());
    assert!(!process_alive(daemon), "sandbox process left");
    w.assert_clean();
}

#[test]
fn run_carries_stdio_and_the_exit_code() {
    let w = World::new();
    let bundle = w.bundle(
        "b",
        &[
            "sh",
            "-c",
            "read line; echo out-$line; echo err >&2; exit 3",
        ],
        |_| {},
    );
    let mut child = w
        .command(&["run", "--bundle", bundle.to_str().unwrap(), "r1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out-hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    w.assert_clean();
}

/// Receives the pty master `create` sends over the console socket.
fn receive_master(listener: &UnixListener) -> std::fs::File {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let (stream, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    for cmsg in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the fd just arrived and is ours alone.
            return std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
        }
    }
    panic!("no fd received");
}

fn read_until(master: &mut std::fs::File, needle: &str, seen: &mut String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 1024];
    while !seen.contains(needle) {
        assert!(Instant::now() < deadline, "{needle:?} not seen in {seen:?}");
        match master.read(&mut buf) {
            Ok(0) => panic!("terminal closed before {needle:?}: {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("reading the terminal: {e}"),
        }
    }
}

#[test]
fn a_terminal_goes_through_the_console_socket_and_resizes() {
    let w = World::new();
    let bundle = w.bundle("b", &["sh"], |spec| {
        let mut p = spec.process().clone().unwrap();
        p.set_terminal(Some(true));
        spec.set_process(Some(p));
    });
    let socket_path = w.tmp.path().join("console.sock");
    let listener = UnixListener::bind(&socket_path).unwrap();
    let pid_file = w.tmp.path().join("pid");
    let receiver = std::thread::spawn(move || receive_master(&listener));
    w.ok(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap(),
        "--console-socket",
        socket_path.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "t1",
    ]);
    let mut master = receiver.join().unwrap();
    let pid: i32 = read_pid(&pid_file);
    w.ok(&["start", "t1"]);
    let mut seen = String::new();
    master.write_all(b"echo typed-$((1+1))\n").unwrap();
    read_until(&mut master, "typed-2", &mut seen);

    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 132,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one Winsize.
    assert_eq!(
        unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&master),
                libc::TIOCSWINSZ,
                &size,
            )
        },
        0
    );
    // The resize travels as SIGWINCH to the proxy, then to the guest.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        seen.clear();
        master.write_all(b"stty size\n").unwrap();
        read_until(&mut master, "\n", &mut seen);
        read_until(&mut master, "# ", &mut seen);
        if seen.contains("40 132") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "size never reached the guest: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    master.write_all(b"exit 5\n").unwrap();
    assert_eq!(wait_pid(pid, Duration::from_secs(60)), 5);
    w.ok(&["delete", "t1"]);
    w.assert_clean();
}

#[test]
fn hooks_run_on_the_host_in_order_with_the_state() {
    let w = World::new();
    let log = w.tmp.path().join("hooks.log");
    let hook = |name: &str| logging_hook(&log, name);
    let bundle = w.bundle("b", &["true"], |_| {});
    set_hooks(
        &bundle,
        serde_json::json!({
            "prestart": [hook("prestart")],
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
        }),
    );
    let pid_file = w.tmp.path().join("pid");
    w.ok(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "h1",
    ]);
    let pid = read_pid(&pid_file);
    w.ok(&["start", "h1"]);
    wait_pid(pid, Duration::from_secs(60));
    w.ok(&["delete", "h1"]);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(&str, serde_json::Value)> = text
        .lines()
        .map(|l| {
            let (name, json) = l.split_once(' ').unwrap();
            (name, serde_json::from_str(json).unwrap())
        })
        .collect();
    let names: Vec<&str> = lines.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["prestart", "createRuntime", "poststart", "poststop"]
    );
    assert_eq!(lines[0].1["pid"], pid, "hooks see the init proxy's pid");
    assert_eq!(lines[0].1["status"], "creating");
    assert_eq!(lines[0].1["id"], "h1");
    assert_eq!(lines[3].1["status"], "stopped");
    w.assert_clean();
}

/// Every bad input: a non-zero exit, one line on stderr, an error entry in
/// the JSON log, and nothing left behind.
#[test]
fn bad_input_is_one_clear_line_and_leaves_nothing() {
    let w = World::new();
    let good = w.bundle("good", &["true"], |_| {});
    let good = good.to_str().unwrap();
    let malformed = w.tmp.path().join("malformed");
    std::fs::create_dir_all(malformed.join("rootfs")).unwrap();
    std::fs::write(malformed.join("config.json"), "{\"ociVersion\": ").unwrap();
    let no_rootfs = w.tmp.path().join("norootfs");
    std::fs::create_dir_all(&no_rootfs).unwrap();
    std::fs::copy(
        Path::new(good).join("config.json"),
        no_rootfs.join("config.json"),
    )
    .unwrap();
    let failing_hook = w.bundle("hook", &["true"], |_| {});
    let create_container_hook = w.bundle("cchook", &["true"], |_| {});
    set_hooks(
        &create_container_hook,
        serde_json::json!({"createContainer": [{"path": "/bin/true"}]}),
    );
    set_hooks(
        &failing_hook,
        serde_json::json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no network >&2; exit 1"]}]}),
    );
    // Network namespaces a VM cannot be given: none (--network host), a
    // path that is not there, one of another type, one that processes
    // already use (--network container:X: here this test's own).
    let netns_bundle = |name: &str, path: Option<&str>| {
        w.bundle(name, &["true"], |spec| {
            set_network_namespace(spec, path.map(Path::new))
        })
    };
    let host_network = netns_bundle("hostnet", None);
    let missing_netns = netns_bundle("nonetns", Some("/run/netns/husk-no-such-netns"));
    let uts_netns = netns_bundle("utsnetns", Some("/proc/self/ns/uts"));
    // Other namespaces by path: missing, of another type, and a valid
    // host namespace no container in a VM can join (spec: config-linux.md
    // "namespaces": an error when the path is not a namespace of the type).
    let ns_bundle = |name: &str, typ: LinuxNamespaceType, path: &str| {
        w.bundle(name, &["true"], |spec| set_namespace_path(spec, typ, path))
    };
    let missing_ipc = ns_bundle("noipc", LinuxNamespaceType::Ipc, "/nonexistent/ns/ipc");
    let wrong_ipc = ns_bundle("wrongipc", LinuxNamespaceType::Ipc, "/proc/self/ns/uts");
    let host_pid = ns_bundle("hostpid", LinuxNamespaceType::Pid, "/proc/self/ns/pid");
    // A resource the guest's cgroup v2 cannot apply (runc fails the same
    // way on a cgroup v2 host), and a realtime CPU budget.
    let leaf_weight = w.bundle("leafweight", &["true"], |spec| {
        let mut linux = spec.linux().clone().unwrap();
        linux.set_resources(Some(
            serde_json::from_value(serde_json::json!({"blockIO": {"leafWeight": 300}})).unwrap(),
        ));
        spec.set_linux(Some(linux));
    });
    let realtime = w.bundle("realtime", &["true"], |spec| {
        let mut linux = spec.linux().clone().unwrap();
        linux.set_resources(Some(
            serde_json::from_value(serde_json::json!({"cpu": {"realtimeRuntime": 1000}})).unwrap(),
        ));
        spec.set_linux(Some(linux));
    });
    // CPUs no VM of the configuration has (max_vcpus 4 by default).
    let many_cpus = w.bundle("cpus", &["true"], |spec| set_cpuset(spec, "0-15"));
    let mut holder = Command::new("unshare")
        .args(["--net", "sleep", "120"])
        .spawn()
        .unwrap();
    let held = format!("/proc/{}/ns/net", holder.id());
    // unshare has switched namespaces once the link differs from ours.
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&held).ok().as_ref() == Some(&ours) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let used_netns = netns_bundle("usednetns", Some(&held));
    let bad_hv = w.tmp.path().join("bad-hv.toml");
    std::fs::write(&bad_hv, "hypervisor = \"firecracker\"\n").unwrap();
    let no_kernel = w.tmp.path().join("no-kernel.toml");
    std::fs::write(
        &no_kernel,
        format!(
            "[guest]\nkernel = \"/nonexistent/vmlinux\"\nimage = \"{}\"\n",
            artifacts().initrd.display()
        ),
    )
    .unwrap();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["create", "--bundle", malformed.to_str().unwrap(), "x1"],
            "config.json",
        ),
        (
            vec!["create", "--bundle", "/nonexistent/bundle", "x2"],
            "/nonexistent/bundle",
        ),
        (
            vec!["create", "--bundle", no_rootfs.to_str().unwrap(), "x3"],
            "rootfs",
        ),
        (
            vec!["create", "--bundle", good, "../evil"],
            "invalid container id",
        ),
        (
            vec!["create", "--bundle", failing_hook.to_str().unwrap(), "x4"],
            "no network",
        ),
        (
            vec!["create", "--bundle", host_network.to_str().unwrap(), "n1"],
            "--network host",
        ),
        (
            vec!["create", "--bundle", missing_netns.to_str().unwrap(), "n2"],
            "/run/netns/husk-no-such-netns",
        ),
        (
            vec!["create", "--bundle", uts_netns.to_str().unwrap(), "n3"],
            "not a network namespace",
        ),
        (
            vec!["create", "--bundle", used_netns.to_str().unwrap(), "n4"],
            "in use by process",
        ),
        (
            vec!["create", "--bundle", missing_ipc.to_str().unwrap(), "s1"],
            "cannot open ipc namespace /nonexistent/ns/ipc",
        ),
        (
            vec!["create", "--bundle", wrong_ipc.to_str().unwrap(), "s2"],
            "is a uts namespace, not a ipc namespace",
        ),
        (
            vec!["create", "--bundle", host_pid.to_str().unwrap(), "s3"],
            "a container in a VM cannot join it",
        ),
        (
            vec!["create", "--bundle", leaf_weight.to_str().unwrap(), "r1"],
            "leaf_weight",
        ),
        (
            vec![
                "create",
                "--bundle",
                create_container_hook.to_str().unwrap(),
                "h1",
            ],
            "hooks.createContainer",
        ),
        (
            vec!["create", "--bundle", realtime.to_str().unwrap(), "r2"],
            "realtime",
        ),
        (
            vec!["create", "--bundle", many_cpus.to_str().unwrap(), "n5"],
            "linux.resources.cpu.cpus names CPU 15",
        ),
        (vec!["state", "nosuch"], "does not exist"),
        (vec!["start", "nosuch"], "does not exist"),
        (vec!["kill", "nosuch", "TERM"], "does not exist"),
        (vec!["delete", "nosuch"], "does not exist"),
        (vec!["kill", "nosuch", "SIGNOPE"], "invalid signal"),
        (
            vec![
                "--config",
                bad_hv.to_str().unwrap(),
                "create",
                "--bundle",
                good,
                "x5",
            ],
            "firecracker",
        ),
        (
            vec![
                "--config",
                no_kernel.to_str().unwrap(),
                "create",
                "--bundle",
                good,
                "x6",
            ],
            "/nonexistent/vmlinux",
        ),
        (
            vec![
                "--config",
                "/nonexistent/husk.toml",
                "create",
                "--bundle",
                good,
                "x7",
            ],
            "/nonexistent/husk.toml",
        ),
    ];
    for (args, needle) in cases {
        let _ = std::fs::remove_file(&w.log);
        let out = w.husk(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: not one line: {stderr:?}"
        );
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} does not name {needle:?}"
        );
        let log = std::fs::read_to_string(&w.log).unwrap_or_default();
        let entry: serde_json::Value = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .rfind(|e| e["level"] == "error")
            .unwrap_or_else(|| panic!("{args:?}: no error in the JSON log: {log:?}"));
        assert!(
            entry["msg"].as_str().unwrap().contains(needle),
            "{args:?}: {entry}"
        );
        assert!(entry["time"].is_string());
        w.assert_clean();
    }
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn delete_force_takes_down_a_running_container() {
    let w = World::new();
    let bundle = w.bundle(
        "b",
        &["sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
        |_| {},
    );
    let pid = w.run_detached(&bundle, "f1");
    assert_eq!(w.state("f1")["status"], "running");
    w.ok(&["delete", "--force", "f1"]);
    assert_eq!(wait_pid(pid, Duration::from_secs(30)), 137);
    w.assert_clean();
}

#[test]
fn delete_cleans_up_after_a_killed_sandbox_process() {
    let w = World::new();
    let bundle = w.bundle("b", &["sh", "-c", "while :; do sleep 1; done"], |_| {});
    let pid = w.run_detached(&bundle, "k1");
    let record = w.record("k1");
    let daemon = record["sandbox"]["pid"].as_i64().unwrap();
    let sandbox_dir = record["sandbox_dir"].as_str().unwrap().to_owned();
    // SAFETY: kill(2) of the sandbox process this test started.
    assert_eq!(unsafe { libc::kill(daemon as i32, libc::SIGKILL) }, 0);
    // Its VM (and with it the container) lives on until delete.
    w.ok(&["delete", "--force", "k1"]);
    wait_pid(pid, Duration::from_secs(30));
    let left = processes_naming(&sandbox_dir);
    assert!(left.is_empty(), "processes left on the sandbox: {left:?}");
    assert!(
        warned(&w.log, &format!("sandbox process (pid {daemon}) was gone")),
        "delete --force did not say the sandbox process was gone"
    );
    w.assert_clean();
}

/// The VM killed under a running container (QEMU SIGKILLed): the
/// container does not hang; its init proxy, the pid Docker waits on, exits
/// with status 255, `state` says stopped, and `delete` leaves nothing.
#[test]
fn a_killed_vm_ends_the_container_and_delete_cleans_up() {
    let w = World::new();
    let bundle = w.bundle("b", &["sh", "-c", "while :; do sleep 1; done"], |_| {});
    let pid = w.run_detached(&bundle, "vmk1");
    let record = w.record("vmk1");
    let sandbox_dir = record["sandbox_dir"].as_str().unwrap().to_owned();
    let qemus = qemus_naming(&sandbox_dir);
    assert_eq!(qemus.len(), 1, "{qemus:?}");
    // SAFETY: kill(2) of the QEMU this test's container runs on.
    assert_eq!(unsafe { libc::kill(qemus[0], libc::SIGKILL) }, 0);
    assert_eq!(wait_pid(pid, Duration::from_secs(60)), 255);
    let state: serde_json::Value = serde_json::from_str(&w.ok(&["state", "vmk1"])).unwrap();
    assert_eq!(state["status"], "stopped", "{state}");
    w.ok(&["delete", "vmk1"]);
    w.assert_clean();
}

/// Hardening (crash at every stage): the CLI SIGKILLed during `create`
/// (at several points of the VM's boot), `start`, `exec` and `delete`; the
/// init proxy SIGKILLed; the sandbox process, and QEMU, SIGKILLed while
/// `create` waits for the guest. After each, `delete --force` cleans up completely: no
/// process, VM, mount, sandbox directory or state is left, `list` no
/// longer names the container, and a warning says what the crash left.
#[test]
fn a_cli_or_host_process_killed_at_any_stage_is_cleaned_up_by_delete_force() {
    let w = World::new();
    let bundle = w.bundle("c", &["sh", "-c", "while :; do sleep 1; done"], |_| {});
    let b = bundle.to_str().unwrap();
    let ms = Duration::from_millis;

    for (i, delay) in [ms(50), ms(400), ms(1200), ms(3000)]
        .into_iter()
        .enumerate()
    {
        let id = format!("create{i}");
        w.kill_after(&["create", "--bundle", b, &id], delay);
        w.force_clean(&id);
    }

    w.ok(&["create", "--bundle", b, "start"]);
    w.kill_after(&["start", "start"], ms(20));
    w.force_clean("start");

    w.run_detached(&bundle, "exec");
    assert!(
        w.kill_after(&["exec", "exec", "sleep", "100"], ms(1500)),
        "exec ended early"
    );
    w.force_clean("exec");

    w.run_detached(&bundle, "delete");
    w.kill_after(&["delete", "--force", "delete"], ms(100));
    w.force_clean("delete");

    let proxy = w.run_detached(&bundle, "proxy");
    // SAFETY: kill(2) of the init proxy this test started.
    assert_eq!(unsafe { libc::kill(proxy, libc::SIGKILL) }, 0);
    assert_eq!(
        wait_pid(proxy, Duration::from_secs(10)),
        128 + libc::SIGKILL
    );
    w.force_clean("proxy");

    // The sandbox process, then QEMU, killed while `create` waits for the
    // guest: create fails (it does not hang) and delete --force finds the rest.
    w.create_killing(b, "sandbox", || {
        std::fs::read_to_string(w.root.join("sandbox").join("state.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|r| r["sandbox"]["pid"].as_i64())
            .map(|pid| pid as i32)
    });
    w.force_clean("sandbox");
    let sandboxes = w.sandboxes.to_str().unwrap().to_owned();
    w.create_killing(b, "qemu", || qemus_naming(&sandboxes).first().copied());
    w.force_clean("qemu");

    // delete --force said what the crashes had left.
    for needle in ["cleaned up after a crash", "create never finished"] {
        assert!(warned(&w.log, needle), "no warning saying {needle:?}");
    }
}

/// Hardening (issue 13): once its VM is up, the sandbox process runs in a
/// mount namespace of its own (QEMU, its child, shares it) whose root is a
/// read-only tmpfs holding only its sandbox directory, at its host path,
/// with the share's binds under it, and a /proc. Read from the host
/// through `/proc/<pid>/mountinfo` and `/proc/<pid>/root`: no host file is
/// reachable, the host's mount table shows none of the binds, the
/// container still works (exec, a volume's file through virtio-fs), and a
/// SIGKILLed sandbox process leaves no mount behind for `delete --force`.
#[test]
fn the_sandbox_process_sees_only_its_sandbox_directory() {
    let w = World::new();
    let source = w.tmp.path().join("volume-src");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("file"), "from the host\n").unwrap();
    let bundle = w.bundle("jail", &["sh", "-c", "while :; do sleep 1; done"], |spec| {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(mount("/data", "bind", &source, &["rbind", "ro"]));
        spec.set_mounts(Some(mounts));
    });
    w.run_detached(&bundle, "jail1");
    let record = w.record("jail1");
    let pid = record["sandbox"]["pid"].as_i64().unwrap();
    let dir = record["sandbox_dir"].as_str().unwrap().to_owned();

    // mountinfo: id parent major:minor root mount-point options ... - type source super-options
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let mounts: Vec<(&str, &str, &str)> = mountinfo
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let fstype = l.split(" - ").nth(1).and_then(|t| t.split(' ').next());
            (f[4], f[5], fstype.unwrap_or(""))
        })
        .collect();
    let binds_under = format!("{dir}/shared/");
    for (point, _, _) in &mounts {
        assert!(
            ["/", "/proc", dir.as_str()].contains(point) || point.starts_with(&binds_under),
            "unexpected mount {point} in the sandbox process's table:\n{mountinfo}"
        );
    }
    for expected in ["/", "/proc", dir.as_str()] {
        assert!(
            mounts.iter().any(|(p, _, _)| *p == expected),
            "no {expected} in:\n{mountinfo}"
        );
    }
    let binds = mounts
        .iter()
        .filter(|(p, _, _)| p.starts_with(&binds_under))
        .count();
    assert!(
        binds >= 2,
        "the rootfs and the volume are not both bound:\n{mountinfo}"
    );
    let (_, root_options, root_type) = mounts.iter().find(|(p, _, _)| *p == "/").unwrap();
    assert_eq!(*root_type, "tmpfs", "{mountinfo}");
    assert!(root_options.starts_with("ro,"), "{mountinfo}");

    // Nothing of the host through its root; its own sockets at their paths.
    let root = format!("/proc/{pid}/root");
    for host_path in [
        "/etc/passwd".into(),
        "/home".into(),
        "/usr/bin".into(),
        w.config.to_str().unwrap().to_owned(),
        w.root.to_str().unwrap().to_owned(),
        source.to_str().unwrap().to_owned(),
    ] {
        assert!(
            !Path::new(&format!("{root}{host_path}")).exists(),
            "{host_path} is reachable from the sandbox process"
        );
    }
    assert!(Path::new(&format!("{root}{dir}/vsock.sock")).exists());

    // QEMU lives in the same namespace (it keeps it alive if orphaned).
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    let qemu = qemus_naming(&dir);
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    assert_eq!(ns(qemu[0]), ns(pid as i32));
    assert_ne!(
        ns(pid as i32),
        std::fs::read_link("/proc/self/ns/mnt").unwrap()
    );

    // The host never sees the binds.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host.contains(&dir),
        "the host sees mounts of {dir}:\n{host}"
    );

    // The container works through the confined process.
    assert_eq!(
        w.ok(&["exec", "jail1", "cat", "/data/file"]),
        "from the host\n"
    );

    // Killed, the sandbox process takes its binds with it (once delete has
    // ended the QEMU it leaves).
    // SAFETY: kill(2) of the sandbox process this test's run started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    w.force_clean("jail1");

    // A confined sandbox process taken down the usual way empties its
    // directory without complaint; delete removes the directory itself.
    let short = w.bundle("jail-run", &["true"], |_| {});
    w.run_ok(&short, "jail2");
    w.assert_clean();
    assert!(
        !warned(&w.log, "stopping the VM"),
        "{}",
        std::fs::read_to_string(&w.log).unwrap_or_default()
    );
}

/// Whether `log` (husk's `--log-format json` log) has a warning whose
/// message contains `needle`.
fn warned(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|e| e["level"] == "warning" && e["msg"].as_str().unwrap_or("").contains(needle))
}

/// Hardening: the guest kernel panicking under a running container (here
/// a memory cgroup OOM with `vm.panic_on_oom=2` on the guest's command
/// line) ends the VM (`panic=-1`), and the container does not hang: its
/// init proxy exits 255, `state` says stopped, `delete` leaves nothing.
/// The agent dying is the same event for the host: it is the guest's
/// PID 1, whose death panics the kernel.
#[test]
fn a_guest_kernel_panic_ends_the_container_with_a_status() {
    let w = World::with_kernel_params("sysctl.vm.panic_on_oom=2");
    let bundle = w.bundle(
        "p",
        &["sh", "-c", "x=0123456789abcdef; while :; do x=$x$x; done"],
        |spec| {
            let mut linux = spec.linux().clone().unwrap();
            linux.set_resources(Some(
                serde_json::from_value(serde_json::json!({"memory": {"limit": 33554432}})).unwrap(),
            ));
            spec.set_linux(Some(linux));
        },
    );
    let pid = w.run_detached(&bundle, "panic1");
    assert_eq!(wait_pid(pid, Duration::from_secs(120)), 255);
    let state: serde_json::Value = serde_json::from_str(&w.ok(&["state", "panic1"])).unwrap();
    assert_eq!(state["status"], "stopped", "{state}");
    w.ok(&["delete", "panic1"]);
    w.assert_clean();
}

#[test]
fn check_version_features_and_spec_answer_like_runc() {
    let w = World::new();
    // This host's KVM cannot run Linux guests: QEMU is usable, and
    // `check` says why auto would not pick builtin.
    let check = w.husk(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&w.ok(&["check", "--format", "json"])).unwrap();
    assert!(json.is_object());
    let no_kernel = w.tmp.path().join("no-kernel.toml");
    std::fs::write(
        &no_kernel,
        "hypervisor = \"qemu\"\n[guest]\nkernel = \"/nonexistent/vmlinux\"\n",
    )
    .unwrap();
    let check = w.husk(&["--config", no_kernel.to_str().unwrap(), "check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("/nonexistent/vmlinux"));

    let version = w.ok(&["--version"]);
    assert!(version.starts_with("husk version "), "{version}");
    assert!(version.contains("spec: 1.2.0"), "{version}");

    let features: serde_json::Value = serde_json::from_str(&w.ok(&["features"])).unwrap();
    assert_eq!(features["ociVersionMax"], "1.2.0");
    assert!(features["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == "prestart"));

    let dir = w.tmp.path().join("spec");
    std::fs::create_dir(&dir).unwrap();
    w.ok(&["spec", "--bundle", dir.to_str().unwrap()]);
    let spec = Spec::load(dir.join("config.json")).unwrap();
    assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
    let again = w.husk(&["spec", "--bundle", dir.to_str().unwrap()]);
    assert!(
        !again.status.success(),
        "spec must not overwrite config.json"
    );
}

/// Runs `ip` with the words of `args` and fails the test with its stderr
/// if it fails.
fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace the spec names by path, as Podman and CNI hand one
/// over, with two veths: each one's name, MAC, MTU, IPv4 (and for the
/// first IPv6) addresses and the default route are the container's, in the
/// VM; a server on the veths' peers answers through both NICs and over
/// IPv6; afterwards neither tap nor tc filter is left in the namespace.
#[test]
fn a_network_namespace_by_path_is_the_containers_network() {
    let w = World::new();
    let ns = NetNs::create().unwrap();
    let peer = NetNs::create().unwrap();
    let (c, p) = (ns.name(), peer.name());
    let macs = ["02:42:0a:e7:07:02", "02:42:0a:e7:08:02"];
    for (i, mac) in macs.iter().enumerate() {
        let net = 7 + i;
        ip(&format!(
            "link add hv{i} netns {c} type veth peer name hp{i} netns {p}"
        ));
        ip(&format!("-n {c} link set hv{i} address {mac} mtu 1400"));
        ip(&format!("-n {c} addr add 10.231.{net}.2/24 dev hv{i}"));
        ip(&format!("-n {c} link set hv{i} up"));
        ip(&format!("-n {p} link set hp{i} mtu 1400"));
        ip(&format!("-n {p} addr add 10.231.{net}.1/24 dev hp{i}"));
        ip(&format!("-n {p} link set hp{i} up"));
    }
    ip(&format!("-n {c} addr add fd00:e7::2/64 dev hv0 nodad"));
    ip(&format!("-n {p} addr add fd00:e7::1/64 dev hp0 nodad"));
    ip(&format!("-n {c} route add default via 10.231.7.1"));
    let _server = HttpServer::start(&peer, "8080", "hello from the peer").unwrap();
    let path = ns.path();
    let bundle = w.bundle(
        "net",
        &[
            "sh",
            "-c",
            "ip -o link show; ip -o addr show; ip route; \
             for url in http://10.231.7.1:8080/ http://10.231.8.1:8080/ 'http://[fd00:e7::1]:8080/'; do \
               timeout 20 wget -q -O - \"$url\" && echo; done",
        ],
        |spec| set_network_namespace(spec, Some(&path)),
    );
    let stdout = w.run_ok(&bundle, "net1");
    for needle in [
        "hv0",
        "hv1",
        macs[0],
        macs[1],
        "mtu 1400",
        "inet 10.231.7.2/24",
        "inet 10.231.8.2/24",
        "inet6 fd00:e7::2/64",
        "default via 10.231.7.1",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
    assert_eq!(
        stdout.matches("hello from the peer").count(),
        3,
        "the peer's page through both NICs and over IPv6:\n{stdout}"
    );
    w.assert_clean();
    let links = ns.links().unwrap();
    assert!(
        !links.iter().any(|l| l.starts_with("husktap")),
        "taps left: {links:?}"
    );
    let tc = ns.tc_state().unwrap();
    assert!(tc.is_empty(), "tc left: {tc:?}");
}

/// One failed husk call: non-zero, one line on stderr naming `needle`, the
/// same as an error in the JSON log.
fn assert_one_line_error(w: &World, out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(
        stderr.contains(needle),
        "{stderr:?} does not name {needle:?}"
    );
    let log = std::fs::read_to_string(&w.log).unwrap_or_default();
    assert!(
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| e["level"] == "error" && e["msg"].as_str().unwrap().contains(needle)),
        "no error naming {needle:?} in the JSON log: {log:?}"
    );
}

/// Polls `state` until it says `status`.
fn wait_status(w: &World, id: &str, status: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = w.state(id);
        if state["status"] == status {
            return state;
        }
        assert!(Instant::now() < deadline, "{id} never {status}: {state}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// runtime.md "Operations": `delete` of a running container is an error
/// (without runc's `--force`) and leaves it running; `state` of a container
/// whose process has exited is `stopped` (also before anyone reaps its
/// pid); `kill` of a stopped container is an error, in runc's words.
#[test]
fn state_kill_and_delete_follow_the_containers_status() {
    let w = World::new();
    let looping = w.bundle("loop", &["sh", "-c", "while :; do sleep 0.1; done"], |_| {});
    let pid = w.run_detached(&looping, "s1");
    let out = w.husk(&["delete", "s1"]);
    assert_one_line_error(&w, &out, "it is running");
    assert_eq!(w.state("s1")["status"], "running");
    assert!(process_alive(pid.into()), "delete ended the container");
    w.ok(&["delete", "--force", "s1"]);
    wait_pid(pid, Duration::from_secs(30));

    let short = w.bundle("short", &["true"], |_| {});
    let pid_file = w.tmp.path().join("s2.pid");
    w.ok(&[
        "create",
        "--bundle",
        short.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "s2",
    ]);
    w.ok(&["start", "s2"]);
    // Not reaped yet: the proxy is a zombie child of this subreaper.
    let state = wait_status(&w, "s2", "stopped");
    assert_eq!(state["pid"], 0);
    for signal in ["TERM", "KILL"] {
        let out = w.husk(&["kill", "s2", signal]);
        assert_one_line_error(&w, &out, "container not running");
    }
    let pid: i32 = read_pid(&pid_file);
    assert_eq!(wait_pid(pid, Duration::from_secs(30)), 0);
    assert_eq!(w.state("s2")["status"], "stopped");
    w.ok(&["delete", "s2"]);
    w.assert_clean();
}

/// Two escapes, as a static program. The classic chroot escape: chroot
/// into a subdirectory while the working directory stays outside it,
/// climb `..` past the old root, chroot there. And, with CAP_SYS_ADMIN,
/// detach the container's root mount and re-enter the mount namespace,
/// which puts the caller at the namespace's root, whatever lies beneath
/// the container's. After each it looks for the agent's share of every
/// container's files.
const CHROOT_ESCAPE_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
static const char *agent_files(void) {
    struct stat st;
    return stat("/run/husk/shared", &st) == 0 ? "escaped" : "contained";
}
int main(void) {
    int ns = open("/proc/self/ns/mnt", O_RDONLY);
    if (ns < 0) { perror("open /proc/self/ns/mnt"); return 2; }
    mkdir("/escape", 0755);
    if (chroot("/escape") != 0) { perror("chroot /escape"); return 2; }
    for (int i = 0; i < 64; i++) chdir("..");
    if (chroot(".") != 0) { perror("chroot ."); return 2; }
    printf("chroot: %s\n", agent_files());
    umount2("/", MNT_DETACH);
    if (setns(ns, CLONE_NEWNS) != 0) { perror("setns"); return 2; }
    printf("setns: %s\n", agent_files());
    return 0;
}
"#;

/// A container is set up with pivot_root, not chroot: the agent leaves the
/// initramfs for a tmpfs root at boot, so that the container's mount
/// namespace holds only its own mounts (its root mount has nothing
/// beneath it to uncover), and a workload with CAP_SYS_CHROOT that breaks
/// out of a chroot lands in its own root, not in the agent's tree (where
/// every container's files are).
#[test]
fn a_chroot_escape_from_a_container_stays_in_its_root() {
    let w = World::new();
    let bundle = w.bundle("chroot", &["/escape-chroot"], |spec| {
        let mut process = spec.process().clone().unwrap();
        let mut caps = process.capabilities().clone().unwrap();
        for set in [
            caps.bounding().clone(),
            caps.effective().clone(),
            caps.permitted().clone(),
        ] {
            assert!(set.is_some());
        }
        let with_chroot = |set: &Option<oci_spec::runtime::Capabilities>| {
            let mut set = set.clone().unwrap_or_default();
            set.insert(oci_spec::runtime::Capability::SysChroot);
            set.insert(oci_spec::runtime::Capability::SysAdmin);
            Some(set)
        };
        caps.set_bounding(with_chroot(caps.bounding()));
        caps.set_effective(with_chroot(caps.effective()));
        caps.set_permitted(with_chroot(caps.permitted()));
        process.set_capabilities(Some(caps));
        spec.set_process(Some(process));
    });
    let source = w.tmp.path().join("escape.c");
    std::fs::write(&source, CHROOT_ESCAPE_C).unwrap();
    let built = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(bundle.join("rootfs/escape-chroot"))
        .arg(&source)
        .status()
        .expect("gcc (build-essential, installed by scripts/install-deps.sh)");
    assert!(built.success(), "gcc -static failed");
    let out = w.run_ok(&bundle, "chroot1");
    assert_eq!(out, "chroot: contained\nsetns: contained\n");
    w.assert_clean();
}

/// config.md "startContainer": the hooks' path resolves in the container
/// and they run in its namespaces (here: inside the VM, in the container's
/// mount and UTS namespaces) after `start`, before the workload execs,
/// with the container's state on stdin.
#[test]
fn start_container_hooks_run_in_the_container_before_the_workload() {
    let w = World::new();
    let bundle = w.bundle(
        "sc",
        &[
            "sh",
            "-c",
            "cat /tmp/hook; grep -o sc1 /tmp/state.json | head -1",
        ],
        |spec| {
            spec.set_hostname(Some("hooked".into()));
        },
    );
    set_hooks(
        &bundle,
        serde_json::json!({"startContainer": [{
            "path": "/bin/sh",
            "args": ["sh", "-c", "cat > /tmp/state.json; echo \"ran in $(hostname)\" > /tmp/hook"],
        }]}),
    );
    let out = w.run_ok(&bundle, "sc1");
    assert_eq!(out, "ran in hooked\nsc1\n");
    w.assert_clean();
}

/// runtime.md "Lifecycle": a failing poststart or poststop hook is a
/// warning, and the hooks after it and the lifecycle go on (start
/// succeeds, delete cleans up); each hook's state names its phase's
/// status: createRuntime and prestart "creating", poststart "running"
/// (even for a process that has already exited), poststop "stopped".
#[test]
fn failing_poststart_and_poststop_hooks_warn_and_every_hook_sees_its_phase() {
    let w = World::new();
    let log = w.tmp.path().join("hooks.log");
    let hook = |name: &str| logging_hook(&log, name);
    let failing = |name: &str| {
        serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("echo {name} broke >&2; exit 3")],
        })
    };
    let bundle = w.bundle("b", &["true"], |_| {});
    set_hooks(
        &bundle,
        serde_json::json!({
            "createRuntime": [hook("createRuntime")],
            "prestart": [hook("prestart")],
            "poststart": [failing("poststart"), hook("poststart")],
            "poststop": [failing("poststop"), hook("poststop")],
        }),
    );
    let pid_file = w.tmp.path().join("pid");
    w.ok(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "h2",
    ]);
    let pid: i32 = read_pid(&pid_file);
    w.ok(&["start", "h2"]);
    assert_eq!(wait_pid(pid, Duration::from_secs(60)), 0);
    w.ok(&["delete", "h2"]);
    w.assert_clean();

    let json_log = std::fs::read_to_string(&w.log).unwrap();
    for needle in ["poststart broke", "poststop broke"] {
        assert!(
            json_log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|e| e["level"] == "warning" && e["msg"].as_str().unwrap().contains(needle)),
            "no warning naming {needle:?}: {json_log}"
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let seen: Vec<(String, serde_json::Value)> = text
        .lines()
        .map(|l| {
            let (name, json) = l.split_once(' ').unwrap();
            (name.to_owned(), serde_json::from_str(json).unwrap())
        })
        .collect();
    let phases: Vec<(&str, &str)> = seen
        .iter()
        .map(|(n, s)| (n.as_str(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        phases,
        [
            ("prestart", "creating"),
            ("createRuntime", "creating"),
            ("poststart", "running"),
            ("poststop", "stopped"),
        ]
    );
    assert_eq!(seen[2].1["pid"], pid, "poststart sees the container's pid");
}

/// config.md "Linux process": an AppArmor profile or SELinux label the
/// runtime cannot apply fails `create` (as runc's does on a host without
/// the module): the guest kernel has neither, so the error names the field
/// and why, in one line, before any VM or state exists.
#[test]
fn an_apparmor_profile_or_selinux_label_fails_create_naming_the_field() {
    let w = World::new();
    let apparmor = w.bundle("aa", &["true"], |spec| {
        let mut process = spec.process().clone().unwrap();
        process.set_apparmor_profile(Some("docker-default".into()));
        spec.set_process(Some(process));
    });
    let selinux = w.bundle("se", &["true"], |spec| {
        let mut process = spec.process().clone().unwrap();
        process.set_selinux_label(Some("system_u:system_r:container_t:s0".into()));
        spec.set_process(Some(process));
    });
    for (bundle, field, lsm) in [
        (apparmor, "process.apparmorProfile", "no AppArmor"),
        (selinux, "process.selinuxLabel", "no SELinux"),
    ] {
        let _ = std::fs::remove_file(&w.log);
        let out = w.husk(&["create", "--bundle", bundle.to_str().unwrap(), "l1"]);
        assert_one_line_error(&w, &out, field);
        assert!(String::from_utf8_lossy(&out.stderr).contains(lsm));
        w.assert_clean();
    }
}

/// Sets `linux.resources.cpu.cpus` of `spec`.
fn set_cpuset(spec: &mut Spec, cpus: &str) {
    let mut linux = spec.linux().clone().unwrap();
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut cpu = resources.cpu().clone().unwrap_or_default();
    cpu.set_cpus(Some(cpus.to_owned()));
    resources.set_cpu(Some(cpu));
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
}

/// `linux.resources.cpu.cpus` is honoured in the guest (config-linux.md):
/// the VM gets a vCPU for CPU 1, and the container runs on it alone,
/// instead of failing with "out of range" in a one-vCPU VM.
#[test]
fn a_cpuset_gets_the_vm_the_cpus_it_names() {
    let w = World::new();
    let bundle = w.bundle(
        "cpus",
        &[
            "sh",
            "-c",
            "grep Cpus_allowed_list /proc/self/status; nproc",
        ],
        |spec| set_cpuset(spec, "1"),
    );
    let stdout = w.run_ok(&bundle, "cpus1");
    assert!(
        stdout.contains("Cpus_allowed_list:\t1\n"),
        "not on CPU 1 alone: {stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("1"), "{stdout}");
    w.assert_clean();
}

/// Bind mounts keep their source's name through the share (the guest's
/// mountinfo shows `.../volume-src`, not an index), and mount options are
/// honoured in the guest as runc honours them on a host: `ro`, `nosuid`,
/// `nodev`, `noexec` on a bind, `rshared` propagation, a tmpfs's `size`;
/// writes to the read-only bind fail (spec: config.md "mounts").
#[test]
fn bind_mounts_keep_their_names_and_mount_options_hold_in_the_guest() {
    let w = World::new();
    let source = w.tmp.path().join("volume-src");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("file"), "from the host\n").unwrap();
    let bundle = w.bundle(
        "mnt",
        &[
            "sh",
            "-c",
            "grep -E ' /data | /scratch | /shared ' /proc/self/mountinfo; cat /data/file; \
             touch /data/new 2>/dev/null && echo wrote || echo read-only",
        ],
        |spec| {
            let mut mounts = spec.mounts().clone().unwrap_or_default();
            mounts.push(mount(
                "/data",
                "bind",
                &source,
                &["rbind", "ro", "nosuid", "nodev", "noexec"],
            ));
            mounts.push(mount("/shared", "bind", &source, &["rbind", "rshared"]));
            mounts.push(mount("/scratch", "tmpfs", "tmpfs", &["nosuid", "size=1m"]));
            spec.set_mounts(Some(mounts));
        },
    );
    let stdout = w.run_ok(&bundle, "mnt1");
    let data = stdout
        .lines()
        .find(|l| l.contains(" /data "))
        .unwrap_or_else(|| panic!("no /data in mountinfo: {stdout}"));
    let fields: Vec<&str> = data.split_whitespace().collect();
    // mountinfo: id parent major:minor root mount-point options ...
    assert!(
        fields[3].ends_with("/volume-src"),
        "root {}: {data}",
        fields[3]
    );
    for option in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(
            fields[5].split(',').any(|o| o == option),
            "{option} missing: {data}"
        );
    }
    let scratch = stdout
        .lines()
        .find(|l| l.contains(" /scratch "))
        .unwrap_or_else(|| panic!("no /scratch in mountinfo: {stdout}"));
    assert!(scratch.contains("size=1024k"), "{scratch}");
    // Propagation: the rshared bind is a peer group of its own; the
    // default (private) one is in none.
    let shared = stdout
        .lines()
        .find(|l| l.contains(" /shared "))
        .unwrap_or_else(|| panic!("no /shared in mountinfo: {stdout}"));
    assert!(shared.contains(" shared:"), "{shared}");
    assert!(!data.contains(" shared:"), "{data}");
    assert!(stdout.contains("from the host\n"), "{stdout}");
    assert!(stdout.trim_end().ends_with("read-only"), "{stdout}");
    assert!(!source.join("new").exists());
    w.assert_clean();
}

/// What `linux.resources` asks of the block I/O and hugetlb controllers
/// is applied in the guest, as runc applies it on a host (config-linux.md
/// "Block IO", "Huge page limits"): the weight lands in `io.bfq.weight`
/// (the guest kernel has BFQ with group scheduling), the 2 MiB and 1 GiB
/// page limits in `hugetlb.*.max` (the VM's CPU offers 1 GiB pages), the
/// container's cgroup has `io.max` for throttling; and the guest has the
/// rdma and misc controllers.
#[test]
fn block_io_weight_and_hugepage_limits_hold_in_the_guest() {
    let w = World::new();
    let bundle = w.bundle(
        "blkio",
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/io.bfq.weight /sys/fs/cgroup/hugetlb.2MB.max \
             /sys/fs/cgroup/hugetlb.1GB.max; grep -o pdpe1gb /proc/cpuinfo | head -1; \
             test -e /sys/fs/cgroup/io.max && echo io.max; \
             cat /sys/fs/cgroup/cgroup.controllers",
        ],
        |spec| {
            let resources = serde_json::json!({
                "blockIO": {"weight": 500},
                "hugepageLimits": [
                    {"pageSize": "2MB", "limit": 4194304},
                    {"pageSize": "1GB", "limit": 1073741824}
                ]
            });
            let mut linux = spec.linux().clone().unwrap();
            linux.set_resources(Some(serde_json::from_value(resources).unwrap()));
            spec.set_linux(Some(linux));
        },
    );
    let stdout = w.run_ok(&bundle, "blkio1");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"default 500"), "{stdout}");
    assert!(lines.contains(&"4194304"), "{stdout}");
    assert!(lines.contains(&"1073741824"), "{stdout}");
    assert!(lines.contains(&"pdpe1gb"), "{stdout}");
    // io throttling (`blockIO.throttle*Device`) is there to write to.
    assert!(lines.contains(&"io.max"), "{stdout}");
    w.assert_clean();

    // The guest's root offers rdma and misc (the container's own cgroup
    // lists what its parent enabled for it).
    let root = w.bundle(
        "controllers",
        &["cat", "/sys/fs/cgroup/cgroup.controllers"],
        |spec| {
            let mut linux = spec.linux().clone().unwrap();
            let namespaces = linux.namespaces().clone().unwrap_or_default();
            linux.set_namespaces(Some(
                namespaces
                    .into_iter()
                    .filter(|ns| ns.typ() != LinuxNamespaceType::Cgroup)
                    .collect(),
            ));
            spec.set_linux(Some(linux));
        },
    );
    let stdout = w.run_ok(&root, "controllers1");
    for controller in ["io", "hugetlb", "rdma", "misc"] {
        assert!(
            stdout.split_whitespace().any(|c| c == controller),
            "{controller} missing: {stdout}"
        );
    }
    w.assert_clean();
}

/// A mount of `typ` from `source` at `destination` with `options`.
fn mount(
    destination: &str,
    typ: &str,
    source: impl AsRef<std::path::Path>,
    options: &[&str],
) -> oci_spec::runtime::Mount {
    oci_spec::runtime::MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source.as_ref())
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .expect("a mount from fixed parts")
}
