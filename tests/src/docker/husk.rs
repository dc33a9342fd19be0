//! husk as a Docker runtime: its registration, and a small configuration
//! that points it at the project's guest kernel and initrd.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::Runtime;
use crate::guest;

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
/// sockets go under it) and returns the Docker registration of the `husk`
/// binary at `binary`: `husk --config <file> <runc-style arguments>`.
pub fn runtime(dir: &Path, binary: &Path) -> Result<Runtime> {
    let kernel = guest::kernel().map_err(anyhow::Error::msg)?;
    let image = initrd()?;
    let config = dir.join("husk.toml");
    let sandbox_root = dir.join("vm");
    std::fs::write(&config, config_toml(&sandbox_root, &kernel, &image))
        .with_context(|| format!("writing {}", config.display()))?;
    Ok(Runtime {
        name: "husk".into(),
        path: binary.to_owned(),
        args: vec!["--config".into(), config.to_string_lossy().into_owned()],
        state_dirs: vec![sandbox_root],
    })
}

/// [`runtime`] for a test: husk's configuration in a fresh temporary
/// directory, which lives as long as the returned guard. Panics if husk
/// cannot be set up (no guest kernel or initrd), naming why.
pub fn test_runtime(binary: &Path) -> (tempfile::TempDir, Runtime) {
    let dir = tempfile::tempdir().expect("tempdir for husk's configuration");
    let husk = runtime(dir.path(), binary)
        .unwrap_or_else(|e| panic!("cannot set husk up as a runtime: {e:#}"));
    (dir, husk)
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
