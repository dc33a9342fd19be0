//! `make bench-pod` (tests/bench/pod-start.sh): Kubernetes pod start and
//! host memory per pod, husk's shim (CRI handler `husk`) beside
//! containerd's runc shim (handler `runc`), in one private containerd
//! (husk-tests' `containerd`: Debian's containerd 1.6 with its CRI plugin,
//! in a network namespace of its own, CNI bridge, offline busybox and pause
//! images), spoken to over CRI as a kubelet would.
//!
//! Each round runs one pod per handler, the two taking turns going first:
//! `RunPodSandbox` → `CreateContainer` (busybox `sleep 3600`) →
//! `StartContainer` → `ContainerStatus` polled until RUNNING. "Pod start"
//! is the time from the `RunPodSandbox` call to the first RUNNING status.
//! Then, with the pod running and settled for [`SETTLE`], the PSS of its
//! host processes is read; then the pod is stopped and removed, and its
//! processes must be gone before the next pod. One untimed warm-up pod per
//! handler comes first (first-use costs: snapshots, page cache).
//!
//! What a pod's host processes are, and how they are found:
//!
//! - its shim: the `containerd-shim-*` process started by this containerd
//!   (`-address <its socket>`) for this pod (`-id <pod id>`; the shim of a
//!   pod is named by its sandbox's ID, both husk's and runc's);
//! - every descendant of that shim: for husk, QEMU (which the shim spawns;
//!   the shim itself serves the vhost-user devices and talks to the agent);
//!   for runc, the pause and `sleep` processes (the shim is their
//!   subreaper);
//! - for husk, also any process whose command line names the pod's sandbox
//!   directory under husk's `sandbox_root` (QEMU does, through its
//!   vhost-user sockets), in case it were not the shim's descendant.
//!
//! containerd itself serves every pod and is counted for none. Processes
//! that mention the pod or container ID without being counted (there
//! should be none) are printed.
//!
//! Usage: husk-pod-bench --shim PATH [--rounds N] [--out FILE]
//! (`POD_BENCH_ROUNDS` sets the default of `--rounds`, 5.)

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_tests::bench::{mappings, median};
use husk_tests::containerd::cri::{api, state_name, ContainerConfig, Cri};
use husk_tests::containerd::{images, Containerd, ShimRuntime, K8S_NAMESPACE};
use husk_tests::docker;

/// The handlers measured, in the order of the table; the last is the peer
/// the ratios are taken against.
const HANDLERS: [&str; 2] = ["husk", "runc"];
/// How long a pod may take to get its container running (husk boots a VM
/// on TCG here) and its processes to exit after removal.
const WAIT: Duration = Duration::from_secs(120);
/// How long a running pod is left alone before its memory is read, so
/// that start-up transients (the guest's boot, the shim's first requests)
/// are over.
const SETTLE: Duration = Duration::from_secs(2);
/// How often `ContainerStatus` is polled while waiting for RUNNING.
const POLL: Duration = Duration::from_millis(10);
/// QEMU's guest RAM as husk configures it (`memory-backend-memfd`): QEMU
/// names the memfd after the object's type. Mapped by QEMU and by the
/// shim, which serves the vhost-user devices.
const QEMU_RAM: &str = "/memfd:memory-backend-memfd (deleted)";

struct Options {
    shim: PathBuf,
    rounds: usize,
    out: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run(parse_args()) {
        eprintln!("husk-pod-bench: {e:#}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("usage: husk-pod-bench --shim PATH [--rounds N] [--out FILE]");
    std::process::exit(2)
}

fn parse_args() -> Options {
    let rounds = std::env::var("POD_BENCH_ROUNDS")
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| usage()))
        .unwrap_or(5);
    let mut opts = Options {
        shim: PathBuf::new(),
        rounds,
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--shim" => opts.shim = value().into(),
            "--rounds" => opts.rounds = value().parse().unwrap_or_else(|_| usage()),
            "--out" => opts.out = Some(value().into()),
            _ => usage(),
        }
    }
    if opts.shim.as_os_str().is_empty() || opts.rounds == 0 {
        usage()
    }
    opts
}

/// One pod's measurements.
struct Round {
    /// `RunPodSandbox` call → its answer.
    sandbox: Duration,
    /// `CreateContainer` call → its answer.
    create: Duration,
    /// `StartContainer` call → the first RUNNING status.
    start: Duration,
    /// `RunPodSandbox` call → the first RUNNING status.
    pod_start: Duration,
    /// `StopPodSandbox` + `RemovePodSandbox`, and the pod's processes gone.
    teardown: Duration,
    memory: PodMemory,
}

/// One handler's results.
#[derive(Default)]
struct Results {
    rounds: Vec<Round>,
    failures: Vec<String>,
}

fn run(opts: Options) -> Result<()> {
    // A short path: husk's sandbox sockets go under it.
    let dir = tempfile::Builder::new().prefix("husk-pb-").tempdir()?;
    let husk = docker::husk::runtime(dir.path(), &opts.shim)?;
    let config_path = PathBuf::from(husk.args.last().context("husk's --config argument")?);
    let config = husk_runtime::config::Config::load(Some(&config_path))
        .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
    let mut shim = ShimRuntime::new(
        "husk",
        husk_runtime::shim::RUNTIME_NAME,
        opts.shim.parent().map(Path::to_owned),
    );
    shim.env.push((
        "HUSK_CONFIG".into(),
        config_path.to_string_lossy().into_owned(),
    ));
    shim.state_dirs = husk.state_dirs;

    let cd = Containerd::start(&[shim])?;
    cd.import_images()?;
    let cri = cd.cri()?;
    let bench = Bench {
        cd: &cd,
        cri: &cri,
        husk_config: &config,
    };

    for handler in HANDLERS {
        match bench.pod(handler, "warmup") {
            Ok(r) => eprintln!("warm-up {handler}: pod start {}", ms(r.pod_start)),
            Err(e) => eprintln!("warm-up {handler}: failed: {e:#}"),
        }
    }
    let mut results: Vec<Results> = HANDLERS.iter().map(|_| Results::default()).collect();
    for round in 1..=opts.rounds {
        // The handlers take turns going first, so neither always runs on
        // the heels of the other's teardown.
        let mut order: Vec<usize> = (0..HANDLERS.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let handler = HANDLERS[i];
            match bench.pod(handler, &round.to_string()) {
                Ok(r) => {
                    eprintln!(
                        "round {round} {handler}: pod start {}, RunPodSandbox {}, PSS {:.1} MiB",
                        ms(r.pod_start),
                        ms(r.sandbox),
                        mib(r.memory.pss_kib())
                    );
                    results[i].rounds.push(r);
                }
                Err(e) => {
                    eprintln!("round {round} {handler}: failed: {e:#}");
                    results[i].failures.push(format!("{e:#}"));
                }
            }
        }
    }

    let report = report(&results, &opts, &config);
    print!("{report}");
    if let Some(out) = &opts.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    drop(cri);
    let left = cd.shutdown();
    if !left.is_empty() {
        bail!("the private containerd left:\n{left}");
    }
    if results.iter().any(|r| r.rounds.is_empty()) {
        bail!("a handler produced no measurement (see above)");
    }
    Ok(())
}

struct Bench<'a> {
    cd: &'a Containerd,
    cri: &'a Cri,
    husk_config: &'a husk_runtime::config::Config,
}

impl Bench<'_> {
    /// One pod of `handler`, measured, then stopped and removed whatever
    /// happened.
    fn pod(&self, handler: &str, tag: &str) -> Result<Round> {
        let pod = self.cd.pod_config(&format!("bench-{handler}-{tag}"))?;
        let pod_config = pod.build();
        let started = Instant::now();
        let pod_id = self.cri.run_pod_sandbox(&pod_config, handler)?;
        let sandbox = started.elapsed();
        let measured = self.measure(handler, &pod_id, &pod_config, started, sandbox);

        let stopping = Instant::now();
        let stopped = self
            .cri
            .stop_pod_sandbox(&pod_id)
            .and_then(|()| self.cri.remove_pod_sandbox(&pod_id));
        let pids: Vec<i32> = measured
            .as_ref()
            .map(|r| r.memory.processes.iter().map(|p| p.pid).collect())
            .unwrap_or_default();
        let gone = wait_gone(&pids, WAIT);
        let teardown = stopping.elapsed();
        let mut round = measured?;
        stopped?;
        if !gone.is_empty() {
            bail!("pod {pod_id}: processes {gone:?} still there {WAIT:?} after its removal");
        }
        round.teardown = teardown;
        Ok(round)
    }

    fn measure(
        &self,
        handler: &str,
        pod_id: &str,
        pod_config: &api::PodSandboxConfig,
        started: Instant,
        sandbox: Duration,
    ) -> Result<Round> {
        let sleeper = ContainerConfig::new("sleeper", images::BUSYBOX)
            .command(&["sleep", "3600"])
            .build();
        let creating = Instant::now();
        let id = self.cri.create_container(pod_id, &sleeper, pod_config)?;
        let create = creating.elapsed();
        let starting = Instant::now();
        self.cri.start_container(&id)?;
        self.wait_running(&id)?;
        let start = starting.elapsed();
        let pod_start = started.elapsed();

        thread::sleep(SETTLE);
        let sandbox_dir = (handler == "husk")
            .then(|| husk_runtime::shim::sandbox_dir(self.husk_config, K8S_NAMESPACE, pod_id))
            .flatten()
            .map(|d| d.path().to_owned());
        let memory = PodMemory::read(&self.cd.socket(), pod_id, sandbox_dir.as_deref())?;
        if handler == "husk" && memory.guest_ram_mib.is_none() {
            bail!("pod {pod_id}: no QEMU among its processes: {memory:?}");
        }
        let stray = memory.uncounted(&[pod_id, &id]);
        if !stray.is_empty() {
            eprintln!("pod {pod_id}: processes naming it but not counted: {stray:#?}");
        }
        Ok(Round {
            sandbox,
            create,
            start,
            pod_start,
            teardown: Duration::ZERO,
            memory,
        })
    }

    fn wait_running(&self, id: &str) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.cri.container_status(id)?;
            if status.state == api::ContainerState::ContainerRunning as i32 {
                return Ok(());
            }
            if status.state == api::ContainerState::ContainerExited as i32 {
                bail!("container {id} exited: {status:?}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "container {id} still {} after {WAIT:?}",
                    state_name(status.state)
                );
            }
            thread::sleep(POLL);
        }
    }
}

/// What a process of a pod is, for the split of its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `containerd-shim-*-v2`.
    Shim,
    /// `qemu-system-*`.
    Vmm,
    /// Anything else: the pause and container processes under runc.
    Container,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Shim => "shim",
            Role::Vmm => "VMM",
            Role::Container => "pause or container",
        }
    }
}

/// One counted process.
#[derive(Debug, Clone)]
struct Counted {
    pid: i32,
    exe: String,
    cmdline: String,
    role: Role,
    /// PSS of the whole process (`/proc/PID/smaps_rollup`).
    pss_kib: u64,
    /// The part of `pss_kib` that is the guest RAM's memfd.
    guest_ram_pss_kib: u64,
}

/// The host processes of one pod and their memory.
#[derive(Debug, Clone)]
struct PodMemory {
    processes: Vec<Counted>,
    /// The VM's configured memory (QEMU's `-m`), for husk.
    guest_ram_mib: Option<u64>,
}

impl PodMemory {
    /// Finds the processes of pod `pod_id` of the containerd on `socket`
    /// (see the module doc) and reads their PSS.
    fn read(socket: &Path, pod_id: &str, sandbox_dir: Option<&Path>) -> Result<Self> {
        let all = proc_table();
        let socket = socket.to_string_lossy();
        let shims: Vec<i32> = all
            .iter()
            .filter(|p| p.exe.starts_with("containerd-shim-"))
            .filter(|p| arg_after(&p.argv, "-id") == Some(pod_id))
            .filter(|p| arg_after(&p.argv, "-address") == Some(socket.as_ref()))
            .map(|p| p.pid)
            .collect();
        if shims.is_empty() {
            bail!("no shim with -id {pod_id} -address {socket}");
        }
        let mut pids: BTreeSet<i32> = shims.iter().copied().collect();
        // Descendants, to a fixed point (the table is not in tree order).
        loop {
            let before = pids.len();
            for p in &all {
                if pids.contains(&p.ppid) {
                    pids.insert(p.pid);
                }
            }
            if pids.len() == before {
                break;
            }
        }
        if let Some(dir) = sandbox_dir {
            let dir = dir.to_string_lossy();
            pids.extend(
                all.iter()
                    .filter(|p| p.argv.iter().any(|a| a.contains(dir.as_ref())))
                    .map(|p| p.pid),
            );
        }
        let mut processes = Vec::new();
        let mut guest_ram_mib = None;
        for p in all.iter().filter(|p| pids.contains(&p.pid)) {
            let role = if p.exe.starts_with("containerd-shim-") {
                Role::Shim
            } else if p.exe.starts_with("qemu-system-") {
                guest_ram_mib = arg_after(&p.argv, "-m").and_then(parse_mib);
                Role::Vmm
            } else {
                Role::Container
            };
            let pss_kib = rollup_pss_kib(p.pid)?;
            let guest_ram_pss_kib = mappings(p.pid)
                .map_err(anyhow::Error::msg)?
                .iter()
                .filter(|m| m.name == QEMU_RAM)
                .map(|m| m.pss_kib)
                .sum();
            processes.push(Counted {
                pid: p.pid,
                exe: p.exe.clone(),
                cmdline: p.argv.join(" "),
                role,
                pss_kib,
                guest_ram_pss_kib,
            });
        }
        Ok(Self {
            processes,
            guest_ram_mib,
        })
    }

    fn pss_kib(&self) -> u64 {
        self.processes.iter().map(|p| p.pss_kib).sum()
    }

    fn role_pss_kib(&self, role: Role) -> u64 {
        self.processes
            .iter()
            .filter(|p| p.role == role)
            .map(|p| p.pss_kib)
            .sum()
    }

    fn guest_ram_pss_kib(&self) -> u64 {
        self.processes.iter().map(|p| p.guest_ram_pss_kib).sum()
    }

    /// Processes that name any of `ids` in their command line without
    /// being counted.
    fn uncounted(&self, ids: &[&str]) -> Vec<String> {
        let me = std::process::id() as i32;
        proc_table()
            .into_iter()
            .filter(|p| p.pid != me && !self.processes.iter().any(|c| c.pid == p.pid))
            .filter(|p| p.argv.iter().any(|a| ids.iter().any(|id| a.contains(id))))
            .map(|p| format!("pid {} ({}): {}", p.pid, p.exe, p.argv.join(" ")))
            .collect()
    }
}

/// A row of the process table.
struct Proc {
    pid: i32,
    ppid: i32,
    exe: String,
    argv: Vec<String>,
}

/// Every user process now (kernel threads, with no command line, left out).
fn proc_table() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let dir = PathBuf::from(format!("/proc/{pid}"));
            let raw = std::fs::read(dir.join("cmdline")).ok()?;
            if raw.is_empty() {
                return None;
            }
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let ppid = parse_ppid(&stat)?;
            let exe = std::fs::read_link(dir.join("exe"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| argv.first().cloned().unwrap_or_default());
            Some(Proc {
                pid,
                ppid,
                exe,
                argv,
            })
        })
        .collect()
}

/// The parent PID from the text of `/proc/PID/stat`: the second field
/// after the command name, which is in parentheses and may itself hold
/// spaces and parentheses (hence the last `)`).
fn parse_ppid(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The argument after `flag` in `argv`.
fn arg_after<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    let i = argv.iter().position(|a| a == flag)?;
    argv.get(i + 1).map(String::as_str)
}

/// QEMU's `-m` value as husk writes it (`256M`), or a bare number of MiB.
fn parse_mib(value: &str) -> Option<u64> {
    let value = value.strip_prefix("size=").unwrap_or(value);
    match value.strip_suffix(['M', 'm']) {
        Some(n) => n.parse().ok(),
        None => match value.strip_suffix(['G', 'g']) {
            Some(n) => n.parse::<u64>().ok().map(|g| g * 1024),
            None => value.parse().ok(),
        },
    }
}

/// The `Pss:` total of `/proc/PID/smaps_rollup`, in KiB.
fn rollup_pss_kib(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    parse_rollup_pss(&text).with_context(|| format!("no Pss: line in {path}"))
}

fn parse_rollup_pss(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Waits until none of `pids` exists (or is a zombie), at most `timeout`;
/// the ones still there.
fn wait_gone(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    !s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
            })
            .collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The median of `f` over `rounds`.
fn med_duration(rounds: &[Round], f: impl Fn(&Round) -> Duration) -> Option<Duration> {
    let values: Vec<Duration> = rounds.iter().map(f).collect();
    (!values.is_empty()).then(|| median(&values))
}

fn med_kib(rounds: &[Round], f: impl Fn(&PodMemory) -> u64) -> Option<u64> {
    let values: Vec<u64> = rounds.iter().map(|r| f(&r.memory)).collect();
    (!values.is_empty()).then(|| median(&values))
}

/// The tables, then what was counted.
fn report(results: &[Results], opts: &Options, config: &husk_runtime::config::Config) -> String {
    let dur = |d: Option<Duration>| d.map_or("-".into(), ms);
    let kib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1} MiB", mib(k)));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}x", a / b),
        _ => "-".into(),
    };
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nKubernetes pod start and host memory per pod: containerd {} CRI, busybox `sleep 3600` in a pod, \
         median of {} interleaved rounds (after one warm-up pod each)\n",
        containerd_version(),
        opts.rounds
    );
    let _ = writeln!(
        t,
        "| handler | pod start, median (min–max) | RunPodSandbox, median | PSS per pod, median | rounds ok |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|");
    for (handler, r) in HANDLERS.iter().zip(results) {
        let starts: Vec<Duration> = r.rounds.iter().map(|r| r.pod_start).collect();
        let range = match (starts.iter().min(), starts.iter().max()) {
            (Some(lo), Some(hi)) => format!(
                " ({:.0}–{:.0})",
                lo.as_secs_f64() * 1000.0,
                hi.as_secs_f64() * 1000.0
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            t,
            "| {handler} | {}{range} | {} | {} | {}/{} |",
            dur(med_duration(&r.rounds, |r| r.pod_start)),
            dur(med_duration(&r.rounds, |r| r.sandbox)),
            kib(med_kib(&r.rounds, PodMemory::pss_kib)),
            r.rounds.len(),
            opts.rounds
        );
    }
    let (husk, runc) = (&results[0].rounds, &results[1].rounds);
    let pss = |r: &[Round]| med_kib(r, PodMemory::pss_kib).map(|k| k as f64);
    let _ = writeln!(
        t,
        "| ratio husk / runc | {} | {} | {} | |",
        ratio(
            secs(med_duration(husk, |r| r.pod_start)),
            secs(med_duration(runc, |r| r.pod_start))
        ),
        ratio(
            secs(med_duration(husk, |r| r.sandbox)),
            secs(med_duration(runc, |r| r.sandbox))
        ),
        ratio(pss(husk), pss(runc)),
    );

    let _ = writeln!(t, "\nBy step, medians:\n");
    let _ = writeln!(
        t,
        "| handler | RunPodSandbox | CreateContainer | StartContainer → RUNNING | StopPodSandbox + RemovePodSandbox, processes gone |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|");
    for (handler, r) in HANDLERS.iter().zip(results) {
        let _ = writeln!(
            t,
            "| {handler} | {} | {} | {} | {} |",
            dur(med_duration(&r.rounds, |r| r.sandbox)),
            dur(med_duration(&r.rounds, |r| r.create)),
            dur(med_duration(&r.rounds, |r| r.start)),
            dur(med_duration(&r.rounds, |r| r.teardown)),
        );
    }

    let _ = writeln!(
        t,
        "\nHost memory per pod by process, PSS, medians ({} s after the container was RUNNING):\n",
        SETTLE.as_secs()
    );
    let _ = writeln!(
        t,
        "| handler | shim | QEMU | pause + container | total | of which guest RAM (touched) | total, guest RAM excluded | guest RAM configured |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (handler, r) in HANDLERS.iter().zip(results) {
        let rounds = &r.rounds;
        let part = |role: Role| {
            let any = rounds
                .iter()
                .any(|r| r.memory.processes.iter().any(|p| p.role == role));
            if any {
                kib(med_kib(rounds, |m| m.role_pss_kib(role)))
            } else {
                "-".into()
            }
        };
        let guest = rounds
            .first()
            .and_then(|r| r.memory.guest_ram_mib)
            .map_or("-".into(), |m| format!("{m} MiB"));
        let touched = if rounds.iter().any(|r| r.memory.guest_ram_mib.is_some()) {
            kib(med_kib(rounds, PodMemory::guest_ram_pss_kib))
        } else {
            "-".into()
        };
        let _ = writeln!(
            t,
            "| {handler} | {} | {} | {} | {} | {touched} | {} | {guest} |",
            part(Role::Shim),
            part(Role::Vmm),
            part(Role::Container),
            kib(med_kib(rounds, PodMemory::pss_kib)),
            kib(med_kib(rounds, |m| m.pss_kib() - m.guest_ram_pss_kib())),
        );
    }

    let _ = writeln!(
        t,
        "\nWhat was counted (the processes of each handler's last pod):\n"
    );
    for (handler, r) in HANDLERS.iter().zip(results) {
        let Some(last) = r.rounds.last() else {
            continue;
        };
        for p in &last.memory.processes {
            let mut cmdline = p.cmdline.clone();
            if cmdline.len() > 120 {
                let cut = (0..=120)
                    .rev()
                    .find(|&i| cmdline.is_char_boundary(i))
                    .unwrap_or(0);
                cmdline.truncate(cut);
                cmdline.push_str(" ...");
            }
            let _ = writeln!(
                t,
                "- {handler}: {} ({}), PSS {:.1} MiB: `{cmdline}`",
                p.exe,
                p.role.label(),
                mib(p.pss_kib)
            );
        }
    }
    let _ = writeln!(
        t,
        "\nPSS is each process's `Pss:` of /proc/PID/smaps_rollup (shared pages divided among \
         the processes mapping them), summed over the pod's processes: its shim (by `-id <pod>` \
         and this containerd's `-address`) and all the shim's descendants, plus for husk any \
         process naming the pod's sandbox directory under {}. containerd itself is shared by \
         all pods and not counted. The guest RAM column is the part of the total that is QEMU's \
         guest RAM memfd (mapped by QEMU and by the shim's vhost-user backends); the guest RAM \
         configured is QEMU's -m. runc's pause is the harness's offline pause image, busybox's \
         sh waiting on a `sleep` (two small processes where the real pause is one).",
        config.sandbox_root.display()
    );
    for (handler, r) in HANDLERS.iter().zip(results) {
        if let Some(first) = r.failures.first() {
            let _ = writeln!(
                t,
                "\n{handler}: {} failed rounds, the first: {first}",
                r.failures.len()
            );
        }
    }
    t
}

/// `containerd --version`'s version word, or "?".
fn containerd_version() -> String {
    std::process::Command::new(husk_tests::containerd::CONTAINERD)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parent_survives_parentheses_in_the_name() {
        assert_eq!(parse_ppid("42 (a) b) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn rollup_pss_and_qemu_memory_sizes_are_parsed() {
        let rollup = "00400000-7fff0000 ---p 00000000 00:00 0  [rollup]\n\
                      Rss:               10240 kB\nPss:                5120 kB\n\
                      Pss_Anon:           4096 kB\n";
        assert_eq!(parse_rollup_pss(rollup), Some(5120));
        assert_eq!(parse_rollup_pss("Rss: 1 kB\n"), None);
        assert_eq!(parse_mib("256M"), Some(256));
        assert_eq!(parse_mib("size=2G"), Some(2048));
        assert_eq!(parse_mib("512"), Some(512));
        let argv: Vec<String> = ["qemu", "-m", "256M"].map(String::from).to_vec();
        assert_eq!(arg_after(&argv, "-m"), Some("256M"));
        assert_eq!(arg_after(&argv, "256M"), None);
    }
}
