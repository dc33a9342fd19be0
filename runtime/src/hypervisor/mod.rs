//! The hypervisor seam: what the runtime needs from a VM backend.
//!
//! One trait, [`Hypervisor`], with one implementation per backend:
//!
//! - [`builtin::Builtin`] runs husk's own VMM (`husk_vmm::machine::Vm`) in
//!   the calling process, its vsock and virtio-fs devices on virtio-mmio.
//! - [`qemu::Qemu`] runs `qemu-system-x86_64 -M microvm` with husk's own
//!   device backends served to it over vhost-user from threads of the
//!   calling process.
//!
//! [`Backend`] is the configured choice (`hypervisor = "auto" | "builtin" |
//! "qemu"`), [`Backend::resolve`] turns it into a [`ConcreteBackend`] for
//! this host and [`new_hypervisor`] builds it. What both backends share (the
//! guest CID, the virtio-fs tag, the kernel command line, the spec checks)
//! lives here.

pub mod builtin;
pub mod qemu;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use husk_vmm::devices::net::{NetConfig, Tap};
use husk_vmm::machine::{ExitReason, HostCheck};

use crate::sandbox_dir::SandboxDir;

/// Most vCPUs a sandbox VM may have.
pub const MAX_VCPUS: u8 = 64;
/// Least guest memory that boots the guest kernel and agent.
pub const MIN_MEMORY_MIB: u32 = 64;
/// Most guest memory a sandbox VM may have (1 TiB).
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// The guest's vsock CID.
pub const GUEST_CID: u64 = 3;
/// The virtio-fs tag the agent mounts.
pub const FS_TAG: &str = "husk";
/// Most NICs a sandbox VM may have (each takes a virtio-mmio slot and its
/// interrupt line).
pub const MAX_NICS: usize = 8;

/// What to boot, and where its sockets and files live.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Number of vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpus: u8,
    /// Guest memory in MiB, [`MIN_MEMORY_MIB`]..=[`MAX_MEMORY_MIB`].
    pub memory_mib: u32,
    /// The guest kernel (vmlinux or bzImage).
    pub kernel: PathBuf,
    /// The guest initrd (agent as `/init`).
    pub initrd: PathBuf,
    /// Words appended to the backend's own kernel command line.
    pub kernel_args: Vec<String>,
    /// The sandbox directory; it must exist (see [`SandboxDir::create`]).
    pub sandbox: SandboxDir,
    /// The guest's NICs, in the order the guest enumerates them.
    pub nics: Vec<NicSpec>,
}

/// One guest NIC: the tap that carries its frames on the host, and what
/// the guest sees (MAC, MTU).
#[derive(Debug, Clone)]
pub struct NicSpec {
    /// The host side, already made (in the sandbox's network namespace) and
    /// up. Shared, so the spec stays `Clone`; each backend serves a
    /// duplicate of the fd, and the tap disappears when the last one closes.
    pub tap: Arc<Tap>,
    /// The guest's MAC and MTU.
    pub config: NetConfig,
}

impl VmSpec {
    /// A VM of the configuration's default size (`guest.default_vcpus`,
    /// `guest.default_memory_mib`) booting `kernel` and `initrd` in
    /// `sandbox`, with no words of its own on the kernel command line.
    pub fn new(kernel: PathBuf, initrd: PathBuf, sandbox: SandboxDir) -> Self {
        let defaults = crate::config::Guest::default();
        Self {
            vcpus: defaults.default_vcpus,
            memory_mib: defaults.default_memory_mib,
            kernel,
            initrd,
            kernel_args: Vec::new(),
            sandbox,
            nics: Vec::new(),
        }
    }
}

/// Errors from a hypervisor backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hypervisor program is not installed or not executable.
    #[error("hypervisor program {0} not found (install qemu-system-x86)")]
    MissingProgram(PathBuf),
    /// The kernel or initrd is missing.
    #[error("guest {what} {path} not found")]
    MissingFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The missing path.
        path: PathBuf,
    },
    /// The sandbox directory does not exist.
    #[error("sandbox directory {0} does not exist")]
    MissingSandbox(PathBuf),
    /// A spec value is out of range or malformed.
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    /// `start` was called on a backend that already runs a VM.
    #[error("a VM is already running")]
    AlreadyRunning,
    /// A device backend could not be served.
    #[error("cannot serve the {device} device: {message}")]
    Device {
        /// "vsock", "fs" or "net".
        device: &'static str,
        /// The backend's error.
        message: String,
    },
    /// The hypervisor process could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Waiting for or signalling the hypervisor process failed.
    #[error("hypervisor process: {0}")]
    Process(std::io::Error),
    /// The builtin VMM refused to build or start the VM (unusable kernel,
    /// too little memory for kernel and initrd, a KVM failure, ...).
    #[error("builtin VMM: {0}")]
    Machine(#[source] husk_vmm::machine::Error),
    /// A log file of the VM (the guest console, QEMU's stderr) could not
    /// be created.
    #[error("cannot create {path}: {source}")]
    LogFile {
        /// The log's path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How a VM ended by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The hypervisor process exited (QEMU: the guest powered off or
    /// rebooted, or QEMU failed).
    Process(ExitStatus),
    /// The in-process VM ended (builtin VMM), for this reason.
    Guest(ExitReason),
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::Process(status) => write!(f, "hypervisor process {status}"),
            VmExit::Guest(reason) => write!(f, "guest VM ended: {reason:?}"),
        }
    }
}

/// How [`Hypervisor::stop`] ended the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// No VM was running.
    NotRunning,
    /// The VM ended by itself (normally: the guest powered off).
    Exited(VmExit),
    /// The VM was still running after the grace period and was killed.
    Killed,
}

/// A VM backend. One value runs at most one VM at a time.
pub trait Hypervisor: Send {
    /// Checks `spec`, then starts its VM. Returns once the VM is launched
    /// (not once the guest is up: connect to the agent for that).
    fn start(&mut self, spec: &VmSpec) -> Result<(), Error>;

    /// Waits up to `timeout` for the VM to end by itself; `None` if it is
    /// still running (or was never started). `Duration::ZERO` polls.
    fn wait(&mut self, timeout: Duration) -> Result<Option<VmExit>, Error>;

    /// Ends the VM: waits up to `grace` for it to end by itself (after the
    /// agent powered the guest off), kills it otherwise, then stops the
    /// device backends and removes their sockets. The sandbox directory is
    /// left to its owner. Does nothing if no VM runs.
    fn stop(&mut self, grace: Duration) -> Result<Stopped, Error>;

    /// The host process running the VM, if the backend has one (the builtin
    /// VMM runs in the calling process and has none of its own).
    fn pid(&self) -> Option<u32>;
}

/// The kernel command line for `spec`: the words every backend passes (with
/// the backend's `reboot=` mode among them), then `spec.kernel_args`.
///
/// The guest is a microVM booted by a VMM that husk controls, and its
/// vCPUs are threads the host may starve (TCG under load, or an
/// overcommitted KVM host): nothing on this line may make the boot depend
/// on how fast guest time passes relative to host time. docs/guest.md
/// ("Kernel command line") gives the measurements behind each word.
pub fn kernel_cmdline(reboot: RebootMode, spec: &VmSpec) -> String {
    let reboot = format!("reboot={}", reboot.kernel_word());
    let words: [&str; 8] = [
        // The VM's only UART (QEMU microvm's isa-serial, the builtin VMM's
        // 16550 at 0x3f8) is the console; the sandbox keeps it as console.log.
        "console=ttyS0",
        // How a restart ends the VM (triple fault for QEMU's -no-reboot,
        // the i8042 reset port for the builtin VMM, which needs no i8042
        // driver in the guest). The agent ends the VM by a restart: without
        // ACPI there is no power-off.
        &reboot,
        // A panic restarts at once, which ends the VM, so a dead guest
        // never lingers and the boot fails fast with its console.
        "panic=-1",
        // Skip the IO-APIC timer check: it busy-waits about 40-160 ms of
        // TSC time and needs more than 4 timer ticks meanwhile. A starved
        // vCPU gets fewer (a tick that cannot be delivered in time is lost),
        // and the kernel then panics "IO-APIC + timer doesn't work!"
        // (issue 9). The VMM wires the PIT to the IO-APIC itself; a kernel
        // that detects KVM sets this on its own, one under TCG does not.
        "no_timer_check",
        // The TSC is the VMM's (under TCG the host's TSC, constant rate and
        // the same on every vCPU): trust it. Otherwise the clocksource
        // watchdog judges it against tick-based time, which loses ticks
        // under load, marks the TSC unstable and leaves the guest on a clock
        // that runs slow; and each vCPU brought up first spins through a
        // 20 ms TSC synchronization test with the boot vCPU, which waits
        // for both vCPU threads to run at once.
        "tsc=reliable",
        // Expedited RCU grace periods after boot (during boot the kernel
        // already expedites them): the agent's mount, namespace and cgroup
        // work waits in synchronize_rcu, which otherwise waits for every
        // vCPU's scheduler ticks, slow when the host starves vCPUs.
        "rcupdate.rcu_expedited=1",
        // 1 GiB huge pages as well as 2 MiB ones, so that OCI
        // hugepageLimits for 1GB find their hugetlb.1GB.* cgroup files. The
        // kernel registers the size only where the CPU has pdpe1gb (it
        // logs and ignores the word elsewhere); without the word it would
        // need run-time contiguous allocation (CMA or compaction with
        // memory isolation) to offer it.
        "hugepagesz=1G",
        // Kernel messages below warnings stay off the console: under TCG
        // each byte is an emulated UART write (debug_console adds
        // loglevel=7 after this).
        "quiet",
    ];
    words
        .iter()
        .copied()
        .chain(spec.kernel_args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How the guest kernel restarts the machine, which is how a VM ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootMode {
    /// `reboot=t`: a triple fault (QEMU `-no-reboot` exits on it).
    TripleFault,
    /// `reboot=k`: a reset pulse through the i8042 keyboard controller.
    Keyboard,
}

impl RebootMode {
    fn kernel_word(self) -> &'static str {
        match self {
            RebootMode::TripleFault => "t",
            RebootMode::Keyboard => "k",
        }
    }
}

/// Checks what every backend needs before starting anything: the kernel
/// and initrd files, the sandbox's shared directory, and the spec's ranges.
pub fn check_spec(spec: &VmSpec) -> Result<(), Error> {
    for (what, path) in [("kernel", &spec.kernel), ("initrd", &spec.initrd)] {
        if !path.is_file() {
            return Err(Error::MissingFile {
                what,
                path: path.clone(),
            });
        }
    }
    if !spec.sandbox.shared_dir().is_dir() {
        return Err(Error::MissingSandbox(spec.sandbox.path().to_owned()));
    }
    validate_spec(spec)
}

/// The spec's values alone, without touching the file system.
fn validate_spec(spec: &VmSpec) -> Result<(), Error> {
    if spec.vcpus == 0 || spec.vcpus > MAX_VCPUS {
        return Err(Error::InvalidSpec(format!(
            "vcpus {} not in 1..={MAX_VCPUS}",
            spec.vcpus
        )));
    }
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&spec.memory_mib) {
        return Err(Error::InvalidSpec(format!(
            "memory {} MiB not in {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
            spec.memory_mib
        )));
    }
    // Each word stays one word: no whitespace or control characters.
    if let Some(bad) = spec
        .kernel_args
        .iter()
        .find(|a| a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(Error::InvalidSpec(format!("kernel argument {bad:?}")));
    }
    if spec.nics.len() > MAX_NICS {
        return Err(Error::InvalidSpec(format!(
            "{} NICs, at most {MAX_NICS}",
            spec.nics.len()
        )));
    }
    // Paths under the sandbox must be valid UTF-8: QEMU's option parser
    // and the virtio-fs passthrough both take them as strings.
    let dir = &spec.sandbox;
    if dir.path().to_str().is_none() {
        return Err(Error::InvalidSpec(format!(
            "sandbox path {} is not UTF-8",
            dir.path().display()
        )));
    }
    Ok(())
}

/// The configured hypervisor backend (`hypervisor = ...` in
/// configuration.toml).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The builtin VMM where this host's KVM runs Linux guests, QEMU elsewhere.
    #[default]
    Auto,
    /// Always the builtin VMM.
    Builtin,
    /// Always QEMU.
    Qemu,
}

/// A backend that runs VMs: what [`Backend::resolve`] picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConcreteBackend {
    /// The builtin VMM ([`builtin::Builtin`]).
    Builtin,
    /// QEMU ([`qemu::Qemu`]).
    Qemu,
}

/// A backend name that is not `auto`, `builtin` or `qemu`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hypervisor backend {0:?}: expected \"auto\", \"builtin\" or \"qemu\"")]
pub struct UnknownBackend(pub String);

impl FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Backend::Auto),
            "builtin" => Ok(Backend::Builtin),
            "qemu" => Ok(Backend::Qemu),
            other => Err(UnknownBackend(other.to_owned())),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Builtin => "builtin",
            Backend::Qemu => "qemu",
        })
    }
}

impl fmt::Display for ConcreteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConcreteBackend::Builtin => "builtin",
            ConcreteBackend::Qemu => "qemu",
        })
    }
}

impl Backend {
    /// The backend that runs VMs on `host`, and why, for a person to read.
    /// `auto` picks the builtin VMM when KVM can run Linux guests, QEMU
    /// otherwise; `builtin` and `qemu` are taken as configured (whether they
    /// work here is for `husk check` to say).
    pub fn resolve(self, host: &HostCheck) -> (ConcreteBackend, String) {
        match self {
            Backend::Builtin => (ConcreteBackend::Builtin, "configured: builtin".into()),
            Backend::Qemu => (ConcreteBackend::Qemu, "configured: qemu".into()),
            Backend::Auto => match host.limitation() {
                None => (
                    ConcreteBackend::Builtin,
                    "KVM has hardware virtualization, so the builtin VMM runs Linux guests".into(),
                ),
                Some(why) => (
                    ConcreteBackend::Qemu,
                    format!("{why}, so QEMU runs the guest"),
                ),
            },
        }
    }
}

/// A hypervisor of the given backend for `host` (as inspected by the
/// caller, who resolved the backend with it). `qemu.path` is a path or a
/// name looked up in `PATH` (used by the QEMU backend only, like the rest
/// of `qemu`; a missing program is reported when the VM starts).
pub fn new_hypervisor(
    backend: ConcreteBackend,
    qemu: &crate::config::Qemu,
    host: &HostCheck,
) -> Box<dyn Hypervisor> {
    match backend {
        ConcreteBackend::Builtin => Box::new(builtin::Builtin::new()),
        ConcreteBackend::Qemu => {
            let program = qemu::find_program(&qemu.path).unwrap_or_else(|| qemu.path.clone());
            Box::new(
                qemu::Qemu::with_program(program, qemu::Accel::for_host(host))
                    .with_net_backend(qemu.net_backend),
            )
        }
    }
}

/// Helpers the backends' and `husk check`'s unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use std::fs;
    use std::path::Path;

    use super::VmSpec;
    use crate::sandbox_dir::SandboxDir;
    use husk_vmm::machine::HostCheck;

    /// A spec for a VM under `root` (the files need not exist).
    pub fn spec(root: &Path) -> VmSpec {
        VmSpec {
            vcpus: 1,
            memory_mib: 256,
            kernel: root.join("vmlinux"),
            initrd: root.join("initrd"),
            kernel_args: vec![],
            sandbox: SandboxDir::new(root, "vm").unwrap(),
            nics: vec![],
        }
    }

    /// A NIC on a tap in a new network namespace of its own (which lives as
    /// long as the tap), with MAC `52:54:00:00:00:<last>`; `None` (the test
    /// skips) where this process cannot make namespaces or taps. Nothing
    /// touches the machine's own network.
    pub fn nic(last: u8, mtu: u16) -> Option<super::NicSpec> {
        use husk_vmm::devices::net::{NetConfig, Tap};
        let tap = std::thread::spawn(|| {
            // SAFETY: unshare only changes this thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            Tap::open("husktest%d").ok()
        })
        .join()
        .ok()
        .flatten();
        let Some(tap) = tap else {
            eprintln!("skipping: cannot make a tap in a network namespace here");
            return None;
        };
        Some(super::NicSpec {
            tap: std::sync::Arc::new(tap),
            config: NetConfig {
                mac: [0x52, 0x54, 0, 0, 0, last],
                mtu,
            },
        })
    }

    /// A fake host: /proc/cpuinfo with `flags`, the given modules in
    /// /sys/module, /dev/kvm as a file (`Some(true)`), as a directory,
    /// which does not open read-write (`Some(false)`), or absent.
    pub fn host(flags: &str, modules: &[&str], kvm: Option<bool>) -> HostCheck {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("proc")).unwrap();
        fs::create_dir_all(root.path().join("dev")).unwrap();
        fs::write(
            root.path().join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu {flags}\n"),
        )
        .unwrap();
        for m in modules {
            fs::create_dir_all(root.path().join("sys/module").join(m)).unwrap();
        }
        match kvm {
            Some(true) => fs::write(root.path().join("dev/kvm"), b"").unwrap(),
            Some(false) => fs::create_dir(root.path().join("dev/kvm")).unwrap(),
            None => {}
        }
        HostCheck::inspect(root.path())
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::spec;
    use std::path::Path;

    use super::*;

    fn host(flags: &str, modules: &[&str], kvm: bool) -> HostCheck {
        super::test_support::host(flags, modules, kvm.then_some(true))
    }

    #[test]
    fn out_of_range_specs_are_refused() {
        let root = Path::new("/r");
        let mut bad = Vec::new();
        let mut s = spec(root);
        s.vcpus = 0;
        bad.push(s);
        let mut s = spec(root);
        s.vcpus = MAX_VCPUS + 1;
        bad.push(s);
        let mut s = spec(root);
        s.memory_mib = MIN_MEMORY_MIB - 1;
        bad.push(s);
        let mut s = spec(root);
        s.memory_mib = MAX_MEMORY_MIB + 1;
        bad.push(s);
        for arg in ["", "a b", "a\nb", "x\0"] {
            let mut s = spec(root);
            s.kernel_args = vec![arg.into()];
            bad.push(s);
        }
        for s in bad {
            assert!(
                matches!(validate_spec(&s), Err(Error::InvalidSpec(_))),
                "{s:?} accepted"
            );
        }
        assert!(validate_spec(&spec(root)).is_ok());
    }

    #[test]
    fn more_nics_than_the_machine_has_slots_for_are_refused() {
        let Some(nic) = super::test_support::nic(1, 1500) else {
            return;
        };
        let mut s = spec(Path::new("/r"));
        s.nics = vec![nic; MAX_NICS];
        assert!(validate_spec(&s).is_ok());
        s.nics.push(s.nics[0].clone());
        assert!(matches!(validate_spec(&s), Err(Error::InvalidSpec(_))));
    }

    #[test]
    fn command_line_is_base_words_reboot_mode_then_spec_args() {
        let mut s = spec(Path::new("/r"));
        s.kernel_args = vec!["a=1".into(), "b".into()];
        assert_eq!(
            kernel_cmdline(RebootMode::TripleFault, &s),
            "console=ttyS0 reboot=t panic=-1 no_timer_check tsc=reliable \
             rcupdate.rcu_expedited=1 hugepagesz=1G quiet a=1 b"
        );
        assert_eq!(
            kernel_cmdline(RebootMode::Keyboard, &s),
            "console=ttyS0 reboot=k panic=-1 no_timer_check tsc=reliable \
             rcupdate.rcu_expedited=1 hugepagesz=1G quiet a=1 b"
        );
    }

    #[test]
    fn command_line_never_lets_the_guest_fail_a_boot_on_a_slow_host() {
        // Issue 9: without these a starved TCG vCPU panicked in the IO-APIC
        // timer check or lost its TSC clocksource.
        let line = kernel_cmdline(RebootMode::TripleFault, &spec(Path::new("/r")));
        let words: Vec<&str> = line.split(' ').collect();
        for needed in ["no_timer_check", "tsc=reliable", "panic=-1"] {
            assert!(words.contains(&needed), "{needed} missing from {line}");
        }
        // Every word is one word, and none twice.
        let mut unique = words.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), words.len(), "{line}");
        assert!(words.iter().all(|w| !w.is_empty()), "{line}");
    }

    #[test]
    fn spec_args_come_last_so_they_override_the_defaults() {
        // For a repeated parameter the kernel keeps the last value.
        let mut s = spec(Path::new("/r"));
        s.kernel_args = vec!["loglevel=7".into(), "tsc=unstable".into()];
        let line = kernel_cmdline(RebootMode::Keyboard, &s);
        assert!(line.ends_with(" quiet loglevel=7 tsc=unstable"), "{line}");
    }

    #[test]
    fn backend_names_parse_and_bad_ones_are_named_in_the_error() {
        for (name, backend) in [
            ("auto", Backend::Auto),
            ("builtin", Backend::Builtin),
            ("qemu", Backend::Qemu),
        ] {
            assert_eq!(name.parse::<Backend>().unwrap(), backend);
            assert_eq!(backend.to_string(), name);
        }
        let err = "kvm".parse::<Backend>().unwrap_err();
        assert_eq!(err, UnknownBackend("kvm".into()));
        let msg = err.to_string();
        assert!(
            msg.contains("\"kvm\"") && msg.contains("\"builtin\""),
            "{msg}"
        );
        // Names are exact: configuration keys are lowercase.
        assert!("Qemu".parse::<Backend>().is_err());
        assert_eq!(Backend::default(), Backend::Auto);
    }

    #[test]
    fn backends_serialize_lowercase_and_refuse_unknown_names() {
        assert_eq!(
            serde_json::to_string(&Backend::Builtin).unwrap(),
            "\"builtin\""
        );
        assert_eq!(
            serde_json::to_string(&ConcreteBackend::Qemu).unwrap(),
            "\"qemu\""
        );
        let auto: Backend = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(auto, Backend::Auto);
        assert!(serde_json::from_str::<Backend>("\"firecracker\"").is_err());
    }

    #[test]
    fn auto_picks_builtin_only_where_kvm_runs_linux_guests() {
        let (b, why) = Backend::Auto.resolve(&host("vmx", &["kvm", "kvm_intel"], true));
        assert_eq!(b, ConcreteBackend::Builtin);
        assert!(why.contains("hardware virtualization"), "{why}");

        let (b, why) = Backend::Auto.resolve(&host("lm", &["kvm", "kvm_pvm"], true));
        assert_eq!(b, ConcreteBackend::Qemu);
        assert!(why.contains("kvm_pvm"), "{why}");

        let (b, why) = Backend::Auto.resolve(&host("svm", &["kvm_amd"], false));
        assert_eq!(b, ConcreteBackend::Qemu);
        assert!(why.contains("/dev/kvm does not exist"), "{why}");

        let (b, why) = Backend::Auto.resolve(&host("lm", &["kvm"], true));
        assert_eq!(b, ConcreteBackend::Qemu);
        assert!(why.contains("no hardware virtualization"), "{why}");
    }

    #[test]
    fn explicit_backends_are_taken_as_configured() {
        let pvm = host("lm", &["kvm", "kvm_pvm"], true);
        assert_eq!(Backend::Builtin.resolve(&pvm).0, ConcreteBackend::Builtin);
        let vmx = host("vmx", &["kvm_intel"], true);
        assert_eq!(Backend::Qemu.resolve(&vmx).0, ConcreteBackend::Qemu);
    }

    #[test]
    fn new_hypervisor_builds_an_idle_backend_of_each_kind() {
        for backend in [ConcreteBackend::Builtin, ConcreteBackend::Qemu] {
            let mut hv =
                new_hypervisor(backend, &crate::config::Qemu::default(), &HostCheck::run());
            assert_eq!(hv.pid(), None);
            assert_eq!(hv.wait(Duration::ZERO).unwrap(), None);
            assert_eq!(hv.stop(Duration::ZERO).unwrap(), Stopped::NotRunning);
        }
        // A QEMU program that is not there is reported when a VM starts.
        let root = tempfile::tempdir().unwrap();
        let s = spec(root.path());
        let qemu = crate::config::Qemu {
            path: root.path().join("no-qemu"),
            ..Default::default()
        };
        let mut hv = new_hypervisor(ConcreteBackend::Qemu, &qemu, &HostCheck::run());
        assert!(matches!(hv.start(&s), Err(Error::MissingProgram(_))));
    }
}
