//! `features`, `spec` and `check`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use super::query::Format;
use super::Global;
use crate::oci::state::OCI_VERSION;

/// `spec`'s flags.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Where to write config.json.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
}

/// `check`'s flags.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: Format,
}

/// `husk features`: what this runtime supports, in runc's shape.
pub fn features() -> anyhow::Result<()> {
    let features = json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "bind", "rbind", "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
            "private", "rprivate", "shared", "rshared", "slave", "rslave", "relatime",
            "norelatime", "strictatime", "nostrictatime", "noatime", "atime", "sync", "async",
            "dirsync", "remount", "mand", "nomand", "tmpcopyup"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps(),
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {
            "io.github.husk.sandbox": "microvm",
        },
    });
    println!("{}", serde_json::to_string_pretty(&features)?);
    Ok(())
}

/// Every capability name this runtime knows (those oci-spec parses).
fn caps() -> Vec<String> {
    use oci_spec::runtime::Capability;
    use std::str::FromStr;
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES
        .iter()
        .map(|n| format!("CAP_{n}"))
        .filter(|name| Capability::from_str(name).is_ok())
        .collect()
}

/// `husk spec`: writes the default config.json (runc's defaults, with
/// `sh` as the process), refusing to overwrite one.
pub fn spec(args: SpecArgs) -> anyhow::Result<()> {
    let path = args.bundle.join("config.json");
    if path.exists() {
        bail!("{} already exists; remove it first", path.display());
    }
    let spec = oci_spec::runtime::Spec::default();
    let text = serde_json::to_string_pretty(&spec)?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `husk check`: exits 0 when this host can run containers with the
/// configured backend.
pub fn check(g: &Global, args: CheckArgs) -> anyhow::Result<i32> {
    let config = g.load_config()?;
    let report = crate::check::run(&crate::check::CheckInputs {
        backend: config.hypervisor,
        qemu: config.qemu.path.clone(),
        kernel: config.guest.kernel.clone(),
        initrd: config.guest.image.clone(),
        snapshot: config.snapshot.clone(),
    });
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print!("{}", report.render()),
    }
    Ok(if report.usable() { 0 } else { 1 })
}
