//! husk as a Docker runtime: its binary (built next to the running test)
//! and a small configuration that points it at the project's guest kernel
//! and initrd.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::Runtime;
use crate::guest;

/// The `husk` binary of the profile the running test was built with,
/// (re)built first so a test never drives a stale CLI.
///
/// `env!("CARGO_BIN_EXE_husk")` exists only inside husk-runtime's own
/// tests, so the binary is found where cargo puts it: `target/<profile>/`,
/// the parent of the test executable's `deps/`.
pub fn binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} is not in target/<profile>/deps", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .with_context(|| format!("{} has no parent", profile_dir.display()))?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("profile directory name")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "husk-runtime", "--bin", "husk"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(guest::workspace_root());
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let out = build.output().context("running cargo build for husk")?;
    if !out.status.success() {
        bail!(
            "cargo build -p husk-runtime --bin husk failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let husk = profile_dir.join("husk");
    if !husk.is_file() {
        bail!("cargo built husk but {} does not exist", husk.display());
    }
    Ok(husk)
}

/// The guest initrd `make image` builds.
pub fn initrd() -> Result<PathBuf> {
    let path = guest::workspace_root().join("build/initrd.img");
    if !path.is_file() {
        bail!("{} is missing: run `make image`", path.display());
    }
    Ok(path)
}

/// The configuration the test gives husk: sandboxes under `sandbox_root`
/// (the test's own directory, never the system's /run/husk), the project's
/// guest kernel and initrd, everything else husk's defaults.
pub fn config_toml(sandbox_root: &Path, kernel: &Path, image: &Path) -> String {
    format!(
        "# Written by husk-tests' Docker end-to-end test.\n\
         sandbox_root = {}\n\
         [guest]\n\
         kernel = {}\n\
         image = {}\n",
        toml_string(sandbox_root),
        toml_string(kernel),
        toml_string(image)
    )
}

/// Writes husk's configuration into `dir` (a short path: husk's sandbox
/// sockets go under it) and returns husk's Docker
/// registration: `husk --config <file> <runc-style arguments>`.
pub fn runtime(dir: &Path) -> Result<Runtime> {
    let kernel = guest::kernel().map_err(anyhow::Error::msg)?;
    let image = initrd()?;
    let config = dir.join("husk.toml");
    let sandbox_root = dir.join("vm");
    std::fs::write(&config, config_toml(&sandbox_root, &kernel, &image))
        .with_context(|| format!("writing {}", config.display()))?;
    Ok(Runtime {
        name: "husk".into(),
        path: binary()?,
        args: vec!["--config".into(), config.to_string_lossy().into_owned()],
        state_dirs: vec![sandbox_root],
    })
}

/// A TOML basic string holding `path`.
pub fn toml_string(path: &Path) -> String {
    let mut out = String::from("\"");
    for c in path.to_string_lossy().chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_sets_the_guest_kernel_and_image_and_quotes_paths() {
        let text = config_toml(
            Path::new("/s"),
            Path::new("/k/vmlinux"),
            Path::new("/a \"b\"\\c/initrd.img"),
        );
        assert!(
            text.contains("[guest]\nkernel = \"/k/vmlinux\"\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"image = "/a \"b\"\\c/initrd.img""#),
            "{text}"
        );
    }
}
