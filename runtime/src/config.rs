//! `configuration.toml`: how husk runs sandboxes on this host.
//!
//! Looked up in order: `--config`, `$HUSK_CONFIG`, `/etc/husk/configuration.toml`,
//! then built-in defaults (the same values as the documented file in the
//! repository's root). Unknown keys are errors, so a typo never silently
//! falls back to a default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hypervisor::{Backend, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use crate::oci::cpuset;

/// The system-wide configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/husk/configuration.toml";
/// The environment variable naming a configuration file.
pub const CONFIG_ENV: &str = "HUSK_CONFIG";
/// Where sandbox directories are made by default.
pub const DEFAULT_SANDBOX_ROOT: &str = "/run/husk/vm";
/// Longest `sandbox_root`: a sandbox's longest socket path must fit in 108 bytes.
pub const MAX_SANDBOX_ROOT_LEN: usize = 60;
/// Where sandbox templates (snapshots of a booted guest) are kept by default.
pub const DEFAULT_SNAPSHOT_PATH: &str = "/var/lib/husk/snapshots";
/// Where `make install` puts the guest kernel.
pub const DEFAULT_KERNEL: &str = "/usr/local/share/husk/vmlinux";
/// Where `make install` puts the guest image.
pub const DEFAULT_IMAGE: &str = "/usr/local/share/husk/initrd.img";

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a bad key or value.
    #[error("configuration {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The VM backend: `auto` (builtin where KVM runs Linux guests, else
    /// qemu), `builtin` or `qemu`.
    pub hypervisor: Backend,
    /// Log level of the runtime and its sandbox processes when `--debug` is
    /// not given: error, warn, info, debug or trace.
    pub log_level: String,
    /// Where sandbox directories (sockets, share, console) are made. Short,
    /// because socket paths in it must fit in 108 bytes.
    pub sandbox_root: PathBuf,
    /// The guest: kernel, image and VM sizing.
    pub guest: Guest,
    /// The QEMU backend.
    pub qemu: Qemu,
    /// husk's own device and VMM threads.
    pub vmm: Vmm,
    /// Sandboxes restored from a snapshot of a booted guest.
    pub snapshot: Snapshot,
}

/// Sandboxes restored from a template: a snapshot of a guest booted once
/// (agent idle, no container) instead of a cold boot each time. Only the
/// builtin backend restores snapshots.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Snapshot {
    /// Restore sandboxes from a template (made by the first sandbox that
    /// needs one).
    pub enabled: bool,
    /// Where templates are kept, one directory per template key.
    pub path: PathBuf,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            enabled: false,
            path: DEFAULT_SNAPSHOT_PATH.into(),
        }
    }
}

/// husk's own VMM and device backend threads (the builtin VMM, and the
/// vhost-user backends that serve QEMU).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Vmm {
    /// Run every vCPU, device and vhost-user thread under its seccomp
    /// filter. Turning it off is for debugging a thread the filter kills.
    pub seccomp: bool,
}

impl Default for Vmm {
    fn default() -> Self {
        Self { seccomp: true }
    }
}

/// The guest kernel, image and VM sizing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Guest {
    /// The guest kernel (vmlinux or bzImage).
    pub kernel: PathBuf,
    /// The guest initrd (husk-agent as `/init`).
    pub image: PathBuf,
    /// vCPUs of a sandbox whose spec sets no CPU quota.
    pub default_vcpus: u8,
    /// Most vCPUs a CPU quota may ask for.
    pub max_vcpus: u8,
    /// Guest memory (MiB) of a sandbox whose spec sets no memory limit.
    pub default_memory_mib: u32,
    /// Memory (MiB) added to a container's memory limit to size its VM: the
    /// guest kernel and agent live outside the container's cgroup.
    pub memory_overhead_mib: u32,
    /// Seconds to wait for the guest agent after starting the VM.
    pub boot_timeout_secs: u32,
    /// Seconds the guest may take to create a container (CreateContainer:
    /// its mounts, cgroup and process); an overcommitted host slows it.
    pub create_container_timeout_secs: u32,
    /// Keep the guest kernel's messages and the agent's debug log on the
    /// sandbox console (`console.log` in the sandbox directory).
    pub debug_console: bool,
    /// Words appended to the guest kernel's command line, after husk's own
    /// (so a word given here wins where the kernel takes the last one).
    pub kernel_params: String,
}

/// The QEMU backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Qemu {
    /// The QEMU program: a path, or a name looked up in `PATH`.
    pub path: PathBuf,
    /// Who moves the guest NICs' frames: husk's own virtio-net backend over
    /// vhost-user (the default, the same device code the builtin VMM runs),
    /// or QEMU's built-in tap backend (for comparing the two).
    pub net_backend: QemuNetBackend,
}

/// The `[qemu] net_backend` choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QemuNetBackend {
    /// husk's virtio-net backend, served to QEMU over vhost-user.
    #[default]
    VhostUser,
    /// QEMU's own virtio-net datapath on the same tap (`-netdev tap,fd=`).
    Tap,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hypervisor: Backend::Auto,
            log_level: "warn".into(),
            sandbox_root: DEFAULT_SANDBOX_ROOT.into(),
            guest: Guest::default(),
            qemu: Qemu::default(),
            vmm: Vmm::default(),
            snapshot: Snapshot::default(),
        }
    }
}

impl Default for Guest {
    fn default() -> Self {
        Self {
            kernel: DEFAULT_KERNEL.into(),
            image: DEFAULT_IMAGE.into(),
            default_vcpus: 1,
            max_vcpus: 4,
            default_memory_mib: 256,
            memory_overhead_mib: 128,
            boot_timeout_secs: 60,
            create_container_timeout_secs: 60,
            debug_console: false,
            kernel_params: String::new(),
        }
    }
}

impl Default for Qemu {
    fn default() -> Self {
        Self {
            path: "qemu-system-x86_64".into(),
            net_backend: QemuNetBackend::default(),
        }
    }
}

impl Config {
    /// The configuration from `explicit` (`--config`), else `$HUSK_CONFIG`,
    /// else [`SYSTEM_CONFIG`] when it exists, else the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Self, Error> {
        if let Some(path) = explicit {
            return Self::from_file(path);
        }
        if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
            return Self::from_file(Path::new(&path));
        }
        let system = Path::new(SYSTEM_CONFIG);
        if system.exists() {
            return Self::from_file(system);
        }
        Ok(Self::default())
    }

    /// Reads and checks one file.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| Error::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses and checks TOML text; the error is one line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Config = toml::from_str(text).map_err(|e| one_line(&e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let g = &self.guest;
        if g.default_vcpus == 0 || g.default_vcpus > MAX_VCPUS {
            return Err(format!(
                "guest.default_vcpus {} not in 1..={MAX_VCPUS}",
                g.default_vcpus
            ));
        }
        if g.max_vcpus < g.default_vcpus || g.max_vcpus > MAX_VCPUS {
            return Err(format!(
                "guest.max_vcpus {} not in {}..={MAX_VCPUS}",
                g.max_vcpus, g.default_vcpus
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&g.default_memory_mib) {
            return Err(format!(
                "guest.default_memory_mib {} not in {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                g.default_memory_mib
            ));
        }
        if !self.sandbox_root.is_absolute()
            || self.sandbox_root.as_os_str().len() > MAX_SANDBOX_ROOT_LEN
        {
            return Err(format!(
                "sandbox_root {} must be an absolute path of at most {MAX_SANDBOX_ROOT_LEN} bytes",
                self.sandbox_root.display()
            ));
        }
        if g.kernel_params.contains(['\n', '\0']) {
            return Err("guest.kernel_params must be one line of words".into());
        }
        if g.kernel_params.split_whitespace().any(|word| word == "--") {
            // The VMM's own device words follow these on the line, and
            // the kernel would hand them to init instead.
            return Err(
                "guest.kernel_params must not contain \"--\": the words after it would go to the guest's init, not its kernel"
                    .into(),
            );
        }
        if !self.snapshot.path.is_absolute() {
            return Err(format!(
                "snapshot.path {} must be an absolute path",
                self.snapshot.path.display()
            ));
        }
        if g.boot_timeout_secs == 0 {
            return Err("guest.boot_timeout_secs must be at least 1".into());
        }
        if g.create_container_timeout_secs == 0 {
            return Err("guest.create_container_timeout_secs must be at least 1".into());
        }
        if !matches!(
            self.log_level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(format!(
                "log_level {:?} is not one of error, warn, info, debug, trace",
                self.log_level
            ));
        }
        Ok(())
    }

    /// The VM size for a container with these OCI resources: the memory
    /// limit plus the overhead (at least the default), and the CPU quota
    /// rounded up to whole vCPUs (at least the default, at most the
    /// maximum), and enough vCPUs for the highest CPU `cpu.cpus` names.
    /// A `cpus` beyond `guest.max_vcpus`, or `mems` naming a memory node
    /// other than 0 (the VM has one), is an error naming the key.
    pub fn vm_size(
        &self,
        resources: Option<&oci_spec::runtime::LinuxResources>,
    ) -> Result<VmSize, SizeError> {
        let g = &self.guest;
        let mut size = VmSize {
            vcpus: g.default_vcpus,
            memory_mib: g.default_memory_mib,
        };
        let Some(resources) = resources else {
            return Ok(size);
        };
        if let Some(limit) = resources.memory().as_ref().and_then(|m| m.limit()) {
            if limit > 0 {
                let limit_mib = u64::try_from(limit).unwrap_or(0).div_ceil(1 << 20);
                let wanted = limit_mib.saturating_add(u64::from(g.memory_overhead_mib));
                let wanted = wanted.clamp(u64::from(MIN_MEMORY_MIB), u64::from(MAX_MEMORY_MIB));
                size.memory_mib = u32::try_from(wanted).unwrap_or(MAX_MEMORY_MIB);
            }
        }
        let Some(cpu) = resources.cpu() else {
            return Ok(size);
        };
        if let (Some(quota), Some(period)) = (cpu.quota(), cpu.period()) {
            if quota > 0 && period > 0 {
                let cpus = u64::try_from(quota).unwrap_or(0).div_ceil(period);
                let cpus = cpus.clamp(1, u64::from(g.max_vcpus));
                size.vcpus = u8::try_from(cpus)
                    .unwrap_or(g.max_vcpus)
                    .max(g.default_vcpus);
            }
        }
        if let Some(list) = cpu.cpus() {
            let highest = cpuset::highest(list).map_err(|e| SizeError::Cpus(e.to_string()))?;
            if let Some(highest) = highest {
                let needed = highest.saturating_add(1);
                if needed > u32::from(g.max_vcpus) {
                    return Err(SizeError::TooManyCpus {
                        highest,
                        max_vcpus: g.max_vcpus,
                    });
                }
                size.vcpus = size.vcpus.max(u8::try_from(needed).unwrap_or(g.max_vcpus));
            }
        }
        if let Some(list) = cpu.mems() {
            let highest = cpuset::highest(list).map_err(|e| SizeError::Mems(e.to_string()))?;
            if let Some(node) = highest.filter(|&n| n > 0) {
                return Err(SizeError::MemoryNode(node));
            }
        }
        Ok(size)
    }
}

/// OCI resources a VM cannot be sized for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// `linux.resources.cpu.cpus` is malformed.
    #[error("linux.resources.cpu.cpus: {0}")]
    Cpus(String),
    /// `linux.resources.cpu.mems` is malformed.
    #[error("linux.resources.cpu.mems: {0}")]
    Mems(String),
    /// `cpus` names a CPU the VM cannot have.
    #[error("linux.resources.cpu.cpus names CPU {highest}, but a VM has at most {max_vcpus} vCPUs (guest.max_vcpus in the configuration)")]
    TooManyCpus {
        /// The highest CPU named.
        highest: u32,
        /// The configured maximum.
        max_vcpus: u8,
    },
    /// `mems` names a memory node other than 0.
    #[error("linux.resources.cpu.mems names memory node {0}, but the VM has one memory node (0)")]
    MemoryNode(u32),
}

/// How big a sandbox VM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResources, LinuxResourcesBuilder,
    };

    #[test]
    fn the_documented_file_parses_to_the_defaults() {
        let text = include_str!("../../configuration.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn keys_override_defaults() {
        let c = Config::parse(
            "hypervisor = \"qemu\"\n[guest]\nkernel = \"/k\"\nimage = \"/i\"\n[qemu]\npath = \"/q\"\n",
        )
        .unwrap();
        assert_eq!(c.hypervisor, Backend::Qemu);
        assert_eq!(c.guest.kernel, Path::new("/k"));
        assert_eq!(c.guest.image, Path::new("/i"));
        assert_eq!(c.qemu.path, Path::new("/q"));
        assert_eq!(c.guest.default_vcpus, 1);
        assert!(c.vmm.seccomp);
        assert!(!c.snapshot.enabled);
        let s = Config::parse("[snapshot]\nenabled = true\npath = \"/t\"\n").unwrap();
        assert_eq!(
            s.snapshot,
            Snapshot {
                enabled: true,
                path: "/t".into()
            }
        );
        assert!(
            !Config::parse("[vmm]\nseccomp = false\n")
                .unwrap()
                .vmm
                .seccomp
        );
    }

    #[test]
    fn bad_values_and_unknown_keys_are_named() {
        let err = Config::parse("hypervisor = \"firecracker\"\n").unwrap_err();
        assert!(err.contains("firecracker"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = Config::parse("kernal = \"/k\"\n").unwrap_err();
        assert!(err.contains("kernal"), "{err}");
        let err = Config::parse("[guest]\ndefault_vcpus = 0\n").unwrap_err();
        assert!(err.contains("default_vcpus"), "{err}");
        let err = Config::parse("log_level = \"loud\"\n").unwrap_err();
        assert!(err.contains("loud"), "{err}");
        let err = Config::parse("[guest]\nkernel_params = \"a\\nb\"\n").unwrap_err();
        assert!(err.contains("kernel_params"), "{err}");
        let err = Config::parse("[guest]\nkernel_params = \"a -- b\"\n").unwrap_err();
        assert!(err.contains("kernel_params") && err.contains("--"), "{err}");
        let err = Config::parse("[guest]\ncreate_container_timeout_secs = 0\n").unwrap_err();
        assert!(err.contains("create_container_timeout_secs"), "{err}");
        let err = Config::parse("[snapshot]\npath = \"rel\"\n").unwrap_err();
        assert!(err.contains("snapshot.path"), "{err}");
        let err = Config::parse("[snapshot]\nenable = true\n").unwrap_err();
        assert!(err.contains("enable"), "{err}");
        let err = Config::parse("[guest\n").unwrap_err();
        assert!(!err.is_empty());
    }

    #[test]
    fn a_missing_explicit_file_is_an_error_naming_it() {
        let err = Config::load(Some(Path::new("/nonexistent/husk.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/husk.toml"));
    }

    /// OCI resources with a memory limit (bytes) and a CFS quota over a
    /// 100 ms period.
    fn resources(limit: i64, quota: Option<i64>) -> LinuxResources {
        let mut r = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(limit).build().unwrap())
            .build()
            .unwrap();
        if let Some(quota) = quota {
            let cpu = LinuxCpuBuilder::default()
                .quota(quota)
                .period(100_000u64)
                .build()
                .unwrap();
            r.set_cpu(Some(cpu));
        }
        r
    }

    fn size(vcpus: u8, memory_mib: u32) -> VmSize {
        VmSize { vcpus, memory_mib }
    }

    fn cpuset(cpus: Option<&str>, mems: Option<&str>) -> LinuxResources {
        let mut cpu = LinuxCpuBuilder::default().build().unwrap();
        cpu.set_cpus(cpus.map(str::to_owned));
        cpu.set_mems(mems.map(str::to_owned));
        LinuxResourcesBuilder::default().cpu(cpu).build().unwrap()
    }

    #[test]
    fn cpus_get_the_vm_enough_vcpus_and_what_no_vm_has_is_named() {
        let c = Config::default();
        // max_vcpus 4 by default: CPU 3 is the highest a VM can have.
        assert_eq!(
            c.vm_size(Some(&cpuset(Some("0,3"), None))).unwrap().vcpus,
            4
        );
        assert_eq!(
            c.vm_size(Some(&cpuset(Some("1"), Some("0"))))
                .unwrap()
                .vcpus,
            2
        );
        let err = c.vm_size(Some(&cpuset(Some("0-7"), None))).unwrap_err();
        assert!(
            err.to_string()
                .contains("linux.resources.cpu.cpus names CPU 7"),
            "{err}"
        );
        assert!(err.to_string().contains("guest.max_vcpus"), "{err}");
        let err = c.vm_size(Some(&cpuset(None, Some("0-1")))).unwrap_err();
        assert_eq!(err, SizeError::MemoryNode(1));
        let err = c.vm_size(Some(&cpuset(Some("x"), None))).unwrap_err();
        assert!(
            err.to_string().starts_with("linux.resources.cpu.cpus: "),
            "{err}"
        );
    }

    #[test]
    fn vm_size_follows_the_memory_limit_and_cpu_quota() {
        let c = Config::default();
        assert_eq!(c.vm_size(None).unwrap(), size(1, 256));
        let r = resources(512 << 20, Some(250_000));
        assert_eq!(c.vm_size(Some(&r)).unwrap(), size(3, 640));
        // A small limit still gets the overhead; a huge quota is capped.
        let r = resources(64 << 20, Some(10_000_000));
        assert_eq!(c.vm_size(Some(&r)).unwrap(), size(4, 192));
        // -1 is "unlimited" in OCI.
        assert_eq!(
            c.vm_size(Some(&resources(-1, None))).unwrap().memory_mib,
            256
        );
    }
}
