//! What a private container engine (the Docker of [`crate::docker`] or the
//! Podman of [`crate::podman`]) needs from the machine: its Debian packages,
//! a file system its image storage can layer on, and a busybox image to
//! import.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::timed;
use crate::rootfs;

/// How long each apt-get command may take (a slow mirror, a cold cache).
const APT_TIMEOUT: Duration = Duration::from_secs(900);

/// `apt-get update`, then installs `packages` from Debian without their
/// recommendations (which would pull in more daemons).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend_from_slice(packages);
    for args in [vec!["update", "-q"], install] {
        let out = timed::output(
            Command::new("apt-get")
                .args(&args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null()),
            APT_TIMEOUT,
        )
        .context("running apt-get")?
        .map_err(|_| anyhow::anyhow!("apt-get {} timed out", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "apt-get {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// Installs `packages` from Debian unless every file of `needed` exists,
/// and fails naming the first one still missing after.
pub fn ensure_installed(needed: &[PathBuf], packages: &[&str]) -> Result<()> {
    if needed.iter().all(|p| p.exists()) {
        return Ok(());
    }
    eprintln!("installing {} from Debian", packages.join(" "));
    apt_install(packages)?;
    if let Some(missing) = needed.iter().find(|p| !p.exists()) {
        bail!(
            "{} is still missing after installing {packages:?}",
            missing.display()
        );
    }
    Ok(())
}

/// Whether an overlay storage driver can work in `dir`: the kernel has
/// overlayfs and `dir` is not on overlayfs itself (where overlay cannot
/// stack).
pub fn overlay_usable(dir: &Path) -> bool {
    let on_overlay = nix::sys::statfs::statfs(dir)
        .map(|s| s.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC)
        .unwrap_or(false);
    let has_overlay = std::fs::read_to_string("/proc/filesystems")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false);
    has_overlay && !on_overlay
}

/// Builds a busybox root file system (tests/src/rootfs.rs) in `dir`, a
/// tarball of it next to it, and hands the tarball's path to `import`
/// (`<cli> import <tarball> <tag>`); both are removed once it succeeded.
pub fn import_busybox(dir: &Path, cli: &str, import: impl FnOnce(&str) -> Output) -> Result<()> {
    let tarball = busybox_tarball(dir)?;
    let out = import(&tarball.to_string_lossy());
    if !out.status.success() {
        bail!(
            "{cli} import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(dir)?;
    std::fs::remove_file(&tarball)?;
    Ok(())
}

/// A tarball of a fresh busybox root file system in `dir`, made next to it.
fn busybox_tarball(dir: &Path) -> Result<PathBuf> {
    let tarball = dir.with_extension("tar");
    rootfs::busybox(dir).context("building the busybox rootfs")?;
    let out = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .output()
        .context("running tar")?;
    if !out.status.success() {
        bail!("tar failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(tarball)
}
