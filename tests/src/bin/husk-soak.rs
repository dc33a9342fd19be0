//! `make soak`: a leak soak of the `husk` CLI. It runs many container
//! lifecycles of mixed kinds through the real binary, each booting a QEMU
//! microVM, and counts what a lifecycle could leave behind on the host.
//!
//! The kinds, in rotation (each lifecycle checks every status it expects):
//!
//! - `exit 0`: `husk run` of `true` → 0;
//! - `exit 3`: `husk run` of `sh -c 'exit 3'` → 3;
//! - `killed`: `create` + `start` of `sleep 100`, `kill KILL`, `state`
//!   polled until `stopped`, `delete`;
//! - `oom`: `husk run` of `tail /dev/zero` under a 32 MiB memory limit → 137;
//! - `exec`: `create` + `start` of `sleep 100`, `exec sh -c 'exit 5'` → 5,
//!   `kill KILL`, `state` until `stopped`, `delete`;
//! - `paused`: `create` + `start` of `sleep 100`, `pause`, `delete --force`;
//! - `force`: `create` + `start` of `sleep 100`, `delete --force` while it runs.
//!
//! One warm-up lifecycle comes first, then a baseline sample, then a sample
//! every `--every` lifecycles and after the last. A sample counts:
//!
//! - processes whose command line mentions the soak's temporary directory
//!   (QEMU names its sockets there, husk its `--root` and `--config`), and,
//!   counted the other way, `husk` and `qemu-system-*` processes descended
//!   from the soak (which is a child subreaper, as containerd's shim is, so
//!   everything `create` leaves behind is re-parented to it, never lost to
//!   init);
//! - open fds summed over all of those processes;
//! - mounts under the temporary directory or `/run/husk`, in the host's
//!   mount namespace and in those of the processes counted above (the
//!   sandbox process makes the share's binds in its own);
//! - Unix sockets (`/proc/net/unix`) under the temporary directory;
//! - tap devices in the host's network namespace (husk makes its taps in
//!   the container's namespace, so there should be none of its own);
//! - `/run/netns` entries, less husk-tests' own (`husk-t-*`, which a
//!   concurrent `make test` makes);
//! - the host memory cgroups of the soak's containers (named by container
//!   ID under `/sys/fs/cgroup/husk` or `/sys/fs/cgroup/memory/husk`,
//!   runtime/src/cli/process/host_cgroup.rs);
//! - entries in the soak's `--root` and `sandbox_root`;
//! - the host's used memory, `MemTotal - MemAvailable`.
//!
//! The first `force` lifecycle is also sampled while its container runs
//! (a table row of its own, never compared): if that sample does not see
//! the container's processes, their fds, its state and its sandbox, the
//! soak fails, since it could not see them leak either.
//!
//! The processes, fds, mounts, sockets, cgroups and entries counted are
//! the soak's own, so other work on the machine (a concurrent CI run)
//! cannot move them; taps and `/run/netns` are the host's, but nothing else
//! here makes taps in the host's namespace, and the named namespaces
//! husk-tests makes are left out. A sample with a count above the baseline
//! is retaken for up to [`SETTLE`] first, because teardown that husk leaves
//! to exiting processes is not a leak. Memory is the whole host's and
//! noisy; it fails only when the last sample is more than
//! `--memory-tolerance` MiB (default 256) above the baseline.
//!
//! It prints a markdown table, a row per sample, and exits non-zero with one
//! line per count that grew (or on the first lifecycle whose status was
//! wrong, naming it and husk's stderr), after deleting its containers with
//! `delete --force`. Its temporary directory goes at the end.
//!
//! Usage: husk-soak [--lifecycles N] [--every K] [--husk PATH]
//! [--memory-tolerance MIB]

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_runtime::store::Store;
use husk_tests::processes::{become_subreaper, reap_children};
use husk_tests::{cli, containers, docker, guest, netns, rootfs};

/// How long one `husk` command may take (a VM boots under TCG, and the
/// machine may be busy with other work).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a killed container may take to be reported `stopped`.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a sample above the baseline is retaken before it counts.
const SETTLE: Duration = Duration::from_secs(10);
/// How often a sample, or a container's state, is retaken.
const POLL: Duration = Duration::from_millis(250);
/// The OOM lifecycle's container memory limit.
const OOM_LIMIT: i64 = 32 << 20;
/// The default allowed growth of the host's used memory, in MiB: other
/// processes on the host move it by tens of MiB between samples.
const MEMORY_TOLERANCE_MIB: u64 = 256;
/// Where husk keeps sandboxes by default: the soak uses a private
/// `sandbox_root`, so nothing should be mounted here by its containers.
const RUN_HUSK: &str = "/run/husk";
/// The roots of husk's host memory cgroups (v2, v1).
const CGROUP_PARENTS: [&str; 2] = ["/sys/fs/cgroup/husk", "/sys/fs/cgroup/memory/husk"];

struct Options {
    lifecycles: usize,
    every: usize,
    husk: Option<PathBuf>,
    memory_tolerance_mib: u64,
}

const USAGE: &str =
    "usage: husk-soak [--lifecycles N] [--every K] [--husk PATH] [--memory-tolerance MIB]";

fn main() {
    let opts = parse_args();
    match run(&opts) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("husk-soak: {e:#}");
            std::process::exit(1);
        }
    }
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2)
}

fn parse_args() -> Options {
    let mut opts = Options {
        lifecycles: 500,
        every: 50,
        husk: None,
        memory_tolerance_mib: MEMORY_TOLERANCE_MIB,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--lifecycles" => opts.lifecycles = value().parse().unwrap_or_else(|_| usage()),
            "--every" => opts.every = value().parse().unwrap_or_else(|_| usage()),
            "--husk" => opts.husk = Some(value().into()),
            "--memory-tolerance" => {
                opts.memory_tolerance_mib = value().parse().unwrap_or_else(|_| usage())
            }
            _ => usage(),
        }
    }
    if opts.lifecycles == 0 || opts.every == 0 {
        usage()
    }
    opts
}

/// The `husk` binary: `--husk`, else the one cargo built beside this one.
fn husk_binary(opts: &Options) -> Result<PathBuf> {
    if let Some(path) = &opts.husk {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().context("this program's path")?;
    let beside = exe.with_file_name("husk");
    if !beside.is_file() {
        bail!(
            "no husk beside {}: `make soak` builds it (cargo build -p husk-runtime --bin husk), \
             or pass --husk PATH",
            exe.display()
        );
    }
    Ok(beside)
}

/// Runs the soak; whether every count held.
fn run(opts: &Options) -> Result<bool> {
    let husk = husk_binary(opts)?;
    become_subreaper().map_err(anyhow::Error::msg)?;
    let soak = Soak::new(husk)?;
    println!(
        "husk-soak: {} lifecycles, a sample every {}, husk {}, in {}",
        opts.lifecycles,
        opts.every,
        soak.husk.display(),
        soak.dir().display()
    );
    let result = soak.run(opts);
    if result.is_err() {
        soak.delete_all();
    }
    soak.remove();
    result
}

/// A lifecycle's kind; they run in the order of [`Kind::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Exit0,
    Exit3,
    Killed,
    Oom,
    Exec,
    Paused,
    Force,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Exit0,
        Kind::Exit3,
        Kind::Killed,
        Kind::Oom,
        Kind::Exec,
        Kind::Paused,
        Kind::Force,
    ];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that the summary's `{:<7}` lines the kinds up.
        f.pad(match self {
            Kind::Exit0 => "exit 0",
            Kind::Exit3 => "exit 3",
            Kind::Killed => "killed",
            Kind::Oom => "oom",
            Kind::Exec => "exec",
            Kind::Paused => "paused",
            Kind::Force => "force",
        })
    }
}

/// The soak's world: a temporary directory holding husk's state root,
/// sandbox root, configuration, log and the bundles.
struct Soak {
    tmp: tempfile::TempDir,
    husk: PathBuf,
    root: PathBuf,
    sandboxes: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// Container IDs are this plus the lifecycle's number: the soak's
    /// containers' host cgroups are told apart by it.
    prefix: String,
}

impl Soak {
    fn new(husk: PathBuf) -> Result<Self> {
        let kernel = guest::kernel().map_err(anyhow::Error::msg)?;
        let initrd = docker::husk::initrd()?;
        // A short path: sandbox sockets live under it.
        let tmp = tempfile::Builder::new()
            .prefix("hks")
            .tempdir_in("/tmp")
            .context("temporary directory")?;
        let sandboxes = tmp.path().join("vm");
        let config = tmp.path().join("husk.toml");
        // QEMU, as on every machine here; a generous boot timeout because
        // the soak may share the machine's two cores with other work.
        let toml = format!(
            "hypervisor = \"qemu\"\n{}boot_timeout_secs = 120\n",
            docker::husk::config_toml(&sandboxes, &kernel, &initrd)
        );
        std::fs::write(&config, toml).with_context(|| format!("{}", config.display()))?;
        let soak = Self {
            root: tmp.path().join("root"),
            log: tmp.path().join("husk.log"),
            sandboxes,
            config,
            husk,
            prefix: format!("soak{}-", std::process::id()),
            tmp,
        };
        soak.bundle("true", &["true"], None)?;
        soak.bundle("exit3", &["sh", "-c", "exit 3"], None)?;
        soak.bundle("sleep", &["sleep", "100"], None)?;
        soak.bundle("oom", &["tail", "/dev/zero"], Some(OOM_LIMIT))?;
        Ok(soak)
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// A busybox bundle `name` whose process runs `args`.
    fn bundle(&self, name: &str, args: &[&str], memory_limit: Option<i64>) -> Result<()> {
        let dir = self.dir().join(name);
        rootfs::busybox(&dir.join("rootfs")).context("busybox root file system")?;
        let mut spec = containers::spec(args);
        if let Some(bytes) = memory_limit {
            spec = containers::with_memory_limit(spec, bytes);
        }
        spec.save(dir.join("config.json"))
            .with_context(|| format!("{}/config.json", dir.display()))
    }

    fn bundle_path(&self, name: &str) -> String {
        self.dir().join(name).to_string_lossy().into_owned()
    }

    /// `husk ARGS` to completion, output through files.
    fn husk(&self, args: &[&str]) -> Result<Output> {
        let mut command = Command::new(&self.husk);
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(&self.config)
            .arg("--log")
            .arg(&self.log)
            .args(args);
        cli::output(&mut command, Some(COMMAND_TIMEOUT))
            .with_context(|| format!("husk {}", args.join(" ")))
    }

    /// `husk ARGS`, which must exit `want`; its stdout.
    fn expect(&self, n: usize, kind: Kind, args: &[&str], want: i32) -> Result<String> {
        let out = self
            .husk(args)
            .with_context(|| format!("lifecycle {n} ({kind})"))?;
        let got = status_code(&out);
        if got != want {
            bail!(
                "lifecycle {n} ({kind}): `husk {}` exited {got}, expected {want}; husk's stderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Polls `husk state ID` until it says `want`.
    fn wait_status(&self, n: usize, kind: Kind, id: &str, want: &str) -> Result<()> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let state = self.expect(n, kind, &["state", id], 0)?;
            let state: serde_json::Value = serde_json::from_str(&state)
                .with_context(|| format!("lifecycle {n} ({kind}): `husk state {id}`: {state}"))?;
            if state["status"] == want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "lifecycle {n} ({kind}): {id} is still {} after {STOP_TIMEOUT:?}, expected {want}",
                    state["status"]
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Lifecycle `n`, of `kind`. With `probe`, a `force` lifecycle also
    /// returns a sample taken while its container runs.
    fn lifecycle(&self, n: usize, kind: Kind, probe: bool) -> Result<Option<Sample>> {
        let id = format!("{}{n}", self.prefix);
        let id = id.as_str();
        let expect = |args: &[&str], want: i32| self.expect(n, kind, args, want).map(drop);
        let run = |bundle: &str, want: i32| {
            expect(&["run", "--bundle", &self.bundle_path(bundle), id], want)
        };
        let started = || {
            expect(&["create", "--bundle", &self.bundle_path("sleep"), id], 0)?;
            expect(&["start", id], 0)
        };
        match kind {
            Kind::Exit0 => run("true", 0)?,
            Kind::Exit3 => run("exit3", 3)?,
            Kind::Oom => run("oom", 137)?,
            Kind::Killed => {
                started()?;
                expect(&["kill", id, "KILL"], 0)?;
                self.wait_status(n, kind, id, "stopped")?;
                expect(&["delete", id], 0)?;
            }
            Kind::Exec => {
                started()?;
                expect(&["exec", id, "sh", "-c", "exit 5"], 5)?;
                expect(&["kill", id, "KILL"], 0)?;
                self.wait_status(n, kind, id, "stopped")?;
                expect(&["delete", id], 0)?;
            }
            Kind::Paused => {
                started()?;
                expect(&["pause", id], 0)?;
                self.wait_status(n, kind, id, "paused")?;
                expect(&["delete", "--force", id], 0)?;
            }
            Kind::Force => {
                started()?;
                let sample = probe.then(|| self.sample());
                expect(&["delete", "--force", id], 0)?;
                reap_children();
                return Ok(sample);
            }
        }
        // The init proxy `create` left behind was re-parented to us.
        reap_children();
        Ok(None)
    }

    /// The lifecycles and samples; whether every count held.
    fn run(&self, opts: &Options) -> Result<bool> {
        let mut times: HashMap<Kind, Vec<Duration>> = HashMap::new();
        let mut probed = false;
        let mut timed = |n: usize| -> Result<()> {
            let kind = Kind::ALL[n % Kind::ALL.len()];
            let started = Instant::now();
            let live = self.lifecycle(n, kind, !probed)?;
            times.entry(kind).or_default().push(started.elapsed());
            if let Some(live) = live {
                // Proof that the counts see a container at all: a soak
                // whose probes saw nothing would pass whatever leaked.
                probed = true;
                print_row(&format!("{n}, running"), &live);
                check_probe(&live)?;
            }
            Ok(())
        };

        // The warm-up: first-use costs (page cache, husk's and QEMU's first
        // start) stay out of the baseline.
        timed(0)?;
        let baseline = self.settled_sample(None);
        print_header();
        print_row("baseline", &baseline);
        let mut samples = vec![("baseline".to_string(), baseline.clone())];

        let soak_started = Instant::now();
        for n in 1..=opts.lifecycles {
            timed(n)?;
            if n % opts.every == 0 || n == opts.lifecycles {
                let sample = self.settled_sample(Some(&baseline));
                let label = format!("after {n}");
                print_row(&label, &sample);
                samples.push((label, sample));
            }
        }
        let elapsed = soak_started.elapsed();

        println!();
        println!(
            "{} lifecycles in {:.0} s: {:.2} s per lifecycle (sampling included)",
            opts.lifecycles,
            elapsed.as_secs_f64(),
            elapsed.as_secs_f64() / opts.lifecycles as f64
        );
        for kind in Kind::ALL {
            if let Some(t) = times.get(&kind) {
                let mean = t.iter().sum::<Duration>().as_secs_f64() / t.len() as f64;
                println!("  {kind:<7} {:>4} × {mean:.2} s", t.len());
            }
        }
        println!(
            "A count fails when a sample is above the baseline; used memory (the whole host's, \
             noisy) fails only when the last sample is more than {} MiB above it.",
            opts.memory_tolerance_mib
        );

        let failures = failures(&samples, opts.memory_tolerance_mib);
        for failure in &failures {
            eprintln!("husk-soak: FAILED: {failure}");
        }
        if failures.is_empty() {
            println!("husk-soak: passed");
        } else {
            // Leave nothing running for the temporary directory's removal.
            self.delete_all();
        }
        Ok(failures.is_empty())
    }

    /// A sample. With a baseline, one above it is retaken until it is not,
    /// or [`SETTLE`] has passed; without, until two in a row agree.
    fn settled_sample(&self, baseline: Option<&Sample>) -> Sample {
        let deadline = Instant::now() + SETTLE;
        let mut sample = self.sample();
        loop {
            let settled = baseline.is_some_and(|base| !sample.above(base));
            if settled || Instant::now() >= deadline {
                return sample;
            }
            thread::sleep(POLL);
            reap_children();
            let next = self.sample();
            if baseline.is_none() && next.counts == sample.counts {
                return next;
            }
            sample = next;
        }
    }

    fn sample(&self) -> Sample {
        let dir = self.dir().to_string_lossy().into_owned();
        let processes = Processes::scan();
        let by_dir: BTreeSet<i32> = processes
            .all
            .iter()
            .filter(|p| p.cmdline.contains(&dir))
            .map(|p| p.pid)
            .collect();
        let me = std::process::id() as i32;
        let by_name: BTreeSet<i32> = processes
            .all
            .iter()
            .filter(|p| p.is_husk_or_qemu() && processes.descends_from(p.pid, me))
            .map(|p| p.pid)
            .collect();
        let fds = by_dir.union(&by_name).map(|&pid| open_fds(pid)).sum();
        let cgroups = CGROUP_PARENTS
            .iter()
            .map(|parent| entries(Path::new(parent), |name| name.starts_with(&self.prefix)))
            .sum();
        Sample {
            counts: [
                by_dir.len() as u64,
                by_name.len() as u64,
                fds,
                mounts_under(&[&dir, RUN_HUSK], by_dir.union(&by_name).copied()),
                unix_sockets_under(&dir),
                host_taps(),
                entries(Path::new(netns::RUN_NETNS), |name| {
                    !name.starts_with(netns::PREFIX)
                }),
                cgroups,
                entries(&self.root, |_| true),
                entries(&self.sandboxes, |_| true),
            ],
            used_memory_mib: used_memory_mib(),
        }
    }

    /// `delete --force` of every container in the soak's root.
    fn delete_all(&self) {
        for id in Store::new(&self.root).ids().unwrap_or_default() {
            if let Err(e) = self.husk(&["delete", "--force", &id]) {
                eprintln!("husk-soak: deleting {id}: {e:#}");
            }
        }
        reap_children();
    }

    /// Removes the temporary directory, unless something is still mounted
    /// under it: removal would reach through a sandbox's binds.
    fn remove(self) {
        let dir = self.dir().to_string_lossy().into_owned();
        if mounts_under(&[&dir], []) > 0 {
            eprintln!("husk-soak: mounts left under {dir}: keeping it");
            let _ = self.tmp.keep();
        }
    }
}

/// The columns of a sample, in the table's order, but for memory.
const COLUMNS: [&str; 10] = [
    "procs (tmp dir)",
    "husk/QEMU procs",
    "fds",
    "mounts",
    "unix sockets",
    "taps",
    "netns",
    "cgroups",
    "--root",
    "sandbox_root",
];
const MEMORY_COLUMN: &str = "used MiB";

/// One sample's counts, in the order of [`COLUMNS`], and the host's used
/// memory.
#[derive(Debug, Clone)]
struct Sample {
    counts: [u64; COLUMNS.len()],
    used_memory_mib: u64,
}

impl Sample {
    /// Whether any count is above `base`'s.
    fn above(&self, base: &Sample) -> bool {
        self.counts.iter().zip(base.counts).any(|(&c, b)| c > b)
    }
}

fn print_header() {
    println!();
    println!("| sample | {} | {MEMORY_COLUMN} |", COLUMNS.join(" | "));
    // The sample's name left-aligned, the numbers right-aligned.
    println!("|---|{}", "---:|".repeat(COLUMNS.len() + 1));
}

fn print_row(label: &str, sample: &Sample) {
    let counts: Vec<String> = sample.counts.iter().map(u64::to_string).collect();
    println!(
        "| {label} | {} | {} |",
        counts.join(" | "),
        sample.used_memory_mib
    );
    let _ = std::io::stdout().flush();
}

/// Fails unless the sample taken while a container ran saw it: its
/// processes both ways, their fds, its state and its sandbox.
fn check_probe(live: &Sample) -> Result<()> {
    for column in [
        "procs (tmp dir)",
        "husk/QEMU procs",
        "fds",
        "--root",
        "sandbox_root",
    ] {
        let i = COLUMNS.iter().position(|c| *c == column).unwrap_or(0);
        if live.counts[i] == 0 {
            bail!("{column}: 0 while a container ran; the soak cannot see it leak");
        }
    }
    Ok(())
}

/// One line per count that grew: a count above its baseline in any sample,
/// or used memory more than `tolerance_mib` above it in the last.
fn failures(samples: &[(String, Sample)], tolerance_mib: u64) -> Vec<String> {
    let Some(((_, base), rest)) = samples.split_first() else {
        return Vec::new();
    };
    let mut failures = Vec::new();
    for (i, column) in COLUMNS.iter().enumerate() {
        if rest.iter().any(|(_, s)| s.counts[i] > base.counts[i]) {
            let values: Vec<String> = samples
                .iter()
                .map(|(_, s)| s.counts[i].to_string())
                .collect();
            failures.push(format!(
                "{column} grew above its baseline {}; samples: {}",
                base.counts[i],
                values.join(", ")
            ));
        }
    }
    if let Some((_, last)) = rest.last() {
        if last.used_memory_mib > base.used_memory_mib + tolerance_mib {
            let values: Vec<String> = samples
                .iter()
                .map(|(_, s)| s.used_memory_mib.to_string())
                .collect();
            failures.push(format!(
                "{MEMORY_COLUMN} grew by more than {tolerance_mib} MiB; samples: {}",
                values.join(", ")
            ));
        }
    }
    failures
}

/// An exit status the shell's way (128 + N for signal N).
fn status_code(out: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    out.status
        .code()
        .or_else(|| out.status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// A process on the host.
struct Process {
    pid: i32,
    ppid: i32,
    comm: String,
    exe_name: String,
    cmdline: String,
}

impl Process {
    fn is_husk_or_qemu(&self) -> bool {
        self.comm == "husk" || self.exe_name == "husk" || self.comm.starts_with("qemu-system")
    }
}

/// The host's live processes (zombies left out: they hold nothing).
struct Processes {
    all: Vec<Process>,
    parents: HashMap<i32, i32>,
}

impl Processes {
    fn scan() -> Self {
        let mut all = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // A process may exit while it is read: skip it then.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // comm is in parentheses and may hold spaces: split after it.
            let Some((head, tail)) = stat.rsplit_once(')') else {
                continue;
            };
            let comm = head
                .split_once('(')
                .map(|(_, c)| c)
                .unwrap_or("")
                .to_owned();
            let mut fields = tail.split_whitespace();
            let state = fields.next().unwrap_or("");
            let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            if state == "Z" || state == "X" {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            let exe_name = std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            all.push(Process {
                pid,
                ppid,
                comm,
                exe_name,
                cmdline,
            });
        }
        let parents = all.iter().map(|p| (p.pid, p.ppid)).collect();
        Self { all, parents }
    }

    /// Whether `pid` is a descendant of `ancestor`.
    fn descends_from(&self, pid: i32, ancestor: i32) -> bool {
        let mut pid = pid;
        // Bounded: a pid read mid-fork could, in theory, make a cycle.
        for _ in 0..64 {
            match self.parents.get(&pid) {
                Some(&parent) if parent == ancestor => return true,
                Some(&parent) if parent > 1 => pid = parent,
                _ => return false,
            }
        }
        false
    }
}

/// Open fds of `pid` (0 if it is gone).
fn open_fds(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// Entries of `dir` whose names pass `keep` (0 if it does not exist).
fn entries(dir: &Path, keep: impl Fn(&str) -> bool) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| keep(&e.file_name().to_string_lossy()))
                .count() as u64
        })
        .unwrap_or(0)
}

/// Whether `path` is `prefix` or below it.
fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Mounts at or below any of `dirs`, in this mount namespace (the host's)
/// and in each other one a process of `pids` is in: the CLI's sandbox
/// process makes the share's binds in a namespace of its own, which lives
/// as long as it (or the QEMU it started) does.
fn mounts_under(dirs: &[&str], pids: impl IntoIterator<Item = i32>) -> u64 {
    let mut seen = BTreeSet::new();
    let mut count = 0;
    for pid in std::iter::once(std::process::id() as i32).chain(pids) {
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        if !seen.insert(ns) {
            continue;
        }
        let mountinfo =
            std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        count += mountinfo
            .lines()
            // The fifth field is the mount point.
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|point| dirs.iter().any(|dir| is_under(point, dir)))
            .count() as u64;
    }
    count
}

/// Unix sockets bound at or below `dir` in the host's network namespace.
fn unix_sockets_under(dir: &str) -> u64 {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .skip(1)
        // The eighth field, when there is one, is the bound path.
        .filter_map(|line| line.split_whitespace().nth(7))
        .filter(|path| is_under(path, dir))
        .count() as u64
}

/// Tap (and tun) devices in the host's network namespace.
fn host_taps() -> u64 {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("tun_flags").exists())
                .count() as u64
        })
        .unwrap_or(0)
}

/// The host's used memory, `MemTotal - MemAvailable`, in MiB.
fn used_memory_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    kib("MemTotal:").saturating_sub(kib("MemAvailable:")) / 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(first: u64, used_memory_mib: u64) -> Sample {
        let mut counts = [0; COLUMNS.len()];
        counts[0] = first;
        Sample {
            counts,
            used_memory_mib,
        }
    }

    #[test]
    fn a_count_above_its_baseline_in_any_sample_fails_naming_its_values() {
        let samples = vec![
            ("baseline".to_string(), sample(2, 1000)),
            ("after 10".to_string(), sample(3, 1000)),
            ("after 20".to_string(), sample(2, 1000)),
        ];
        assert_eq!(
            failures(&samples, 256),
            ["procs (tmp dir) grew above its baseline 2; samples: 2, 3, 2"]
        );
        let steady = vec![samples[0].clone(), samples[2].clone()];
        assert!(failures(&steady, 256).is_empty());
    }

    #[test]
    fn used_memory_fails_only_beyond_the_tolerance_in_the_last_sample() {
        let samples = |last| {
            vec![
                ("baseline".to_string(), sample(0, 1000)),
                ("after 10".to_string(), sample(0, 2000)),
                ("after 20".to_string(), sample(0, last)),
            ]
        };
        assert!(failures(&samples(1256), 256).is_empty());
        let failed = failures(&samples(1257), 256);
        assert_eq!(
            failed,
            ["used MiB grew by more than 256 MiB; samples: 1000, 2000, 1257"]
        );
    }

    #[test]
    fn under_means_the_directory_or_below_it() {
        assert!(is_under("/tmp/hks1", "/tmp/hks1"));
        assert!(is_under("/tmp/hks1/vm/a.sock", "/tmp/hks1"));
        assert!(!is_under("/tmp/hks10/vm", "/tmp/hks1"));
        assert!(!is_under("/run/husky", RUN_HUSK));
    }
}
