//! `make bench-net` (tests/bench/net-iperf.sh): TCP throughput between a
//! container and a peer in the test's network namespace, with Debian's
//! iperf3, through a private Docker running there (husk-tests' `docker`,
//! networked): Docker's default bridge, the container's veth, and
//!
//! - `husk`: husk's own virtio-net backend (served to QEMU over vhost-user,
//!   the tap joined to the veth by tc redirects);
//! - `husk-qemu-tap`: the same guest kernel and agent, QEMU's built-in
//!   virtio-net on the same tap (`-netdev tap`), chosen by the husk
//!   configuration words in `$HUSK_BENCH_QEMU_TAP_TOML` (default
//!   `[qemu] net_backend = "tap"`);
//! - `runc`: the veth itself, no VM.
//!
//! Both husk runtimes use the QEMU hypervisor, so the two differ only in
//! the virtio-net device. Runs are interleaved (one of each runtime per
//! round), each container measures both directions; the table gives
//! medians and the ratio of husk's backend to QEMU's (TCG makes absolute
//! numbers meaningless; the ratio is the device-level comparison).
//!
//! Usage: husk-net-bench --husk PATH [--runs N] [--seconds S] [--out FILE]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_tests::docker::{self, DockerDaemon, Runtime};
use husk_tests::{guest, rootfs};

/// The image: busybox plus Debian's iperf3 and the libraries it links.
const IMAGE: &str = "husk-bench-iperf3:latest";
/// Debian's iperf3.
const IPERF3: &str = "/usr/bin/iperf3";
/// The peer's port.
const PORT: &str = "5201";
/// The husk configuration words that select QEMU's built-in tap backend,
/// unless `$HUSK_BENCH_QEMU_TAP_TOML` says otherwise.
const QEMU_TAP_TOML: &str = "[qemu]\nnet_backend = \"tap\"\n";
/// Splits the two iperf3 reports a container prints.
const SPLIT: &str = "@@husk-bench-split@@";

struct Options {
    husk: PathBuf,
    runs: usize,
    seconds: u32,
    out: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run(parse_args()) {
        eprintln!("husk-net-bench: {e:#}");
        std::process::exit(1);
    }
}

fn parse_args() -> Options {
    let mut opts = Options {
        husk: PathBuf::new(),
        runs: 5,
        seconds: 10,
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("husk-net-bench: {arg} needs a value");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--husk" => opts.husk = value().into(),
            "--runs" => opts.runs = value().parse().expect("--runs N"),
            "--seconds" => opts.seconds = value().parse().expect("--seconds S"),
            "--out" => opts.out = Some(value().into()),
            _ => {
                eprintln!(
                    "usage: husk-net-bench --husk PATH [--runs N] [--seconds S] [--out FILE]"
                );
                std::process::exit(2)
            }
        }
    }
    if opts.husk.as_os_str().is_empty() || opts.runs == 0 {
        eprintln!("husk-net-bench: --husk PATH is required, --runs at least 1");
        std::process::exit(2)
    }
    opts
}

/// One runtime's results: Mbit/s per run, each direction.
#[derive(Default)]
struct Results {
    upload: Vec<f64>,
    download: Vec<f64>,
    failures: Vec<String>,
}

fn run(opts: Options) -> Result<()> {
    let config_dir = tempfile::Builder::new().prefix("husk-nb-").tempdir()?;
    let runtimes = husk_runtimes(config_dir.path(), &opts.husk)?;
    let daemon = DockerDaemon::start_networked(&runtimes)?;
    let ns = daemon
        .netns()
        .context("a networked daemon has a namespace")?;
    import_image(&daemon)?;
    let bridge = ns.ipv4_of("docker0")?;
    let server = IperfServer::start(ns, &bridge)?;

    let names = ["husk", "husk-qemu-tap", "runc"];
    let mut results: Vec<Results> = names.iter().map(|_| Results::default()).collect();
    for round in 1..=opts.runs {
        for (name, result) in names.iter().zip(&mut results) {
            match measure(&daemon, name, &bridge, opts.seconds) {
                Ok((up, down)) => {
                    eprintln!("round {round} {name}: {up:.1} / {down:.1} Mbit/s");
                    result.upload.push(up);
                    result.download.push(down);
                }
                Err(e) => {
                    eprintln!("round {round} {name}: failed: {e:#}");
                    result.failures.push(format!("{e:#}"));
                }
            }
        }
    }
    let table = table(&names, &results, &opts);
    print!("{table}");
    if let Some(out) = &opts.out {
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    drop(server);
    let left = daemon.shutdown();
    if !left.is_empty() {
        bail!("the private Docker left:\n{left}");
    }
    if results.iter().any(|r| r.upload.is_empty()) {
        bail!("a runtime produced no measurement (see above)");
    }
    Ok(())
}

/// husk twice: its own virtio-net backend, and QEMU's built-in tap device;
/// both on the QEMU hypervisor with the project's guest.
fn husk_runtimes(dir: &Path, husk: &Path) -> Result<Vec<Runtime>> {
    let kernel = guest::kernel().map_err(anyhow::Error::msg)?;
    let image = docker::husk::initrd()?;
    let extra = std::env::var("HUSK_BENCH_QEMU_TAP_TOML").unwrap_or_else(|_| QEMU_TAP_TOML.into());
    let mut runtimes = Vec::new();
    for (name, words) in [("husk", ""), ("husk-qemu-tap", extra.as_str())] {
        let sandbox_root = dir.join(format!("vm-{}", runtimes.len()));
        let config = dir.join(format!("{name}.toml"));
        let text = format!(
            "hypervisor = \"qemu\"\n{}{words}",
            docker::husk::config_toml(&sandbox_root, &kernel, &image)
        );
        std::fs::write(&config, text)?;
        runtimes.push(Runtime {
            name: name.into(),
            path: husk.to_owned(),
            args: vec!["--config".into(), config.to_string_lossy().into_owned()],
            state_dirs: vec![sandbox_root],
        });
    }
    Ok(runtimes)
}

/// busybox plus iperf3 with every library `ldd` names, at the same paths.
fn import_image(daemon: &DockerDaemon) -> Result<()> {
    let dir = daemon.root().join("iperf-rootfs");
    let tarball = daemon.root().join("iperf-rootfs.tar");
    rootfs::busybox(&dir)?;
    let ldd = Command::new("ldd")
        .arg(IPERF3)
        .output()
        .context("running ldd")?;
    if !ldd.status.success() {
        bail!("ldd {IPERF3} failed: is iperf3 installed (scripts/install-deps.sh)?");
    }
    let mut files = vec![PathBuf::from(IPERF3)];
    files.extend(
        String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from),
    );
    for file in files {
        let target = dir.join(file.strip_prefix("/")?);
        std::fs::create_dir_all(target.parent().context("a parent")?)?;
        // Copy what the link points at: /lib64 may be a symlink.
        std::fs::copy(std::fs::canonicalize(&file)?, &target)
            .with_context(|| format!("copying {}", file.display()))?;
    }
    let out = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .args(["-cf"])
        .arg(&tarball)
        .arg(".")
        .output()?;
    if !out.status.success() {
        bail!("tar: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = daemon.docker(&["import", &tarball.to_string_lossy(), IMAGE]);
    if !out.status.success() {
        bail!("docker import: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::remove_dir_all(&dir)?;
    std::fs::remove_file(&tarball)?;
    Ok(())
}

/// One container of `runtime`: iperf3 to the peer (container sends), then
/// reversed (peer sends); Mbit/s received in each.
fn measure(daemon: &DockerDaemon, runtime: &str, peer: &str, seconds: u32) -> Result<(f64, f64)> {
    let client = format!("iperf3 -c {peer} -p {PORT} -t {seconds} -J");
    let script = format!(
        "{client} > /tmp/up.json && {client} -R > /tmp/down.json && \
         cat /tmp/up.json && echo {SPLIT} && cat /tmp/down.json"
    );
    let runtime_flag = format!("--runtime={runtime}");
    let out = daemon.run(&["--rm", &runtime_flag, IMAGE, "sh", "-c", &script]);
    if !out.status.success() {
        bail!(
            "{} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (up, down) = text
        .split_once(SPLIT)
        .context("the container printed one report only")?;
    Ok((mbits(up)?, mbits(down)?))
}

/// `end.sum_received.bits_per_second` of an iperf3 JSON report, in Mbit/s.
fn mbits(report: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(report.trim()).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e6)
        .with_context(|| format!("no end.sum_received in {}", report.trim()))
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

fn table(names: &[&str], results: &[Results], opts: &Options) -> String {
    let medians: Vec<(Option<f64>, Option<f64>)> = results
        .iter()
        .map(|r| (median(&r.upload), median(&r.download)))
        .collect();
    let qemu = medians[1];
    let ratio = |v: Option<f64>, base: Option<f64>| match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".into(),
    };
    let cell = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nTCP throughput, container <-> peer in the test namespace (iperf3, {} s each, median of {} interleaved runs)\n",
        opts.seconds, opts.runs
    );
    let _ = writeln!(
        t,
        "| runtime | container -> peer (Mbit/s) | peer -> container (Mbit/s) | vs husk-qemu-tap (->, <-) | runs ok |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|");
    for ((name, r), (up, down)) in names.iter().zip(results).zip(&medians) {
        let _ = writeln!(
            t,
            "| {name} | {} | {} | {}, {} | {}/{} |",
            cell(*up),
            cell(*down),
            ratio(*up, qemu.0),
            ratio(*down, qemu.1),
            r.upload.len(),
            opts.runs
        );
    }
    for (name, r) in names.iter().zip(results) {
        if let Some(first) = r.failures.first() {
            let _ = writeln!(
                t,
                "\n{name}: {} failed runs, the first: {first}",
                r.failures.len()
            );
        }
    }
    t
}

/// `iperf3 -s` on the bridge address inside the test's namespace; stopped
/// by its PID on drop.
struct IperfServer(Child);

impl IperfServer {
    fn start(ns: &husk_tests::netns::NetNs, addr: &str) -> Result<Self> {
        let mut cmd = ns.command(IPERF3, &["-s", "-B", addr, "-p", PORT])?;
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut server = Self(cmd.spawn().context("starting iperf3 -s")?);
        std::thread::sleep(Duration::from_millis(500));
        if let Some(status) = server.0.try_wait()? {
            bail!("iperf3 -s -B {addr} exited: {status}");
        }
        Ok(server)
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_read_from_the_receivers_sum() {
        let report = r#"{"end": {"sum_received": {"bits_per_second": 2500000.0}}}"#;
        assert_eq!(mbits(report).unwrap(), 2.5);
        assert!(mbits("{}").is_err());
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }
}
