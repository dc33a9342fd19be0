//! Sandboxes restored from a snapshot template against cold-booted ones, on
//! the builtin VMM: `husk run` of `/bin/true` (spawn → agent answers, spawn
//! → `/bin/true` exited, the whole run), interleaved, medians and ratios;
//! then the host memory of 1, 5 and 10 sleeping sandboxes side by side,
//! whole PSS of each sandbox process guest RAM included (restored guests
//! share the template's clean pages). Run as root with
//! `cargo bench -p husk-runtime --bench snapshot` where KVM runs Linux
//! guests, or `make bench-snapshot-nested` (inside the nested layer).
//!
//! Environment:
//! - `HUSK_SNAPSHOT_RUNS` (default 10): timed runs per variant;
//! - `HUSK_SNAPSHOT_COUNTS` (default `1,5,10`): how many sandboxes run side
//!   by side for each memory sample;
//! - `HUSK_BENCH_BOOT_TIMEOUT` (default 120): the guest's
//!   `boot_timeout_secs`;
//! - `HUSK_KERNEL` and `HUSK_INITRD`: a prebuilt guest (as inside the
//!   nested layer's L1); otherwise it is found as the end-to-end tests find
//!   it.
//!
//! Everything it makes (containers, sandboxes, the template) lives under
//! one temporary directory and is taken down on the way out.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use husk_runtime::host_process::HostProcess;
use husk_runtime::store::Store;
use husk_tests::bench::{env_number, median, short_tempdir};
use husk_tests::budget::{sample, Sample};
use husk_tests::processes::{self, become_subreaper, descendants, reap_children, wait_until};
use husk_tests::{containers, guest, rootfs};
use husk_vmm::machine::HostCheck;

/// Guest RAM of every sandbox (the bundles set no memory limit).
const GUEST_MIB: u64 = 256;
/// How long detached sandboxes are left before their memory is read.
const SETTLE: Duration = Duration::from_secs(3);
/// The stage a restored sandbox logs where a cold one logs `vm-started`:
/// a restored run without it booted cold, and is not what it claims.
const RESTORED_STAGE: &str = "vm-restored";
/// The two variants, in table order.
const VARIANTS: [&str; 2] = ["cold boot", "restored"];

fn main() {
    if let Err(e) = bench() {
        eprintln!("snapshot: {e}");
        std::process::exit(1);
    }
}

fn counts() -> Result<Vec<usize>, String> {
    let text = std::env::var("HUSK_SNAPSHOT_COUNTS").unwrap_or_else(|_| "1,5,10".into());
    text.split(',')
        .map(|n| {
            n.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| format!("HUSK_SNAPSHOT_COUNTS={text}: expected numbers 1..=64"))
        })
        .collect()
}

fn bench() -> Result<(), String> {
    let host = HostCheck::run();
    if let Some(why) = host.limitation() {
        println!("snapshot: skipped: {why}, so the builtin VMM cannot boot a Linux guest here (run `make bench-snapshot-nested`)");
        return Ok(());
    }
    become_subreaper()?;
    let runs = env_number("HUSK_SNAPSHOT_RUNS", 10)? as usize;
    let counts = counts()?;
    let boot_timeout = env_number("HUSK_BENCH_BOOT_TIMEOUT", 120)?;
    let mut world = World::new(boot_timeout)?;
    let bundle_true = world.bundle("true", &["/bin/true"])?;
    let bundle_sleep = world.bundle("sleep", &["sleep", "3600"])?;

    // Untimed: page cache for both, and the template for the restored
    // variant (its first sandbox makes it).
    let made = Instant::now();
    for (v, name) in VARIANTS.iter().enumerate() {
        world
            .run(v, &bundle_true, &format!("warmup{v}"))
            .map_err(|e| format!("{name} warm-up: {e}"))?;
    }
    let warmup = made.elapsed();
    let template_bytes = world.template_bytes();
    if template_bytes == 0 {
        return Err("the restored variant's warm-up made no template".into());
    }

    let mut samples: Vec<Vec<RunTimes>> = vec![Vec::new(); VARIANTS.len()];
    for round in 0..runs {
        for k in 0..VARIANTS.len() {
            let v = (round + k) % VARIANTS.len();
            let id = format!("r{round}v{v}");
            let s = world
                .run(v, &bundle_true, &id)
                .map_err(|e| format!("{} {id}: {e}", VARIANTS[v]))?;
            eprintln!(
                "snapshot: {} {id}: VM to agent {:.0} ms, spawn to agent {:.0} ms, total {:.0} ms",
                VARIANTS[v],
                ms(s.vm),
                ms(s.agent),
                ms(s.total)
            );
            samples[v].push(s);
        }
    }

    let mut memory: Vec<MemorySample> = Vec::new();
    for (i, &n) in counts.iter().enumerate() {
        let mut both: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        for k in 0..VARIANTS.len() {
            let v = (i + k) % VARIANTS.len();
            both[v] = world
                .memory(v, &bundle_sleep, n)
                .map_err(|e| format!("{} with {n} sandboxes: {e}", VARIANTS[v]))?;
            eprintln!(
                "snapshot: {} x{n}: PSS per sandbox {:.1} MiB (median)",
                VARIANTS[v],
                mib(median(&both[v]))
            );
        }
        memory.push((n, both));
    }
    print!(
        "{}",
        render(runs, &samples, &memory, warmup, template_bytes)
    );
    world.check_clean()
}

/// The PSS (KiB) of each sandbox of a variant, side by side with this
/// many, for each variant.
type MemorySample = (usize, [Vec<u64>; 2]);

/// One `husk run`: network wired → agent answers (the VM's own part: a
/// cold boot, or a restore), spawn → agent answers, spawn → `/bin/true`
/// exited, all.
#[derive(Clone)]
struct RunTimes {
    vm: Duration,
    agent: Duration,
    exited: Duration,
    total: Duration,
}

/// When a stage ended, from the intervals of a [`Sample`]: the sum of the
/// intervals up to and including it.
fn stage_end(s: &Sample, stage: &str) -> Option<Duration> {
    let mut at = Duration::ZERO;
    for (name, _) in husk_tests::budget::HOST_STAGES {
        at += s.host.get(name).copied().unwrap_or_default();
        if name == stage {
            return s.host.contains_key(stage).then_some(at);
        }
    }
    None
}

struct World {
    tmp: tempfile::TempDir,
    root: PathBuf,
    sandboxes: PathBuf,
    templates: PathBuf,
    logs: PathBuf,
    configs: [PathBuf; 2],
    timeout: Duration,
    /// Every sandbox process seen, killed on the way out if `delete` left it.
    seen: Vec<HostProcess>,
}

impl World {
    fn new(boot_timeout: u64) -> Result<Self, String> {
        // A short path: sandbox sockets live under it.
        let tmp = short_tempdir("hsb")?;
        let artifacts = guest::prebuilt_or_artifacts(&tmp.path().join("guest"))?;
        let sandboxes = tmp.path().join("vm");
        let templates = tmp.path().join("snapshots");
        let base = format!(
            "hypervisor = \"builtin\"\nsandbox_root = \"{}\"\nlog_level = \"info\"\n\
             [guest]\nkernel = \"{}\"\nimage = \"{}\"\nboot_timeout_secs = {boot_timeout}\n\
             default_memory_mib = {GUEST_MIB}\n",
            sandboxes.display(),
            artifacts.kernel.display(),
            artifacts.initrd.display(),
        );
        let cold = tmp.path().join("cold.toml");
        let restored = tmp.path().join("restored.toml");
        std::fs::write(&cold, format!("{base}[snapshot]\nenabled = false\n"))
            .map_err(|e| format!("config: {e}"))?;
        std::fs::write(
            &restored,
            format!(
                "{base}[snapshot]\nenabled = true\npath = \"{}\"\n",
                templates.display()
            ),
        )
        .map_err(|e| format!("config: {e}"))?;
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| format!("logs: {e}"))?;
        Ok(Self {
            root: tmp.path().join("root"),
            sandboxes,
            templates,
            logs,
            configs: [cold, restored],
            timeout: Duration::from_secs(boot_timeout + 120),
            seen: Vec::new(),
            tmp,
        })
    }

    /// A busybox bundle whose process runs `args` (no terminal).
    fn bundle(&self, name: &str, args: &[&str]) -> Result<PathBuf, String> {
        let dir = self.tmp.path().join(name);
        rootfs::busybox(&dir.join("rootfs")).map_err(|e| format!("busybox rootfs: {e}"))?;
        containers::spec(args)
            .save(dir.join("config.json"))
            .map_err(|e| format!("config.json: {e}"))?;
        Ok(dir)
    }

    /// `husk ARGS` with variant `v`'s configuration, to completion; its
    /// JSON log in `log`. stderr goes to a file, never a pipe: the proxies
    /// a detached run leaves inherit it.
    fn husk(&self, v: usize, log: &Path, args: &[&str]) -> Result<(), String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_husk"));
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(&self.configs[v])
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json")
            .args(args);
        processes::run_husk(command, log, args, self.timeout)
    }

    /// One timed `husk run` of `bundle` with variant `v`; a restored run
    /// must say it restored.
    fn run(&mut self, v: usize, bundle: &Path, id: &str) -> Result<RunTimes, String> {
        let log = self.logs.join(format!("{id}.json"));
        let spawned = SystemTime::now();
        let started = Instant::now();
        let result = self.husk(v, &log, &["run", "--bundle", path_str(bundle)?, id]);
        let total = started.elapsed();
        if let Err(e) = result {
            self.delete_if_there(id);
            return Err(e);
        }
        let text = std::fs::read_to_string(&log).map_err(|e| format!("{id}'s log: {e}"))?;
        let restored = text.contains(&format!("\"stage\":\"{RESTORED_STAGE}\""));
        if restored != (v == 1) {
            return Err(format!(
                "{id}: expected a {} sandbox, the log says {}",
                VARIANTS[v],
                if restored { "restored" } else { "cold boot" }
            ));
        }
        let s = sample(&text, spawned, total);
        let agent = stage_end(&s, "agent-answers")
            .ok_or_else(|| format!("{id}: no agent-answers stage"))?;
        let exited = stage_end(&s, "exited").ok_or_else(|| format!("{id}: no exited stage"))?;
        let network = stage_end(&s, "network").ok_or_else(|| format!("{id}: no network stage"))?;
        Ok(RunTimes {
            vm: agent.saturating_sub(network),
            agent,
            exited,
            total,
        })
    }

    /// `n` sleeping sandboxes of variant `v` at once: each one's sandbox
    /// process (and what it spawned) as whole PSS in KiB, guest RAM
    /// included; then all of them deleted.
    fn memory(&mut self, v: usize, bundle: &Path, n: usize) -> Result<Vec<u64>, String> {
        let ids: Vec<String> = (0..n).map(|i| format!("m{n}v{v}n{i}")).collect();
        let mut result = Ok(Vec::new());
        let mut made = Vec::new();
        for id in &ids {
            let log = self.logs.join(format!("{id}.json"));
            if let Err(e) = self.husk(
                v,
                &log,
                &["run", "--detach", "--bundle", path_str(bundle)?, id],
            ) {
                result = Err(e);
                break;
            }
            made.push(id.clone());
        }
        if result.is_ok() {
            std::thread::sleep(SETTLE);
            result = made.iter().map(|id| self.pss_kib(id)).collect();
        }
        for id in &made {
            let log = self.logs.join(format!("{id}-delete.json"));
            if let Err(e) = self.husk(v, &log, &["delete", "--force", id]) {
                eprintln!("snapshot: {e}");
            }
        }
        let gone = wait_until(Duration::from_secs(30), || {
            reap_children();
            self.seen.iter().all(|p| !p.is_alive())
        });
        if !gone {
            return Err("sandbox processes left after delete --force".into());
        }
        result
    }

    /// The whole PSS (KiB) of container `id`'s sandbox process and its
    /// descendants.
    fn pss_kib(&mut self, id: &str) -> Result<u64, String> {
        let sandbox_pid = processes::sandbox_pid(&self.root, id)?;
        let mut pids = vec![sandbox_pid];
        pids.extend(descendants(sandbox_pid));
        self.seen
            .extend(pids.iter().filter_map(|&pid| HostProcess::of(pid)));
        pids.iter().map(|&pid| rollup_pss_kib(pid)).sum()
    }

    fn delete_if_there(&self, id: &str) {
        if Store::new(&self.root).load(id).is_ok() {
            let log = self.logs.join(format!("{id}-delete.json"));
            if let Err(e) = self.husk(0, &log, &["delete", "--force", id]) {
                eprintln!("snapshot: {e}");
            }
        }
    }

    /// Bytes the template files take on disk (the memory file is sparse).
    fn template_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        walk(&self.templates)
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }

    /// Errors unless nothing of any container is left.
    fn check_clean(&self) -> Result<(), String> {
        processes::check_clean(&self.root, &self.sandboxes, self.tmp.path(), &self.seen)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for id in Store::new(&self.root).ids().unwrap_or_default() {
            self.delete_if_there(&id);
        }
        processes::sweep("snapshot", &self.seen, &mut self.tmp);
    }
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => files.extend(walk(&path)),
            Ok(t) if t.is_file() => files.push(path),
            _ => {}
        }
    }
    files
}

/// The `Pss:` of `/proc/PID/smaps_rollup`, in KiB.
fn rollup_pss_kib(pid: i32) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("/proc/{pid}/smaps_rollup: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/smaps_rollup has no Pss line"))
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn render(
    runs: usize,
    samples: &[Vec<RunTimes>],
    memory: &[MemorySample],
    warmup: Duration,
    template_bytes: u64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "builtin VMM, {GUEST_MIB} MiB guests: cold boot vs restored from a template, \
         median of {runs} interleaved `husk run` of /bin/true each\n"
    );
    let _ = writeln!(out, "| interval | cold boot | restored | cold / restored |");
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    type Pick = fn(&RunTimes) -> Duration;
    let rows: [(&str, Pick); 4] = [
        ("the VM: network wired → agent answers", |r| r.vm),
        ("spawn → agent answers", |r| r.agent),
        ("spawn → /bin/true exited", |r| r.exited),
        ("spawn → `run` returned", |r| r.total),
    ];
    let mut agent_ratio = None;
    for (i, (what, f)) in rows.iter().enumerate() {
        let m: Vec<Duration> = samples
            .iter()
            .map(|s| median(&s.iter().map(f).collect::<Vec<_>>()))
            .collect();
        let ratio = m[0].as_secs_f64() / m[1].as_secs_f64().max(1e-9);
        if i == 0 {
            agent_ratio = Some(ratio);
        }
        let _ = writeln!(
            out,
            "| {what} | {:.0} ms | {:.0} ms | {ratio:.1}x |",
            ms(m[0]),
            ms(m[1])
        );
    }
    let _ = writeln!(
        out,
        "\nThe template: made by the restored variant's first sandbox (both warm-up runs took {:.1} s together), {:.0} MiB on disk.\n",
        warmup.as_secs_f64(),
        template_bytes as f64 / (1u64 << 20) as f64
    );
    let _ = writeln!(
        out,
        "Host memory of N sleeping sandboxes side by side: whole PSS of each sandbox process, guest RAM included (init proxies, the same for both, left out); median per sandbox, and the total\n"
    );
    let _ = writeln!(
        out,
        "| sandboxes | cold boot: per sandbox | restored: per sandbox | restored / cold | cold: total | restored: total |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
    let mut totals: Vec<(usize, [u64; 2])> = Vec::new();
    for (n, both) in memory {
        let med = [median(&both[0]), median(&both[1])];
        let total = [both[0].iter().sum::<u64>(), both[1].iter().sum::<u64>()];
        totals.push((*n, total));
        let _ = writeln!(
            out,
            "| {n} | {:.1} MiB | {:.1} MiB | {:.2} | {:.1} MiB | {:.1} MiB |",
            mib(med[0]),
            mib(med[1]),
            med[1] as f64 / med[0].max(1) as f64,
            mib(total[0]),
            mib(total[1])
        );
    }
    // What each sandbox beyond the first adds: the slope between the
    // smallest and the largest count.
    let added = match (totals.first(), totals.last()) {
        (Some((a, ta)), Some((b, tb))) if b > a => {
            let per = |v: usize| (tb[v].saturating_sub(ta[v])) as f64 / (b - a) as f64;
            Some([per(0), per(1)])
        }
        _ => None,
    };
    if let Some(added) = added {
        let _ = writeln!(
            out,
            "\nPSS each additional sandbox adds (total at the largest count minus at the smallest, per sandbox): cold boot {:.1} MiB, restored {:.1} MiB ({:.2} of cold)",
            mib(added[0] as u64),
            mib(added[1] as u64),
            added[1] / added[0].max(1.0)
        );
    }
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    if let Some(r) = agent_ratio {
        let _ = writeln!(
            out,
            "\ntarget: a restored VM reaches the agent at least 10x sooner than a cold boot (first row): {} ({r:.1}x)",
            verdict(r >= 10.0)
        );
    }
    if let Some(added) = added {
        let r = added[1] / added[0].max(1.0);
        let _ = writeln!(
            out,
            "target: an additional restored sandbox costs at most half the PSS of a cold-booted one: {} ({r:.2})",
            verdict(r <= 0.5)
        );
    }
    out
}
