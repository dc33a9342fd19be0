//! The guest kernel and initrd for end-to-end tests, located or built by the
//! project's own scripts, so tests boot exactly what `make guest` builds.
//!
//! `HUSK_KERNEL` and `HUSK_AGENT` override the kernel and the static agent
//! (to test another build without rebuilding).

use std::path::{Path, PathBuf};
use std::process::Command;

/// What a test VM boots.
#[derive(Debug, Clone)]
pub struct GuestArtifacts {
    /// The guest kernel (vmlinux).
    pub kernel: PathBuf,
    /// The guest initrd with the agent as `/init`.
    pub initrd: PathBuf,
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The cached guest kernel. Never builds it (that takes minutes): if it is
/// missing, the error names the command that builds it.
pub fn kernel() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("HUSK_KERNEL") {
        return Ok(path.into());
    }
    kernel_from(&workspace_root().join("guest-kernel/build.sh"))
}

/// [`kernel`] with a given build script.
fn kernel_from(script: &Path) -> Result<PathBuf, String> {
    let out = Command::new(script)
        .arg("--print-path")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "the guest kernel is not built: run `guest-kernel/build.sh` (or `make guest`) first\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    last_line(&out.stdout).ok_or_else(|| "guest-kernel/build.sh printed no path".into())
}

/// The static `husk-agent`, built by `scripts/build-agent.sh`.
pub fn agent() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("HUSK_AGENT") {
        return Ok(path.into());
    }
    // The script builds into the workspace's own target dir and looks there.
    run_script(
        Command::new(workspace_root().join("scripts/build-agent.sh"))
            .env_remove("CARGO_TARGET_DIR"),
        "scripts/build-agent.sh",
    )
}

/// Packs `agent` into an initrd at `output` with `guest-image/build.sh`.
pub fn initrd(agent: &Path, output: &Path) -> Result<PathBuf, String> {
    run_script(
        Command::new(workspace_root().join("guest-image/build.sh"))
            .arg(agent)
            .arg(output),
        "guest-image/build.sh",
    )?;
    Ok(output.to_owned())
}

/// Kernel, agent and initrd (written into `dir`), in that order, so a
/// missing kernel is reported before anything is built.
pub fn artifacts(dir: &Path) -> Result<GuestArtifacts, String> {
    let kernel = kernel()?;
    let agent = agent()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let initrd = initrd(&agent, &dir.join("initrd.img"))?;
    Ok(GuestArtifacts { kernel, initrd })
}

fn run_script(cmd: &mut Command, name: &str) -> Result<PathBuf, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{name} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    last_line(&out.stdout).ok_or_else(|| format!("{name} printed nothing"))
}

fn last_line(stdout: &[u8]) -> Option<PathBuf> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| PathBuf::from(l.split_whitespace().next().unwrap_or(l)))
}

/// `HUSK_KERNEL` and `HUSK_INITRD` when both are set (a prebuilt guest,
/// where nothing can be built, as inside the nested layer's L1); otherwise
/// [`artifacts`] into `dir`.
pub fn prebuilt_or_artifacts(dir: &Path) -> Result<GuestArtifacts, String> {
    match (
        std::env::var_os("HUSK_KERNEL"),
        std::env::var_os("HUSK_INITRD"),
    ) {
        (Some(kernel), Some(initrd)) => Ok(GuestArtifacts {
            kernel: kernel.into(),
            initrd: initrd.into(),
        }),
        _ => artifacts(dir),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("build.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_missing_kernel_names_the_command_that_builds_it() {
        let dir = tempfile::tempdir().unwrap();
        let fake = script(dir.path(), "echo 'no cached kernel' >&2; exit 1");
        let err = kernel_from(&fake).unwrap_err();
        assert!(err.contains("run `guest-kernel/build.sh`"), "{err}");
        assert!(err.contains("no cached kernel"), "{err}");
    }

    #[test]
    fn the_kernel_path_is_the_last_line_printed() {
        let dir = tempfile::tempdir().unwrap();
        let fake = script(dir.path(), "echo building; echo /cache/vmlinux; echo");
        assert_eq!(kernel_from(&fake).unwrap(), Path::new("/cache/vmlinux"));
        let silent = script(dir.path(), "true");
        assert!(kernel_from(&silent).is_err());
    }
}
