//! `husk run` of `/bin/true` end to end, split by stage, for each measured
//! hypervisor backend (interleaved), beside `runc run` and `crun run` of the
//! same busybox bundle; then the host memory of a sandbox (`husk run
//! --detach` of a sleeping container) per backend, VMM side, guest RAM
//! excluded. Run with `cargo bench -p husk-runtime --bench oci_run` as
//! root, after `make guest`.
//!
//! The stages come from husk's own JSON log at `log_level = "info"`: each
//! stage is one line with a `stage` field and an RFC 3339 `time`, on the
//! same clock as the bench's own `SystemTime` readings. Where the VM runs on
//! KVM, the first guest instruction is the first `kvm:kvm_entry` event after
//! the spawn (see [`KvmEntryTrace`]).
//!
//! Environment:
//! - `HUSK_BENCH_BACKENDS`: comma-separated `auto`, `builtin`, `qemu`
//!   (default `auto`: the backend this host picks). A backend this host
//!   cannot run (the builtin VMM where KVM cannot run Linux guests, QEMU
//!   where it is not installed) is skipped with one line saying why.
//! - `HUSK_BENCH_RUNS` (default 10): timed runs per backend;
//!   `HUSK_BENCH_MEMORY_SANDBOXES` (default 3): memory samples per backend;
//!   `HUSK_BENCH_BOOT_TIMEOUT` (default 120): the guest's
//!   `boot_timeout_secs`.
//! - `HUSK_BENCH_PEERS`: comma-separated peers among `crun`, `runc`, or
//!   `none` (default: those installed).
//! - `HUSK_KERNEL` and `HUSK_INITRD`: a prebuilt guest kernel and initrd
//!   (where nothing can be built, as inside the nested layer's L1); without
//!   `HUSK_INITRD` the initrd is packed from the agent as `make guest` does.
//!
//! Whatever it creates (containers, sandboxes, their processes, mounts, the
//! temporary directory) is taken down on the way out, failed or not.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use husk_runtime::host_process::HostProcess;
use husk_runtime::hypervisor::qemu::{self, Accel};
use husk_runtime::hypervisor::{Backend, ConcreteBackend};
use husk_runtime::store::Store;
use husk_tests::bench::{
    env_number, mappings, median, monotonic_now, peer_run, peers, short_tempdir, KvmEntryTrace,
    Mapping,
};
use husk_tests::processes::{self, become_subreaper, descendants, reap_children, wait_until};
use husk_tests::{containers, guest, rootfs};
use husk_vmm::machine::layout::MMIO_GAP_START;
use husk_vmm::machine::HostCheck;

/// Guest RAM of every sandbox (the bundle sets no memory limit; the
/// configuration says this explicitly, so that the guest RAM mappings have a
/// known size).
const GUEST_MIB: u64 = 256;
/// How long a detached sandbox is left before its memory is read, so that
/// what `run --detach` set in motion (the container's start) has settled.
const SETTLE: Duration = Duration::from_secs(2);
/// QEMU's guest RAM: the backend's `memory-backend-memfd` object (QEMU
/// names the memfd after the object's type), mapped by QEMU and, for the
/// vhost-user devices, by the sandbox process.
const QEMU_RAM: &str = "/memfd:memory-backend-memfd (deleted)";
/// The builtin VMM's guest RAM when it is memfd-backed
/// (`MemoryBacking::Memfd`); by default it is anonymous memory instead.
const BUILTIN_MEMFD_RAM: &str = "/memfd:husk-guest-ram";

/// The stages husk logs, in order, each with the interval that ends at it.
const STAGES: [(&str, &str); 6] = [
    ("cli", "spawn → `cli` (husk exec'd, config loaded)"),
    (
        "sandbox-process",
        "→ `sandbox-process` (sandbox process started)",
    ),
    (
        "vm-started",
        "→ `vm-started` (QEMU spawned / builtin vCPUs started)",
    ),
    (
        "agent-answers",
        "→ `agent-answers` (guest booted, agent up)",
    ),
    ("container-created", "→ `container-created`"),
    ("exited", "→ `exited` (started, /bin/true ran)"),
];
/// Where `agent-answers` is in [`STAGES`].
const AGENT_ANSWERS: usize = 3;
/// The last interval: from the guest process's exit to `husk run` returning.
const LAST_STAGE: &str = "→ run returned (delete: VM down, cleanup)";

fn main() {
    if let Err(e) = bench() {
        eprintln!("oci_run: {e}");
        std::process::exit(1);
    }
}

/// The bench's settings, from the environment (see the module doc).
struct Settings {
    runs: usize,
    memory_sandboxes: usize,
    boot_timeout_secs: u64,
    peers: Vec<&'static str>,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let number = env_number;
        let peers = match std::env::var("HUSK_BENCH_PEERS") {
            Ok(wanted) => peers()
                .into_iter()
                .filter(|p| wanted.split(',').any(|w| w.trim() == *p))
                .collect(),
            Err(_) => peers(),
        };
        Ok(Self {
            runs: number("HUSK_BENCH_RUNS", 10)? as usize,
            memory_sandboxes: number("HUSK_BENCH_MEMORY_SANDBOXES", 3)? as usize,
            boot_timeout_secs: number("HUSK_BENCH_BOOT_TIMEOUT", 120)?,
            peers,
        })
    }

    /// How long one husk command may take before the bench gives up on it:
    /// a boot, plus the rest of the run.
    fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_secs + 120)
    }
}

/// One measured backend.
struct Target {
    backend: ConcreteBackend,
    /// Its configuration file (`hypervisor = ...` set explicitly).
    config: PathBuf,
    /// Its vCPUs run on KVM, so its first guest instruction is a
    /// `kvm_entry` event (under TCG there is none).
    kvm: bool,
}

/// The backends asked for in `HUSK_BENCH_BACKENDS` that `host` can run, and
/// one line for each one skipped.
fn choose_backends(host: &HostCheck) -> Result<(Vec<ConcreteBackend>, Vec<String>), String> {
    let wanted = std::env::var("HUSK_BENCH_BACKENDS").unwrap_or_else(|_| "auto".into());
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    for name in wanted.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let backend: Backend = name
            .parse()
            .map_err(|e| format!("HUSK_BENCH_BACKENDS: {e}"))?;
        let (concrete, _) = backend.resolve(host);
        if chosen.contains(&concrete) {
            continue;
        }
        match concrete {
            ConcreteBackend::Builtin => {
                if let Some(why) = host.limitation() {
                    skipped.push(format!(
                        "builtin: skipped: {why}, so the builtin VMM cannot boot a Linux guest here"
                    ));
                    continue;
                }
            }
            ConcreteBackend::Qemu => {
                if qemu::find_program(Path::new("qemu-system-x86_64")).is_none() {
                    skipped.push("qemu: skipped: qemu-system-x86_64 is not installed".into());
                    continue;
                }
            }
        }
        chosen.push(concrete);
    }
    Ok((chosen, skipped))
}

/// What one backend measured.
#[derive(Default)]
struct Results {
    runs: Vec<RunSample>,
    failures: Vec<String>,
    memory: Vec<Vec<Usage>>,
    /// Why it was dropped part way, if it was.
    dropped: Option<String>,
}

fn bench() -> Result<(), String> {
    // Detached sandboxes' processes become ours once `husk run --detach`
    // exits, so that they are reaped here rather than left as zombies.
    become_subreaper()?;
    let settings = Settings::from_env()?;
    let host = HostCheck::run();
    let (backends, skipped) = choose_backends(&host)?;
    for line in &skipped {
        println!("{line}");
    }
    if backends.is_empty() {
        println!("no backend to measure on this host");
        return Ok(());
    }
    let kvm_accel = Accel::for_host(&host).name() == "kvm";
    let mut world = World::new(&settings, &backends, kvm_accel)?;
    let bundle_true = world.bundle("true", &["/bin/true"])?;
    let bundle_sleep = world.bundle("sleep", &["sleep", "3600"])?;

    // The first guest instruction, where a VM runs on KVM.
    let mut notes = Vec::new();
    let trace = if world.targets.iter().any(|t| t.kvm) {
        match KvmEntryTrace::start() {
            Ok(trace) => Some(trace),
            Err(e) => {
                notes.push(format!("(a) not measured: {e}"));
                None
            }
        }
    } else {
        None
    };
    for t in world.targets.iter().filter(|t| !t.kvm) {
        notes.push(format!(
            "(a) not measured for {}: it runs under TCG on this host, so no KVM entry marks its first instruction",
            t.backend
        ));
    }

    let mut results: Vec<Results> = backends.iter().map(|_| Results::default()).collect();
    // One untimed round first: page cache, the guest image's first read. A
    // backend whose warm-up fails is dropped, not retried for every round.
    for (t, result) in results.iter_mut().enumerate() {
        if let Err(e) = world.husk_run(t, &bundle_true, "warmup", None) {
            result.dropped = Some(format!("warm-up run failed: {}", first_line(&e)));
            eprintln!("oci_run: {}: {e}", backends[t]);
        }
    }
    for peer in &settings.peers {
        peer_run(peer, &bundle_true, &format!("hkb-warmup-{peer}"))?;
    }

    // Rounds, each backend once then each peer once, until every backend
    // has its runs; a failed run (a guest that did not boot, say) is
    // reported and made up for, up to half as many again. The backends take
    // turns going first, so that neither always runs right after the other.
    let mut peer_times = vec![Vec::new(); settings.peers.len()];
    let allowed_failures = settings.runs / 2;
    for round in 0..settings.runs + allowed_failures {
        let mut ran = false;
        let mut order: Vec<usize> = (0..backends.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for t in order {
            let result = &mut results[t];
            if result.dropped.is_some() || result.runs.len() >= settings.runs {
                continue;
            }
            ran = true;
            let id = format!("run{round}");
            match world.husk_run(t, &bundle_true, &id, trace.as_ref()) {
                Ok(sample) => {
                    eprintln!(
                        "oci_run: {} {id}: agent answers {:.1} s, total {:.1} s",
                        backends[t],
                        sample.agent_answers().as_secs_f64(),
                        sample.total.as_secs_f64()
                    );
                    result.runs.push(sample);
                }
                Err(e) => {
                    eprintln!("oci_run: {} {id}: {e}", backends[t]);
                    result.failures.push(format!("{id}: {}", first_line(&e)));
                    // Whatever the failed run left must not run beside the
                    // next one (its vCPUs would be in the KVM trace).
                    world.delete_if_there(t, &id);
                    if result.failures.len() > allowed_failures {
                        result.dropped = Some("too many failed runs".into());
                    }
                }
            }
        }
        if !ran {
            break;
        }
        for (i, peer) in settings.peers.iter().enumerate() {
            let id = format!("hkb-{}-{round}-{peer}", std::process::id());
            peer_times[i].push(peer_run(peer, &bundle_true, &id)?);
        }
    }
    drop(trace);

    for n in 0..settings.memory_sandboxes {
        for (t, result) in results.iter_mut().enumerate() {
            if result.dropped.is_some() {
                continue;
            }
            match world.sandbox_memory(t, &bundle_sleep, &format!("mem{n}")) {
                Ok(usage) => result.memory.push(usage),
                Err(e) => {
                    eprintln!("oci_run: {} mem{n}: {e}", backends[t]);
                    result.failures.push(format!("mem{n}: {}", first_line(&e)));
                }
            }
        }
    }

    let report = Report {
        notes: &notes,
        settings: &settings,
        backends: &backends,
        results: &results,
        peer_times: &peer_times,
    };
    print!("{}", report.render());
    world.check_clean()?;
    // Tables first, then the verdict: a backend that could not give its
    // runs is a failure (one this host cannot run at all was skipped above).
    let short: Vec<String> = backends
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.runs.len() < settings.runs || r.memory.len() < settings.memory_sandboxes)
        .map(|(b, _)| b.to_string())
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "failed runs on {} (listed above the tables)",
            short.join(", ")
        ))
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// The state root, sandbox root, configurations and logs of this bench,
/// all under one temporary directory.
struct World {
    root: PathBuf,
    sandboxes: PathBuf,
    logs: PathBuf,
    targets: Vec<Target>,
    timeout: Duration,
    /// The host processes of every sandbox seen, killed on the way out if
    /// `delete` left any of them.
    seen: Vec<HostProcess>,
    // Last, so that it is removed after the sandboxes (whose binds reach
    // into it) are down.
    tmp: tempfile::TempDir,
}

impl World {
    fn new(
        settings: &Settings,
        backends: &[ConcreteBackend],
        kvm_accel: bool,
    ) -> Result<Self, String> {
        // A short path: sandbox sockets live under it.
        let tmp = short_tempdir("hkb")?;
        let artifacts = guest::prebuilt_or_artifacts(&tmp.path().join("guest"))?;
        let sandboxes = tmp.path().join("vm");
        let mut targets = Vec::new();
        for &backend in backends {
            let config = tmp.path().join(format!("husk-{backend}.toml"));
            std::fs::write(
                &config,
                format!(
                    "hypervisor = \"{backend}\"\nsandbox_root = \"{}\"\nlog_level = \"info\"\n\
                     [guest]\nkernel = \"{}\"\nimage = \"{}\"\nboot_timeout_secs = {}\n\
                     default_memory_mib = {GUEST_MIB}\n",
                    sandboxes.display(),
                    artifacts.kernel.display(),
                    artifacts.initrd.display(),
                    settings.boot_timeout_secs,
                ),
            )
            .map_err(|e| format!("config: {e}"))?;
            let kvm = backend == ConcreteBackend::Builtin || kvm_accel;
            targets.push(Target {
                backend,
                config,
                kvm,
            });
        }
        let world = Self {
            root: tmp.path().join("root"),
            sandboxes,
            logs: tmp.path().join("logs"),
            targets,
            timeout: settings.command_timeout(),
            seen: Vec::new(),
            tmp,
        };
        std::fs::create_dir_all(&world.logs).map_err(|e| format!("logs: {e}"))?;
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

    fn command(&self, config: &Path, log: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
        c.arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(config)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json")
            .args(args);
        c
    }

    /// Runs `husk ARGS` with target `t`'s configuration to completion, its
    /// log in `log`. stderr goes to a file, never a pipe: the proxies a
    /// detached run leaves behind inherit it and would hold a pipe open.
    fn husk(&mut self, t: usize, log: &Path, args: &[&str]) -> Result<(), String> {
        let command = self.command(&self.targets[t].config, log, args);
        processes::run_husk(command, log, args, self.timeout)
    }

    /// One timed `husk run --bundle BUNDLE ID` with target `t`, its stages
    /// and, when `trace` is given and the VM runs on KVM, its first guest
    /// instruction. The container id is prefixed with the backend's name.
    fn husk_run(
        &mut self,
        t: usize,
        bundle: &Path,
        id: &str,
        trace: Option<&KvmEntryTrace>,
    ) -> Result<RunSample, String> {
        let id = format!("{}-{id}", self.targets[t].backend);
        let trace = trace.filter(|_| self.targets[t].kvm);
        let log = self.logs.join(format!("{id}.json"));
        let bundle = path_str(bundle)?;
        if let Some(trace) = trace {
            trace.clear()?;
        }
        let spawned = SystemTime::now();
        let spawned_mono = monotonic_now();
        let started = Instant::now();
        self.husk(t, &log, &["run", "--bundle", bundle, &id])?;
        let total = started.elapsed();
        let first_instruction = match trace {
            Some(trace) => trace
                .first_entry()?
                .map(|at| at.saturating_sub(spawned_mono)),
            None => None,
        };
        let text = std::fs::read_to_string(&log).map_err(|e| format!("{id}'s log: {e}"))?;
        let logged = stage_times(&text);
        let mut ends = Vec::with_capacity(STAGES.len());
        for (stage, _) in STAGES {
            let at = logged
                .get(stage)
                .ok_or_else(|| format!("{id}: no `{stage}` stage in the log:\n{text}"))?;
            ends.push(at.duration_since(spawned).unwrap_or(Duration::ZERO));
        }
        Ok(RunSample {
            ends,
            total,
            first_instruction,
        })
    }

    /// `husk run --detach` of a sleeping container with target `t`: the
    /// memory of its sandbox process, the processes under it (QEMU) and its
    /// init proxy; then `husk delete --force`.
    fn sandbox_memory(&mut self, t: usize, bundle: &Path, id: &str) -> Result<Vec<Usage>, String> {
        let backend = self.targets[t].backend;
        let id = format!("{backend}-{id}");
        let log = self.logs.join(format!("{id}.json"));
        let pid_file = self.tmp.path().join(format!("{id}.pid"));
        self.husk(
            t,
            &log,
            &[
                "run",
                "--detach",
                "--bundle",
                path_str(bundle)?,
                "--pid-file",
                path_str(&pid_file)?,
                &id,
            ],
        )?;
        // Deleted whatever the measurement gave.
        let measured = self.measure(&id, backend, &pid_file);
        self.husk(t, &log, &["delete", "--force", &id])?;
        let gone = wait_until(Duration::from_secs(30), || {
            reap_children();
            self.seen.iter().all(|p| !p.is_alive())
        });
        if !gone {
            return Err(format!("{id}: processes left after delete --force"));
        }
        measured
    }

    /// The memory of sandbox `id`'s processes (its init proxy's pid in
    /// `pid_file`), [`SETTLE`] after its start.
    fn measure(
        &mut self,
        id: &str,
        backend: ConcreteBackend,
        pid_file: &Path,
    ) -> Result<Vec<Usage>, String> {
        let proxy: i32 = std::fs::read_to_string(pid_file)
            .map_err(|e| format!("{id}'s pid file: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("{id}'s pid file: {e}"))?;
        let sandbox_pid = processes::sandbox_pid(&self.root, id)?;
        // (pid, name, VMM side, holds the VM).
        let mut processes = vec![(
            sandbox_pid,
            "sandbox process".to_owned(),
            true,
            backend == ConcreteBackend::Builtin,
        )];
        for pid in descendants(sandbox_pid) {
            processes.push((pid, comm(pid), true, true));
        }
        processes.push((proxy, "init proxy".to_owned(), false, false));
        self.seen.extend(
            processes
                .iter()
                .filter_map(|(pid, ..)| HostProcess::of(*pid)),
        );

        std::thread::sleep(SETTLE);
        let mut usage = Vec::new();
        for (pid, name, vmm_side, holds_vm) in processes {
            let u = Usage::read(pid, name, vmm_side, backend)?;
            if holds_vm && u.ram_sizes.is_empty() {
                return Err(format!(
                    "{id}: {} ({pid}) has no mapping recognised as guest RAM",
                    u.name
                ));
            }
            usage.push(u);
        }
        Ok(usage)
    }

    /// `husk delete --force` of run `id` of target `t` (as [`husk_run`]
    /// names it), if its container is still there.
    ///
    /// [`husk_run`]: Self::husk_run
    fn delete_if_there(&mut self, t: usize, id: &str) {
        let id = format!("{}-{id}", self.targets[t].backend);
        if Store::new(&self.root).load(&id).is_ok() {
            let log = self.logs.join(format!("{id}-delete.json"));
            if let Err(e) = self.husk(t, &log, &["delete", "--force", &id]) {
                eprintln!("oci_run: {e}");
            }
        }
    }

    /// Errors unless nothing of any container is left.
    fn check_clean(&self) -> Result<(), String> {
        processes::check_clean(&self.root, &self.sandboxes, self.tmp.path(), &self.seen)
    }
}

impl Drop for World {
    /// Takes down whatever a failure left: containers (through husk), then
    /// their processes and mounts if `delete` could not.
    fn drop(&mut self) {
        let log = self.logs.join("cleanup.json");
        let ids = Store::new(&self.root).ids().unwrap_or_default();
        for id in ids {
            // Any configuration deletes any container: the record says which
            // backend it has.
            if let Err(e) = self.husk(0, &log, &["delete", "--force", &id]) {
                eprintln!("oci_run: cleanup: {e}");
            }
        }
        processes::sweep("oci_run", &self.seen, &mut self.tmp);
    }
}

/// One `husk run`: when each stage was logged, relative to the spawn (in
/// [`STAGES`] order), the whole run, and the VM's first guest instruction
/// if it was measured.
struct RunSample {
    ends: Vec<Duration>,
    total: Duration,
    first_instruction: Option<Duration>,
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

    /// Spawn → `agent-answers`.
    fn agent_answers(&self) -> Duration {
        self.ends[AGENT_ANSWERS]
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

/// One process's memory, from `/proc/<pid>/smaps`: everything, and the
/// guest RAM mappings in it.
struct Usage {
    name: String,
    /// Part of the VMM side: the sandbox process and what it spawned
    /// (QEMU), not the init proxy, which is the same for every backend.
    vmm_side: bool,
    rss_kib: u64,
    pss_kib: u64,
    ram_rss_kib: u64,
    ram_pss_kib: u64,
    /// The sizes of the mappings counted as guest RAM.
    ram_sizes: Vec<u64>,
}

impl Usage {
    fn read(
        pid: i32,
        name: String,
        vmm_side: bool,
        backend: ConcreteBackend,
    ) -> Result<Self, String> {
        let maps = mappings(pid).map_err(|e| format!("{name}: {e}"))?;
        let ram: Vec<&Mapping> = maps.iter().filter(|m| is_guest_ram(backend, m)).collect();
        Ok(Self {
            name,
            vmm_side,
            rss_kib: maps.iter().map(|m| m.rss_kib).sum(),
            pss_kib: maps.iter().map(|m| m.pss_kib).sum(),
            ram_rss_kib: ram.iter().map(|m| m.rss_kib).sum(),
            ram_pss_kib: ram.iter().map(|m| m.pss_kib).sum(),
            ram_sizes: ram.iter().map(|m| m.size).collect(),
        })
    }

    fn vmm_rss_kib(&self) -> u64 {
        self.rss_kib - self.ram_rss_kib
    }

    fn vmm_pss_kib(&self) -> u64 {
        self.pss_kib - self.ram_pss_kib
    }
}

/// Whether `m`, a mapping of a process of a `backend` sandbox, is guest RAM.
///
/// QEMU's guest RAM is its named memfd, in QEMU and in the sandbox process
/// that serves the vhost-user devices. The builtin VMM allocates each RAM
/// range (below the MMIO gap, and above 4 GiB past it) as one private
/// anonymous `MAP_NORESERVE` mapping of that range's size
/// (`vmm/src/machine/memory.rs`): anonymous, `nr` in its `VmFlags`, and at
/// least as large as the low range (the kernel may merge it with a
/// neighbour, never split it). Nothing else of that size is anonymous and
/// `nr` in the sandbox process: glibc's arenas, also `nr`, are 64 MiB.
fn is_guest_ram(backend: ConcreteBackend, m: &Mapping) -> bool {
    if m.name == QEMU_RAM || m.name.starts_with(BUILTIN_MEMFD_RAM) {
        return true;
    }
    let low_range = (GUEST_MIB << 20).min(MMIO_GAP_START);
    backend == ConcreteBackend::Builtin
        && m.name.is_empty()
        && m.flags.iter().any(|f| f == "nr")
        && m.size >= low_range
}

/// Everything measured, rendered as Markdown tables.
struct Report<'a> {
    /// Lines printed under the summary (what was not measured, and why).
    notes: &'a [String],
    settings: &'a Settings,
    backends: &'a [ConcreteBackend],
    results: &'a [Results],
    peer_times: &'a [Vec<Duration>],
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Report<'_> {
    fn render(&self) -> String {
        let mut out = String::new();
        self.header(&mut out);
        self.stages(&mut out);
        self.peers(&mut out);
        self.memory(&mut out);
        self.summary(&mut out);
        out
    }

    /// The median of `f` over a backend's runs, if it has any.
    fn run_median(&self, t: usize, f: impl Fn(&RunSample) -> Option<Duration>) -> Option<Duration> {
        let v: Vec<Duration> = self.results[t].runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(&v))
    }

    /// The median over a backend's memory samples of the sum of `f` over
    /// the processes `include` picks.
    fn memory_median(
        &self,
        t: usize,
        include: impl Fn(&Usage) -> bool,
        f: impl Fn(&Usage) -> u64,
    ) -> Option<u64> {
        let sums: Vec<u64> = self.results[t]
            .memory
            .iter()
            .map(|s| s.iter().filter(|u| include(u)).map(&f).sum())
            .collect();
        (!sums.is_empty()).then(|| median(&sums))
    }

    fn header(&self, out: &mut String) {
        let peers = if self.settings.peers.is_empty() {
            String::new()
        } else {
            format!(
                ", each round followed by {}",
                self.settings.peers.join(", ")
            )
        };
        let _ = writeln!(
            out,
            "husk run of /bin/true: {} timed runs per backend, backends interleaved{peers}; \
             medians. Guest: 1 vCPU, {GUEST_MIB} MiB.\n",
            self.settings.runs
        );
        for (backend, result) in self.backends.iter().zip(self.results) {
            for failure in &result.failures {
                let _ = writeln!(out, "- {backend}: failed: {failure}");
            }
            if let Some(why) = &result.dropped {
                let _ = writeln!(out, "- {backend}: dropped: {why}");
            }
        }
        out.push('\n');
    }

    fn stages(&self, out: &mut String) {
        let _ = write!(out, "| stage |");
        for b in self.backends {
            let _ = write!(out, " {b} |");
        }
        let _ = writeln!(out, "\n| --- |{}", " --- |".repeat(self.backends.len()));
        let labels = STAGES.iter().map(|(_, label)| *label).chain([LAST_STAGE]);
        for (i, label) in labels.enumerate() {
            let _ = write!(out, "| {label} |");
            for t in 0..self.backends.len() {
                let m = self.run_median(t, |r| Some(r.intervals()[i]));
                let _ = write!(out, " {} |", cell_ms(m));
            }
            out.push('\n');
        }
        let _ = write!(out, "| total (median of the totals) |");
        for t in 0..self.backends.len() {
            let _ = write!(out, " {} |", cell_ms(self.run_median(t, |r| Some(r.total))));
        }
        out.push_str("\n\n");
    }

    fn peers(&self, out: &mut String) {
        if self.settings.peers.is_empty() {
            return;
        }
        let _ = writeln!(out, "| runtime | median | husk run / runtime |");
        let _ = writeln!(out, "| --- | --- | --- |");
        let totals: Vec<Option<Duration>> = (0..self.backends.len())
            .map(|t| self.run_median(t, |r| Some(r.total)))
            .collect();
        for (b, total) in self.backends.iter().zip(&totals) {
            let _ = writeln!(out, "| husk run ({b}) | {} | |", cell_ms(*total));
        }
        for (peer, times) in self.settings.peers.iter().zip(self.peer_times) {
            if times.is_empty() {
                continue;
            }
            let m = median(times);
            let ratios: Vec<String> = self
                .backends
                .iter()
                .zip(&totals)
                .filter_map(|(b, total)| {
                    Some(format!(
                        "{b} {:.1}",
                        (*total)?.as_secs_f64() / m.as_secs_f64()
                    ))
                })
                .collect();
            let _ = writeln!(
                out,
                "| {peer} run | {:.1} ms | {} |",
                ms(m),
                ratios.join(", ")
            );
        }
        out.push('\n');
    }

    fn memory(&self, out: &mut String) {
        for (t, backend) in self.backends.iter().enumerate() {
            let samples = &self.results[t].memory;
            let Some(first) = samples.first() else {
                continue;
            };
            let _ = writeln!(
                out,
                "host memory of one {backend} sandbox (sleeping container), median of {}\n",
                samples.len()
            );
            let _ = writeln!(
                out,
                "| process | RSS, guest RAM excluded | PSS, guest RAM excluded | guest RAM mappings left out (their RSS) |"
            );
            let _ = writeln!(out, "| --- | --- | --- | --- |");
            let row = |out: &mut String, label: &str, include: &dyn Fn(&Usage) -> bool| {
                let rss = self.memory_median(t, include, Usage::vmm_rss_kib);
                let pss = self.memory_median(t, include, Usage::vmm_pss_kib);
                let ram = self.memory_median(t, include, |u| u.ram_rss_kib);
                let sizes: Vec<u64> = first
                    .iter()
                    .filter(|u| include(u))
                    .flat_map(|u| u.ram_sizes.iter().copied())
                    .collect();
                let maps = match sizes.len() {
                    0 => "none".to_owned(),
                    n => format!("{n} of {} MiB in all", sizes.iter().sum::<u64>() >> 20),
                };
                let _ = writeln!(
                    out,
                    "| {label} | {:.1} MiB | {:.1} MiB | {maps} ({:.1} MiB) |",
                    mib(rss.unwrap_or(0)),
                    mib(pss.unwrap_or(0)),
                    mib(ram.unwrap_or(0))
                );
            };
            for u in first {
                let name = u.name.clone();
                row(out, &name, &|x: &Usage| x.name == name);
            }
            row(
                out,
                "**VMM side** (all but the init proxy)",
                &|u: &Usage| u.vmm_side,
            );
            out.push('\n');
        }
    }

    fn summary(&self, out: &mut String) {
        let builtin = self
            .backends
            .iter()
            .position(|b| *b == ConcreteBackend::Builtin);
        let qemu = self
            .backends
            .iter()
            .position(|b| *b == ConcreteBackend::Qemu);
        let both = builtin.zip(qemu);
        let _ = write!(out, "| per sandbox |");
        for b in self.backends {
            let _ = write!(out, " {b} |");
        }
        if both.is_some() {
            let _ = write!(out, " qemu / builtin |");
        }
        let columns = self.backends.len() + usize::from(both.is_some());
        let _ = writeln!(out, "\n| --- |{}", " --- |".repeat(columns));

        type Metric<'m> = (&'m str, Box<dyn Fn(usize) -> Option<f64> + 'm>, &'m str);
        let metrics: [Metric; 5] = [
            (
                "(a) start → first guest instruction (first KVM entry)",
                Box::new(|t| self.run_median(t, |r| r.first_instruction).map(ms)),
                "ms",
            ),
            (
                "(b) start → agent answers",
                Box::new(|t| self.run_median(t, |r| Some(r.agent_answers())).map(ms)),
                "ms",
            ),
            (
                "(c) `husk run` of /bin/true, end to end",
                Box::new(|t| self.run_median(t, |r| Some(r.total)).map(ms)),
                "ms",
            ),
            (
                "(d) host memory, VMM side, RSS (guest RAM excluded)",
                Box::new(|t| {
                    self.memory_median(t, |u| u.vmm_side, Usage::vmm_rss_kib)
                        .map(mib)
                }),
                "MiB",
            ),
            (
                "(d) host memory, VMM side, PSS (guest RAM excluded)",
                Box::new(|t| {
                    self.memory_median(t, |u| u.vmm_side, Usage::vmm_pss_kib)
                        .map(mib)
                }),
                "MiB",
            ),
        ];
        let mut ratios = Vec::new();
        for (label, value, unit) in &metrics {
            let _ = write!(out, "| {label} |");
            for t in 0..self.backends.len() {
                match value(t) {
                    Some(v) if *unit == "ms" => {
                        let _ = write!(out, " {v:.0} {unit} |");
                    }
                    Some(v) => {
                        let _ = write!(out, " {v:.1} {unit} |");
                    }
                    None => out.push_str(" not measured |"),
                }
            }
            if let Some((b, q)) = both {
                let ratio = value(b).zip(value(q)).map(|(b, q)| q / b);
                ratios.push(ratio);
                match ratio {
                    Some(r) => {
                        let _ = write!(out, " {r:.2} |");
                    }
                    None => out.push_str(" |"),
                }
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "\nstart = the spawn of `husk run`. (a) is the first `kvm:kvm_entry` event of \
             the VM (for QEMU, its firmware's first instruction); VMM side = the sandbox \
             process (and QEMU), each without its guest RAM mappings."
        );
        for note in self.notes {
            let _ = writeln!(out, "{note}");
        }
        if both.is_some() {
            let verdict = |r: Option<f64>, target: f64| match r {
                Some(r) if r >= target => format!("met ({r:.2}x)"),
                Some(r) => format!("NOT met ({r:.2}x)"),
                None => "not measured".to_owned(),
            };
            let _ = writeln!(
                out,
                "\ntarget: builtin reaches the agent at least 2x sooner than QEMU: {}",
                verdict(ratios[1], 2.0)
            );
            let _ = writeln!(
                out,
                "target: builtin uses at most 1/4 of QEMU's host memory: RSS {}, PSS {}",
                verdict(ratios[3], 4.0),
                verdict(ratios[4], 4.0)
            );
        }
    }
}

fn cell_ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.0} ms", ms(d)))
        .unwrap_or_else(|| "—".to_owned())
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
