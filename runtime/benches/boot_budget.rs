//! The boot budget: `husk run` of `/bin/true`, every stage from the spawn
//! to the workload's exit, host and guest, as medians. Run with
//! `cargo bench -p husk-runtime --bench boot_budget` as root, after
//! `make guest`.
//!
//! Host stages come from husk's JSON log at `log_level = "info"` (a
//! `stage` field and an RFC 3339 `time`, on the bench's own clock); each
//! interval ends at the stage named and starts at the one before it that
//! the run logged. Guest stages come from the `guest_stage` lines `husk
//! start` logs from `GetGuestDetails`: the guest's CLOCK_BOOTTIME, so
//! "kernel entry → /init" is the kernel's boot and the initrd's unpacking.
//!
//! Variants run interleaved, so that before and after are measured in the
//! same run on the same machine load. Environment:
//! - `HUSK_BUDGET_VARIANTS`: `;`-separated variants `NAME:KEY=VALUE,...`
//!   with keys `husk` (a husk binary), `kernel`, `initrd`, `params` (extra
//!   kernel command-line words, space-separated). Unset keys are this
//!   build's. Default: one variant, `this build`.
//! - `HUSK_BUDGET_RUNS` (default 10), `HUSK_BUDGET_BACKEND` (`auto`,
//!   `qemu`, `builtin`; default `auto`), `HUSK_BUDGET_BOOT_TIMEOUT`
//!   (default 120 s).
//! - `HUSK_KERNEL` and `HUSK_INITRD`: a prebuilt guest (where nothing can
//!   be built, as inside the nested layer's L1).

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use husk_tests::bench::{env_number, median, short_tempdir};
use husk_tests::budget::{parse_variant, sample, Sample, GUEST_STAGES, HOST_STAGES};
use husk_tests::{containers, guest, rootfs};

fn main() {
    if let Err(e) = bench() {
        eprintln!("boot_budget: {e}");
        std::process::exit(1);
    }
}

/// One way of running husk being measured.
struct Variant {
    name: String,
    husk: PathBuf,
    config: PathBuf,
}

fn bench() -> Result<(), String> {
    let runs = env_number("HUSK_BUDGET_RUNS", 10)? as usize;
    let timeout = env_number("HUSK_BUDGET_BOOT_TIMEOUT", 120)?;
    let backend = std::env::var("HUSK_BUDGET_BACKEND").unwrap_or_else(|_| "auto".into());
    // A short path: sandbox sockets live under it.
    let tmp = short_tempdir("hbb")?;
    let artifacts = guest::prebuilt_or_artifacts(&tmp.path().join("guest"))?;
    let specs = std::env::var("HUSK_BUDGET_VARIANTS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "this build:".into());
    let mut variants = Vec::new();
    for (n, spec) in specs
        .split(';')
        .filter(|s| !s.trim().is_empty())
        .enumerate()
    {
        let parsed = parse_variant(spec)?;
        let config = tmp.path().join(format!("husk-{n}.toml"));
        let kernel = parsed.get("kernel").map_or(&artifacts.kernel, |p| p);
        let initrd = parsed.get("initrd").map_or(&artifacts.initrd, |p| p);
        let params = parsed.get("params").map(|p| p.display().to_string());
        std::fs::write(
            &config,
            format!(
                "hypervisor = \"{backend}\"\nsandbox_root = \"{}\"\nlog_level = \"info\"\n\
                 [guest]\nkernel = \"{}\"\nimage = \"{}\"\nboot_timeout_secs = {timeout}\n\
                 kernel_params = \"{}\"\n",
                tmp.path().join("vm").display(),
                kernel.display(),
                initrd.display(),
                params.unwrap_or_default(),
            ),
        )
        .map_err(|e| format!("config: {e}"))?;
        variants.push(Variant {
            name: parsed
                .get("name")
                .map(|n| n.display().to_string())
                .unwrap_or_default(),
            husk: parsed
                .get("husk")
                .cloned()
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_husk"))),
            config,
        });
    }
    let bundle = tmp.path().join("true");
    rootfs::busybox(&bundle.join("rootfs")).map_err(|e| format!("busybox rootfs: {e}"))?;
    containers::spec(&["/bin/true"])
        .save(bundle.join("config.json"))
        .map_err(|e| format!("config.json: {e}"))?;
    let root = tmp.path().join("root");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("logs: {e}"))?;
    let run_timeout = Duration::from_secs(timeout + 120);

    // An untimed round first (page cache, the guest image's first read).
    for (v, variant) in variants.iter().enumerate() {
        husk_run(
            variant,
            &root,
            &bundle,
            &logs,
            &format!("w{v}"),
            run_timeout,
        )
        .map_err(|e| format!("{}: warm-up: {e}", variant.name))?;
    }
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        // Each variant goes first in turn.
        for k in 0..variants.len() {
            let v = (round + k) % variants.len();
            let id = format!("r{round}v{v}");
            let sample = husk_run(&variants[v], &root, &bundle, &logs, &id, run_timeout)
                .map_err(|e| format!("{} {id}: {e}", variants[v].name))?;
            eprintln!(
                "boot_budget: {} {id}: {:.0} ms",
                variants[v].name,
                ms(sample.total)
            );
            samples[v].push(sample);
        }
    }
    print!("{}", render(&backend, runs, &variants, &samples));
    Ok(())
}

/// One timed `husk run` of `variant`; on failure the container is
/// force-deleted so that nothing is left beside the next run.
fn husk_run(
    variant: &Variant,
    root: &Path,
    bundle: &Path,
    logs: &Path,
    id: &str,
    timeout: Duration,
) -> Result<Sample, String> {
    let log = logs.join(format!("{id}.json"));
    let err_path = logs.join(format!("{id}.stderr"));
    let command = |args: &[&str]| -> Result<Command, String> {
        let err = File::create(&err_path).map_err(|e| format!("stderr file: {e}"))?;
        let mut c = Command::new(&variant.husk);
        c.arg("--root")
            .arg(root)
            .arg("--config")
            .arg(&variant.config)
            .arg("--log")
            .arg(&log)
            .arg("--log-format")
            .arg("json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // A file, never a pipe: proxies inherit it.
            .stderr(err);
        Ok(c)
    };
    let bundle_arg = bundle.to_str().ok_or("bundle path is not UTF-8")?;
    let spawned = SystemTime::now();
    let started = Instant::now();
    let mut child = command(&["run", "--bundle", bundle_arg, id])?
        .spawn()
        .map_err(|e| format!("spawning husk: {e}"))?;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break Err(format!("husk run took over {timeout:?}"))?;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let total = started.elapsed();
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        if let Ok(mut c) = command(&["delete", "--force", id]) {
            let _ = c.status();
        }
        return Err(format!("husk run: {status}: {}", stderr.trim()));
    }
    let text = std::fs::read_to_string(&log).map_err(|e| format!("log: {e}"))?;
    Ok(sample(&text, spawned, total))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median of what `f` gives for the samples that have it.
fn median_of(samples: &[Sample], f: impl Fn(&Sample) -> Option<Duration>) -> Option<Duration> {
    let values: Vec<Duration> = samples.iter().filter_map(f).collect();
    (!values.is_empty()).then(|| median(&values))
}

fn render(backend: &str, runs: usize, variants: &[Variant], samples: &[Vec<Sample>]) -> String {
    let cell = |d: Option<Duration>| d.map_or("—".to_owned(), |d| format!("{:.1} ms", ms(d)));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "husk run of /bin/true, backend {backend}, median of {runs} runs per variant, interleaved\n"
    );
    let header = |out: &mut String, first: &str| {
        let _ = write!(out, "| {first} |");
        for v in variants {
            let _ = write!(out, " {} |", v.name);
        }
        let _ = writeln!(out, "\n| --- |{}", " --- |".repeat(variants.len()));
    };
    header(&mut out, "host stage (interval ending there)");
    for (stage, what) in HOST_STAGES {
        let _ = write!(out, "| `{stage}`: {what} |");
        for s in samples {
            let _ = write!(
                out,
                " {} |",
                cell(median_of(s, |r| r.host.get(stage).copied()))
            );
        }
        out.push('\n');
    }
    let _ = write!(out, "| → `run` returned (delete: VM down, cleanup) |");
    for s in samples {
        let _ = write!(out, " {} |", cell(median_of(s, |r| Some(r.tail))));
    }
    let _ = write!(out, "\n| **total** (median of the totals) |");
    for s in samples {
        let _ = write!(out, " **{}** |", cell(median_of(s, |r| Some(r.total))));
    }
    out.push_str("\n\n");
    header(&mut out, "guest stage (guest clock)");
    for (stage, what) in GUEST_STAGES {
        let _ = write!(out, "| {what} |");
        for s in samples {
            let _ = write!(
                out,
                " {} |",
                cell(median_of(s, |r| r.guest.get(stage).copied()))
            );
        }
        out.push('\n');
    }
    out
}
