//! `make demo`: runs a busybox container in a microVM through the installed
//! `husk` CLI, exactly as a runc user would: `husk check`, then `husk run`
//! of a bundle made here (busybox root file system, `husk spec`'s config).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use husk_tests::rootfs;
use oci_spec::runtime::Spec;

fn main() -> anyhow::Result<()> {
    let husk = std::env::var_os("HUSK").map_or_else(|| PathBuf::from("husk"), PathBuf::from);
    let message = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "hello from husk".into());

    // What this host can do (informational: the run below is the proof).
    let _ = Command::new(&husk).arg("check").status();

    let work = tempfile::tempdir().context("temporary directory")?;
    let bundle = work.path();
    rootfs::busybox(&bundle.join("rootfs")).context("busybox rootfs")?;
    write_spec(&husk, bundle, &message)?;

    let id = format!("husk-demo-{}", std::process::id());
    let started = Instant::now();
    let status = Command::new(&husk)
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(&id)
        .status()
        .with_context(|| format!("running {}", husk.display()))?;
    println!(
        "husk run: exit status {}, {:.2} s end to end (boot, run, delete)",
        status.code().unwrap_or(-1),
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("the container failed");
    }
    Ok(())
}

/// `husk spec`'s default config.json, running the demo's one command.
fn write_spec(husk: &Path, bundle: &Path, message: &str) -> anyhow::Result<()> {
    let status = Command::new(husk)
        .arg("spec")
        .arg("--bundle")
        .arg(bundle)
        .status()?;
    if !status.success() {
        bail!("husk spec failed");
    }
    let path = bundle.join("config.json");
    let mut spec = Spec::load(&path)?;
    let mut process = spec
        .process()
        .clone()
        .context("no process in husk spec's config")?;
    let script = format!("echo \"{message}\" from $(hostname), kernel $(uname -r), in a microVM");
    process.set_args(Some(vec!["sh".into(), "-c".into(), script]));
    process.set_terminal(Some(false));
    process.set_env(Some(vec!["PATH=/bin".into()]));
    spec.set_process(Some(process));
    spec.set_hostname(Some("husk-demo".into()));
    spec.save(&path)?;
    Ok(())
}
