//! `husk run` of `/bin/true` end to end, split by stage, beside `runc run`
//! and `crun run` of the same busybox bundle (interleaved, one run); then
//! the host memory of a sandbox (`husk run --detach` of a sleeping
//! container). Run with `cargo bench -p husk-runtime --bench oci_run` as
//! root, after `make guest`. On a host whose KVM cannot run Linux (these
//! machines) the VM is QEMU/TCG, so the figures are informational.
//!
//! The stages come from husk's own JSON log at `log_level = "info"`: each
//! stage is one line with a `stage` field and an RFC 3339 `time`, on the
//! same clock as the bench's own `SystemTime` readings.
//!
//! Whatever it creates (containers, sandboxes, their processes, mounts, the
//! temporary directory) is taken down on the way out, failed or not.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use husk_runtime::host_process::{HostProcess, Stat};
use husk_runtime::sandbox::share;
use husk_runtime::store::Store;
use husk_tests::bench::{median, peer_run, peers};
use husk_tests::{containers, guest, rootfs};

/// Timed `husk run`s (each followed by one run of every peer).
const RUNS: usize = 10;
/// Sandboxes whose memory is measured, one after another.
const MEMORY_SANDBOXES: usize = 3;
/// How long one husk command may take before the bench gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a detached sandbox is left before its memory is read, so that
/// what `run --detach` set in motion (the container's start) has settled.
const SETTLE: Duration = Duration::from_secs(2);

/// The stages husk logs, in order, each with the interval that ends at it.
const STAGES: [(&str, &str); 6] = [
    ("cli", "spawn → `cli` (husk exec'd, config loaded)"),
    (
        "sandbox-process",
        "→ `sandbox-process` (sandbox process started)",
    ),
    ("vm-started", "→ `vm-started` (QEMU spawned)"),
    (
        "agent-answers",
        "→ `agent-answers` (guest booted, agent up)",
    ),
    ("container-created", "→ `container-created`"),
    ("exited", "→ `exited` (started, /bin/true ran)"),
];
/// The last interval: from the guest process's exit to `husk run` returning.
const LAST_STAGE: &str = "→ run returned (delete: VM down, cleanup)";

fn main() {
    if let Err(e) = bench() {
        eprintln!("oci_run: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<(), String> {
    // Detached sandboxes' processes become ours once `husk run --detach`
    // exits, so that they are reaped here rather than left as zombies.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut world = World::new()?;
    let bundle_true = world.bundle("true", &["/bin/true"])?;
    let bundle_sleep = world.bundle("sleep", &["sleep", "3600"])?;
    let peers = peers();

    // One untimed round first: page cache, the guest image's first read.
    world.husk_run(&bundle_true, "warmup")?;
    for peer in &peers {
        peer_run(peer, &bundle_true, &format!("hkb-warmup-{peer}"))?;
    }

    let mut husk = Vec::new();
    let mut peer_times = vec![Vec::new(); peers.len()];
    for round in 0..RUNS {
        husk.push(world.husk_run(&bundle_true, &format!("run{round}"))?);
        for (i, peer) in peers.iter().enumerate() {
            let id = format!("hkb-{}-{round}-{peer}", std::process::id());
            peer_times[i].push(peer_run(peer, &bundle_true, &id)?);
        }
    }
    print!("{}", timing_report(&husk, &peers, &peer_times));

    let mut memory = Vec::new();
    for n in 0..MEMORY_SANDBOXES {
        memory.push(world.sandbox_memory(&bundle_sleep, &format!("mem{n}"))?);
    }
    print!("{}", memory_report(&memory));
    world.check_clean()
}

/// The state root, sandbox root, configuration and logs of this bench, all
/// under one temporary directory.
struct World {
    root: PathBuf,
    sandboxes: PathBuf,
    config: PathBuf,
    logs: PathBuf,
    /// The host processes of every sandbox seen, killed on the way out if
    /// `delete` left any of them.
    seen: Vec<HostProcess>,
    // Last, so that it is removed after the sandboxes (whose binds reach
    // into it) are down.
    tmp: tempfile::TempDir,
}

impl World {
    fn new() -> Result<Self, String> {
        // A short path: sandbox sockets live under it.
        let tmp = tempfile::Builder::new()
            .prefix("hkb")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temporary directory: {e}"))?;
        let artifacts = guest::artifacts(&tmp.path().join("guest"))?;
        let world = Self {
            root: tmp.path().join("root"),
            sandboxes: tmp.path().join("vm"),
            config: tmp.path().join("husk.toml"),
            logs: tmp.path().join("logs"),
            seen: Vec::new(),
            tmp,
        };
        std::fs::create_dir_all(&world.logs).map_err(|e| format!("logs: {e}"))?;
        std::fs::write(
            &world.config,
            format!(
                "hypervisor = \"qemu\"\nsandbox_root = \"{}\"\nlog_level = \"info\"\n\
                 [guest]\nkernel = \"{}\"\nimage = \"{}\"\nboot_timeout_secs = 120\n",
                world.sandboxes.display(),
                artifacts.kernel.display(),
                artifacts.initrd.display()
            ),
        )
        .map_err(|e| format!("config: {e}"))?;
        Ok(world)
    }

    /// A busybox bundle whose process runs `args` (no terminal).
    fn bundle(&self, name: &str, args: &[&str]) -> Result<PathBuf, String> {
        let dir = self.tmp.path().join(name);
        rootfs::busybox(&dir.join("rootfs")).map_err(|e| format!("busybox rootfs: {e}"))?;
        // No terminal: oci-spec's default process has none.
        let spec = containers::spec(args);
        spec.save(dir.join("config.json"))
            .map_err(|e| format!("config.json: {e}"))?;
        Ok(dir)
    }

    fn command(&self, log: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
        c.arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(&self.config)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json")
            .args(args);
        c
    }

    /// Runs `husk ARGS` to completion with its log in `log`. stderr goes to
    /// a file, never a pipe: the proxies a detached run leaves behind
    /// inherit it and would hold a pipe open.
    fn husk(&mut self, log: &Path, args: &[&str]) -> Result<(), String> {
        let err_path = log.with_extension("stderr");
        let err = File::create(&err_path).map_err(|e| format!("stderr file: {e}"))?;
        let child = self
            .command(log, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawning husk: {e}"))?;
        let status = wait_child(child, COMMAND_TIMEOUT)
            .map_err(|e| format!("husk {}: {e}", args.join(" ")))?;
        if !status.success() {
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            return Err(format!(
                "husk {}: {status}: {}",
                args.join(" "),
                stderr.trim()
            ));
        }
        Ok(())
    }

    /// One timed `husk run --bundle BUNDLE ID` and its stages.
    fn husk_run(&mut self, bundle: &Path, id: &str) -> Result<RunSample, String> {
        let log = self.logs.join(format!("{id}.json"));
        let bundle = path_str(bundle)?;
        let spawned = SystemTime::now();
        let started = Instant::now();
        self.husk(&log, &["run", "--bundle", bundle, id])?;
        let total = started.elapsed();
        let text = std::fs::read_to_string(&log).map_err(|e| format!("{id}'s log: {e}"))?;
        let logged = stage_times(&text);
        let mut ends = Vec::with_capacity(STAGES.len());
        for (stage, _) in STAGES {
            let at = logged
                .get(stage)
                .ok_or_else(|| format!("{id}: no `{stage}` stage in the log:\n{text}"))?;
            ends.push(at.duration_since(spawned).unwrap_or(Duration::ZERO));
        }
        Ok(RunSample { ends, total })
    }

    /// `husk run --detach` of a sleeping container: the memory of its
    /// sandbox process, the processes under it (QEMU) and its init proxy;
    /// then `husk delete --force`.
    fn sandbox_memory(&mut self, bundle: &Path, id: &str) -> Result<Vec<Usage>, String> {
        let log = self.logs.join(format!("{id}.json"));
        let pid_file = self.tmp.path().join(format!("{id}.pid"));
        self.husk(
            &log,
            &[
                "run",
                "--detach",
                "--bundle",
                path_str(bundle)?,
                "--pid-file",
                path_str(&pid_file)?,
                id,
            ],
        )?;
        let proxy: i32 = std::fs::read_to_string(&pid_file)
            .map_err(|e| format!("{id}'s pid file: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("{id}'s pid file: {e}"))?;
        let record = Store::new(&self.root)
            .load(id)
            .map_err(|e| format!("{id}'s record: {e}"))?;
        let sandbox = record
            .sandbox
            .ok_or_else(|| format!("{id}: no sandbox process recorded"))?;
        let mut processes = vec![(sandbox.pid, "sandbox process".to_owned())];
        for pid in descendants(sandbox.pid) {
            processes.push((pid, comm(pid)));
        }
        processes.push((proxy, "init proxy".to_owned()));
        self.seen.extend(
            processes
                .iter()
                .filter_map(|(pid, _)| HostProcess::of(*pid)),
        );

        std::thread::sleep(SETTLE);
        let mut usage = Vec::new();
        for (pid, name) in processes {
            usage.push(Usage::read(pid, name)?);
        }
        self.husk(&log, &["delete", "--force", id])?;
        let gone = wait_until(Duration::from_secs(30), || {
            reap_children();
            self.seen.iter().all(|p| !p.is_alive())
        });
        if !gone {
            return Err(format!("{id}: processes left after delete --force"));
        }
        Ok(usage)
    }

    /// Errors unless nothing of any container is left.
    fn check_clean(&self) -> Result<(), String> {
        let left = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        if left(&self.root) > 0 || left(&self.sandboxes) > 0 {
            return Err("state or sandbox directories left behind".into());
        }
        if share::has_mounts_under(self.tmp.path()) {
            return Err("mounts left behind".into());
        }
        if self.seen.iter().any(HostProcess::is_alive) {
            return Err("sandbox processes left behind".into());
        }
        Ok(())
    }
}

impl Drop for World {
    /// Takes down whatever a failure left: containers (through husk), then
    /// their processes and mounts if `delete` could not.
    fn drop(&mut self) {
        let log = self.logs.join("cleanup.json");
        let ids = Store::new(&self.root).ids().unwrap_or_default();
        for id in ids {
            if let Err(e) = self.husk(&log, &["delete", "--force", &id]) {
                eprintln!("oci_run: cleanup: {e}");
            }
        }
        let seen = std::mem::take(&mut self.seen);
        for process in &seen {
            if process.signal(libc::SIGKILL) {
                eprintln!("oci_run: cleanup: killed {} left behind", process.pid);
            }
        }
        wait_until(Duration::from_secs(10), || {
            reap_children();
            seen.iter().all(|p| !p.is_alive())
        });
        share::unmount_all_under(self.tmp.path());
        if share::has_mounts_under(self.tmp.path()) {
            // The directory's removal must never reach through a bind into
            // what it shares: keep it.
            eprintln!(
                "oci_run: cleanup: mounts remain under {}; not removing it",
                self.tmp.path().display()
            );
            self.tmp.disable_cleanup(true);
        }
    }
}

/// One `husk run`: when each stage was logged, relative to the spawn (in
/// [`STAGES`] order), and the whole run.
struct RunSample {
    ends: Vec<Duration>,
    total: Duration,
}

impl RunSample {
    /// The intervals between consecutive stages, the last one ending when
    /// `run` returned.
    fn intervals(&self) -> Vec<Duration> {
        let mut bounds = vec![Duration::ZERO];
        bounds.extend(&self.ends);
        bounds.push(self.total);
        bounds
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .collect()
    }
}

/// When each stage was first logged in `log` (JSON lines with a `stage`).
fn stage_times(log: &str) -> HashMap<String, SystemTime> {
    let mut times = HashMap::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(stage), Some(time)) = (v["stage"].as_str(), v["time"].as_str()) else {
            continue;
        };
        let Some(nanos) = chrono::DateTime::parse_from_rfc3339(time)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .and_then(|n| u64::try_from(n).ok())
        else {
            continue;
        };
        times
            .entry(stage.to_owned())
            .or_insert(UNIX_EPOCH + Duration::from_nanos(nanos));
    }
    times
}

fn timing_report(husk: &[RunSample], peers: &[&str], peer_times: &[Vec<Duration>]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = String::new();
    let names = peers.join(", ");
    let _ = writeln!(
        out,
        "husk run of /bin/true: median of {RUNS}, interleaved with {names}\n"
    );
    let _ = writeln!(out, "| stage | median |");
    let _ = writeln!(out, "| --- | --- |");
    let intervals: Vec<Vec<Duration>> = husk.iter().map(RunSample::intervals).collect();
    let labels = STAGES.iter().map(|(_, label)| *label).chain([LAST_STAGE]);
    for (i, label) in labels.enumerate() {
        let column: Vec<Duration> = intervals.iter().map(|v| v[i]).collect();
        let _ = writeln!(out, "| {label} | {:.0} ms |", ms(median(&column)));
    }
    let totals: Vec<Duration> = husk.iter().map(|s| s.total).collect();
    let husk_total = median(&totals);
    let _ = writeln!(
        out,
        "| total (median of the totals) | {:.0} ms |\n",
        ms(husk_total)
    );

    let _ = writeln!(out, "| runtime | median | husk / runtime |");
    let _ = writeln!(out, "| --- | --- | --- |");
    let _ = writeln!(out, "| husk run | {:.1} ms | 1.00 |", ms(husk_total));
    for (peer, times) in peers.iter().zip(peer_times) {
        let m = median(times);
        let _ = writeln!(
            out,
            "| {peer} run | {:.1} ms | {:.1} |",
            ms(m),
            husk_total.as_secs_f64() / m.as_secs_f64()
        );
    }
    out.push('\n');
    out
}

/// One process's memory, from `/proc/<pid>/smaps_rollup`.
struct Usage {
    name: String,
    rss_kib: u64,
    pss_kib: u64,
    /// Of `pss_kib`, shared memory: the guest's RAM is a shared memfd.
    pss_shmem_kib: u64,
}

impl Usage {
    fn read(pid: i32, name: String) -> Result<Self, String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .map_err(|e| format!("{name} ({pid}): smaps_rollup: {e}"))?;
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| format!("{name} ({pid}): no {key} in smaps_rollup"))
        };
        Ok(Self {
            rss_kib: field("Rss:")?,
            pss_kib: field("Pss:")?,
            // Older kernels do not split PSS.
            pss_shmem_kib: field("Pss_Shmem:").unwrap_or(0),
            name,
        })
    }
}

fn memory_report(sandboxes: &[Vec<Usage>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "host memory of one sandbox (sleeping container), median of {}\n",
        sandboxes.len()
    );
    let _ = writeln!(
        out,
        "| process | RSS | PSS | of which shared memory (guest RAM) |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    // Rows by process name, in the order of the first sandbox.
    let names: Vec<&str> = sandboxes
        .first()
        .map(|s| s.iter().map(|u| u.name.as_str()).collect())
        .unwrap_or_default();
    for name in names {
        memory_row(&mut out, name, sandboxes, |u| u.name == name);
    }
    memory_row(&mut out, "total", sandboxes, |_| true);
    out
}

/// One table row: the medians over `sandboxes` of the sums over the
/// processes that `include` picks.
fn memory_row(
    out: &mut String,
    label: &str,
    sandboxes: &[Vec<Usage>],
    include: impl Fn(&Usage) -> bool,
) {
    let column = |pick: fn(&Usage) -> u64| {
        let sums: Vec<u64> = sandboxes
            .iter()
            .map(|s| s.iter().filter(|u| include(u)).map(pick).sum())
            .collect();
        median(&sums) as f64 / 1024.0
    };
    let _ = writeln!(
        out,
        "| {label} | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        column(|u| u.rss_kib),
        column(|u| u.pss_kib),
        column(|u| u.pss_shmem_kib)
    );
}

/// Waits for `child` up to `timeout`, blocking (so that the time measured
/// is not rounded up to a polling interval); kills it past that.
fn wait_child(mut child: Child, timeout: Duration) -> Result<ExitStatus, String> {
    let process = HostProcess::of(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(format!("waiting: {e}")),
        Err(_) => {
            if let Some(p) = process {
                p.signal(libc::SIGKILL);
            }
            let _ = rx.recv_timeout(Duration::from_secs(10));
            Err(format!("no exit within {timeout:?}: killed"))
        }
    }
}

/// Polls `done` every 20 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reaps whichever of our children (adopted ones included) have exited.
fn reap_children() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Every process below `pid`, found by the parent pids in `/proc`.
fn descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| Some((p, Stat::read(p)?.ppid)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| format!("pid {pid}"))
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}
