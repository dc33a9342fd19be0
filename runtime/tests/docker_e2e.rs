//! Docker end to end: a private containerd + dockerd (husk-tests' `docker`)
//! runs the same checks with each OCI runtime through containerd's runc
//! shim, the way `docker run --runtime=R` uses it in production: run, exit
//! codes, exec, logs, signals, pause, stop, an interactive terminal, an
//! OOM kill, volumes and security options; then nothing may be left behind.
//!
//! `docker_runc_peer` proves the harness and the checks with runc;
//! `docker_husk` runs them against husk's runc-compatible CLI.

use std::ops::Deref;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_tests::docker::checks::{self, timed};
use husk_tests::docker::pty::PtySession;
use husk_tests::docker::{self, DockerDaemon, Runtime};

/// The busybox image every check runs.
const IMAGE: &str = "husk-e2e-busybox:latest";
/// How long a condition a container must reach (a log line, a terminal
/// prompt) may take; under husk each container boots a VM on TCG.
const WAIT: Duration = Duration::from_secs(60);

#[test]
fn docker_runc_peer() {
    docker_checks("runc", &[]);
}

/// The same checks with `--runtime=husk`: each container in its own
/// microVM (QEMU/TCG on these machines).
#[test]
fn docker_husk() {
    let (_config_dir, husk) = docker::husk::test_runtime(Path::new(env!("CARGO_BIN_EXE_husk")));
    docker_checks("husk", &[husk]);
}

/// Every check, with containers run by `runtime` (`registrations` are the
/// runtimes dockerd does not have built in).
fn docker_checks(runtime: &str, registrations: &[Runtime]) {
    let started = Instant::now();
    let daemon = DockerDaemon::start(registrations)
        .unwrap_or_else(|e| panic!("the private containerd + dockerd did not start: {e:#}"));
    daemon
        .import_busybox(IMAGE)
        .unwrap_or_else(|e| panic!("cannot import the busybox image: {e:#}"));
    eprintln!(
        "[{runtime}] daemons up, image imported: {:?}",
        started.elapsed()
    );

    let c = Checks(checks::Checks {
        d: &daemon,
        runtime,
        image: IMAGE,
    });
    timed(runtime, "run: output and exit codes", || {
        c.run_output_and_exit_codes()
    });
    timed(
        runtime,
        "detached: exec, logs, kill, pause, stop TERM",
        || c.detached_lifecycle(),
    );
    timed(runtime, "stop: SIGTERM ignored, killed after -t 2", || {
        c.stop_kills_after_timeout()
    });
    timed(runtime, "run -it on a pty, resize", || {
        c.interactive_terminal()
    });
    timed(runtime, "--memory 64m: OOM kill", || {
        c.memory_limit_oom_kill()
    });
    timed(
        runtime,
        "-v, --read-only, --user, --cap-drop, --network",
        || c.options(),
    );

    let ids = checks::shut_down_clean(daemon, runtime);
    eprintln!(
        "[{runtime}] all checks passed, {} containers, {:?} in all",
        ids.len(),
        started.elapsed()
    );
}

/// The shared checks' helpers (`run`, `ok`, `inspect`...) and this file's
/// checks on top of them.
struct Checks<'a>(checks::Checks<'a>);

impl<'a> Deref for Checks<'a> {
    type Target = checks::Checks<'a>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Checks<'_> {
    /// Polls `docker logs name` until it shows `needle`.
    fn wait_for_log(&self, name: &str, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.d.docker(&["logs", name]);
            let logs = String::from_utf8_lossy(&out.stdout).into_owned();
            if logs.lines().any(|l| l.trim() == needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] docker logs {name} never showed {needle:?} within {WAIT:?}; logs: {logs:?}, stderr {:?}",
                self.runtime,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn name(&self, what: &str) -> String {
        format!("e2e-{}-{what}", self.runtime)
    }

    fn run_output_and_exit_codes(&self) {
        let out = self.run(&["--rm"], &["echo", "hi"]);
        assert_eq!(
            self.text(self.ok(&out, "docker run --rm IMAGE echo hi")),
            "hi",
            "[{}] docker run echo hi printed something else",
            self.runtime
        );
        let out = self.run(&["--rm"], &["sh", "-c", "exit 3"]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "[{}] docker run sh -c 'exit 3' must exit 3; stderr {:?}",
            self.runtime,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn detached_lifecycle(&self) {
        let name = self.name("long");
        let script = "trap 'echo usr1' USR1; trap 'echo term; exit 0' TERM; \
                      echo ready; while :; do sleep 0.1; done";
        let out = self.run(&["-d", "--name", &name], &["sh", "-c", script]);
        let id = self.text(self.ok(&out, "docker run -d"));
        assert_eq!(self.inspect(&name, "{{.State.Status}}"), "running");
        assert!(
            self.d.shim_socket(&id).exists(),
            "containerd's shim socket {} is not where the leftover check looks",
            self.d.shim_socket(&id).display()
        );
        self.wait_for_log(&name, "ready");

        let out = self
            .d
            .docker(&["exec", &name, "sh", "-c", "echo in; exit 4"]);
        assert_eq!(
            (self.text(&out).as_str(), out.status.code()),
            ("in", Some(4)),
            "[{}] docker exec sh -c 'echo in; exit 4' must print `in` and exit 4; stderr {:?}",
            self.runtime,
            String::from_utf8_lossy(&out.stderr)
        );

        self.ok(
            &self.d.docker(&["kill", "-s", "USR1", &name]),
            "docker kill -s USR1",
        );
        self.wait_for_log(&name, "usr1");

        self.ok(&self.d.docker(&["pause", &name]), "docker pause");
        assert_eq!(
            self.inspect(&name, "{{.State.Paused}} {{.State.Status}}"),
            "true paused",
            "[{}] after docker pause",
            self.runtime
        );
        self.ok(&self.d.docker(&["unpause", &name]), "docker unpause");
        assert_eq!(
            self.inspect(&name, "{{.State.Paused}} {{.State.Status}}"),
            "false running",
            "[{}] after docker unpause",
            self.runtime
        );

        // It traps TERM and exits 0: stop must not need its 10 s grace.
        let stopping = Instant::now();
        self.ok(&self.d.docker(&["stop", "-t", "10", &name]), "docker stop");
        let took = stopping.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "[{}] docker stop took {took:?}: SIGTERM did not reach the trap",
            self.runtime
        );
        assert_eq!(
            self.inspect(&name, "{{.State.Status}} {{.State.ExitCode}}"),
            "exited 0",
            "[{}] a container that exits 0 on SIGTERM, after docker stop",
            self.runtime
        );
        self.wait_for_log(&name, "term");

        self.ok(&self.d.docker(&["rm", &name]), "docker rm");
        let out = self.d.docker(&["inspect", &name]);
        assert!(
            !out.status.success(),
            "[{}] docker inspect still finds {name} after docker rm",
            self.runtime
        );
    }

    fn stop_kills_after_timeout(&self) {
        let name = self.name("stubborn");
        let script = "trap '' TERM; echo ready; while :; do sleep 0.1; done";
        let out = self.run(&["-d", "--name", &name], &["sh", "-c", script]);
        self.ok(&out, "docker run -d (ignoring SIGTERM)");
        self.wait_for_log(&name, "ready");
        let stopping = Instant::now();
        self.ok(
            &self.d.docker(&["stop", "-t", "2", &name]),
            "docker stop -t 2",
        );
        let took = stopping.elapsed();
        assert!(
            took >= Duration::from_secs(2),
            "[{}] docker stop -t 2 returned after {took:?}: the container did not ignore SIGTERM",
            self.runtime
        );
        assert_eq!(
            self.inspect(&name, "{{.State.Status}} {{.State.ExitCode}}"),
            "exited 137",
            "[{}] a container ignoring SIGTERM must be SIGKILLed by docker stop -t 2",
            self.runtime
        );
        self.ok(&self.d.docker(&["rm", &name]), "docker rm");
    }

    fn interactive_terminal(&self) {
        let cidfile = self.d.cidfile();
        let mut cmd = self.d.command();
        cmd.args(["run", "-it", "--rm", "--cidfile"])
            .arg(&cidfile)
            .arg(self.runtime_flag())
            .args([IMAGE, "sh"]);
        let mut pty = PtySession::spawn(cmd, 24, 80).expect("docker run -it on a new pty");
        let fail = |e: String| -> ! { panic!("[{}] docker run -it: {e}", self.runtime) };
        pty.expect("# ", WAIT).unwrap_or_else(|e| fail(e));
        pty.send("echo typed-$((1+1))\r").expect("typing");
        pty.expect("typed-2", WAIT).unwrap_or_else(|e| fail(e));
        expect_size(&mut pty, 24, 80).unwrap_or_else(|e| fail(e));
        pty.resize(40, 132).expect("TIOCSWINSZ on the pty");
        expect_size(&mut pty, 40, 132).unwrap_or_else(|e| fail(e));
        pty.send("exit 5\r").expect("typing");
        let status = pty.wait(WAIT).expect("waiting for docker run -it");
        let transcript = pty.transcript();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(5),
            "[{}] docker run -it must exit with the shell's `exit 5`; terminal:\n{transcript}",
            self.runtime
        );
    }

    fn memory_limit_oom_kill(&self) {
        let name = self.name("oom");
        let hog = "x=a; while :; do x=\"$x$x\"; done";
        let out = self.run(&["--name", &name, "--memory", "64m"], &["sh", "-c", hog]);
        assert_eq!(
            out.status.code(),
            Some(137),
            "[{}] a shell doubling a string under --memory 64m must be OOM-killed (137); stderr {:?}",
            self.runtime,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            self.inspect(&name, "{{.State.OOMKilled}}"),
            "true",
            "[{}] docker inspect must report the OOM kill",
            self.runtime
        );
        self.ok(&self.d.docker(&["rm", &name]), "docker rm");
    }

    fn options(&self) {
        // A bind-mounted host directory, both ways.
        let host = self.d.root().join("volume");
        std::fs::create_dir(&host).expect("host volume directory");
        std::fs::write(host.join("in.txt"), "from-host\n").expect("host file");
        let volume = format!("{}:/data", host.display());
        let out = self.run(
            &["--rm", "-v", &volume],
            &[
                "sh",
                "-c",
                "cat /data/in.txt; echo from-container > /data/out.txt",
            ],
        );
        assert_eq!(
            self.text(self.ok(&out, "docker run -v")),
            "from-host",
            "[{}] the container must read the host's file through -v",
            self.runtime
        );
        let written = std::fs::read_to_string(host.join("out.txt")).unwrap_or_default();
        assert_eq!(
            written, "from-container\n",
            "[{}] the host must see the file the container wrote through -v",
            self.runtime
        );

        // --read-only: the same write succeeds without it.
        self.ok(
            &self.run(&["--rm"], &["touch", "/probe"]),
            "touch / (writable)",
        );
        let out = self.run(&["--rm", "--read-only"], &["touch", "/probe"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && err.contains("Read-only file system"),
            "[{}] writing / under --read-only must fail with EROFS: {} {err:?}",
            self.runtime,
            out.status
        );

        let out = self.run(&["--rm", "--user", "1000"], &["id", "-u"]);
        assert_eq!(
            self.text(self.ok(&out, "docker run --user 1000")),
            "1000",
            "[{}] --user 1000",
            self.runtime
        );

        // --cap-drop ALL: no effective capabilities, unlike the default set.
        let capeff = |flags: &[&str]| {
            let mut all = vec!["--rm"];
            all.extend_from_slice(flags);
            let out = self.run(&all, &["grep", "CapEff", "/proc/self/status"]);
            let line = self.text(self.ok(&out, "grep CapEff"));
            let hex = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            u64::from_str_radix(&hex, 16)
                .unwrap_or_else(|_| panic!("[{}] unexpected CapEff line {line:?}", self.runtime))
        };
        assert_ne!(
            capeff(&[]),
            0,
            "[{}] the default capability set is empty",
            self.runtime
        );
        assert_eq!(
            capeff(&["--cap-drop", "ALL"]),
            0,
            "[{}] --cap-drop ALL must leave CapEff 0",
            self.runtime
        );

        let out = self.run(&["--rm", "--network", "none"], &["cat", "/proc/net/dev"]);
        let dev = self.text(self.ok(&out, "docker run --network none"));
        let interfaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(
            interfaces,
            ["lo"],
            "[{}] --network none must leave only lo: {dev}",
            self.runtime
        );
    }
}

/// Asks the container's shell for its terminal size until it answers
/// `rows cols` (a resize reaches the container asynchronously).
fn expect_size(pty: &mut PtySession, rows: u16, cols: u16) -> Result<(), String> {
    let want = format!("{rows} {cols}");
    let mut last = String::new();
    for _ in 0..20 {
        pty.send("stty size\r").map_err(|e| e.to_string())?;
        match pty.expect(&want, Duration::from_secs(1)) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(format!("`stty size` never printed {want:?}: {last}"))
}
