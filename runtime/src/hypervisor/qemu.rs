//! The QEMU backend: `qemu-system-x86_64 -M microvm`, with husk's own vsock,
//! virtio-fs and virtio-net backends served to it over vhost-user from
//! threads of this process (no extra daemons).
//!
//! KVM is used where it can run Linux guests; elsewhere TCG (`-cpu max`).
//! Guest RAM is a shared memfd, which vhost-user requires. `acpi=off` makes
//! QEMU describe the virtio-mmio devices on the kernel command line.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use husk_vmm::devices::fs::serve_fs;
use husk_vmm::devices::net::{format_mac, serve_net};
use husk_vmm::devices::vsock::serve_vsock;
use husk_vmm::machine::HostCheck;
use husk_vmm::vhost_user::ServeHandle;

use crate::config::QemuNetBackend;

use super::{
    check_spec, kernel_cmdline, Error, Hypervisor, RebootMode, Stopped, VmExit, VmSpec, FS_TAG,
    GUEST_CID,
};

/// How the guest ends the VM: `reboot=t` with QEMU's `-no-reboot` turns a
/// guest reboot into QEMU exiting.
const REBOOT: RebootMode = RebootMode::TripleFault;
/// The program looked up in `PATH` by [`Qemu::new`].
pub const DEFAULT_PROGRAM: &str = "qemu-system-x86_64";

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through KVM.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// KVM where this host's KVM can run Linux guests, TCG otherwise.
    pub fn detect() -> Self {
        Self::for_host(&HostCheck::run())
    }

    /// KVM where `host`'s KVM can run Linux guests, TCG otherwise.
    pub fn for_host(host: &HostCheck) -> Self {
        if host.can_run_linux_guests() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    /// QEMU's name for it (`-accel kvm|tcg`).
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The QEMU backend. Runs at most one VM at a time.
pub struct Qemu {
    program: PathBuf,
    accel: Accel,
    net_backend: QemuNetBackend,
    vm: Option<RunningVm>,
}

/// A launched VM: the QEMU process and the backends it talks to.
struct RunningVm {
    child: Child,
    status: Option<ExitStatus>,
    /// Held for as long as QEMU may use them: dropping a handle stops its
    /// backend and removes its socket.
    _vsock: ServeHandle,
    _fs: ServeHandle,
    _nics: Vec<ServeHandle>,
}

impl Qemu {
    /// `qemu-system-x86_64` from `PATH`, with the accelerator this host supports.
    pub fn new() -> Self {
        let program = find_in_path(DEFAULT_PROGRAM).unwrap_or_else(|| DEFAULT_PROGRAM.into());
        Self::with_program(program, Accel::detect())
    }

    /// A given QEMU program and accelerator.
    pub fn with_program(program: PathBuf, accel: Accel) -> Self {
        Self {
            program,
            accel,
            net_backend: QemuNetBackend::default(),
            vm: None,
        }
    }

    /// Who moves the NICs' frames (`[qemu] net_backend`).
    pub fn with_net_backend(mut self, net_backend: QemuNetBackend) -> Self {
        self.net_backend = net_backend;
        self
    }

    fn check(&self, spec: &VmSpec) -> Result<(), Error> {
        if !is_executable(&self.program) {
            return Err(Error::MissingProgram(self.program.clone()));
        }
        check_spec(spec)
    }
}

impl Default for Qemu {
    fn default() -> Self {
        Self::new()
    }
}

impl Hypervisor for Qemu {
    fn start(&mut self, spec: &VmSpec) -> Result<(), Error> {
        if self.vm.is_some() {
            return Err(Error::AlreadyRunning);
        }
        self.check(spec)?;
        let dir = &spec.sandbox;

        let vsock = serve_vsock(&dir.vhost_vsock_socket(), &dir.vsock_socket(), GUEST_CID)
            .map_err(|e| Error::Device {
                device: "vsock",
                message: e.to_string(),
            })?;
        let fs = serve_fs(&dir.vhost_fs_socket(), &dir.shared_dir(), FS_TAG).map_err(|e| {
            Error::Device {
                device: "fs",
                message: e.to_string(),
            }
        })?;

        // husk's backend serves each NIC over vhost-user; QEMU's own tap
        // backend instead gets a copy of each tap's fd, inherited.
        let (nics, tap_fds) = match self.net_backend {
            QemuNetBackend::VhostUser => {
                let nics = spec
                    .nics
                    .iter()
                    .enumerate()
                    .map(|(i, nic)| {
                        let tap = nic.tap.try_clone()?;
                        serve_net(&dir.vhost_net_socket(i), tap, nic.config)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Error::Device {
                        device: "net",
                        message: e.to_string(),
                    })?;
                (nics, Vec::new())
            }
            QemuNetBackend::Tap => {
                let fds = spec
                    .nics
                    .iter()
                    .map(|nic| nic.tap.as_fd().try_clone_to_owned())
                    .collect::<Result<Vec<OwnedFd>, _>>()
                    .map_err(|e| Error::Device {
                        device: "net",
                        message: e.to_string(),
                    })?;
                (Vec::new(), fds)
            }
        };
        let net = match self.net_backend {
            QemuNetBackend::VhostUser => NetArgs::VhostUser,
            QemuNetBackend::Tap => NetArgs::Tap(tap_fds.iter().map(AsRawFd::as_raw_fd).collect()),
        };

        let log_path = dir.hypervisor_log();
        let stderr = File::create(&log_path).map_err(|source| Error::LogFile {
            path: log_path.clone(),
            source,
        })?;
        // Under TCG the guest's TSC is the host's; tell the guest its rate
        // (see `host_tsc_khz`). Under KVM the guest learns it from kvmclock.
        let tsc_khz = match self.accel {
            Accel::Tcg => host_tsc_khz(),
            Accel::Kvm => None,
        };
        let args = command_line(spec, self.accel, tsc_khz, &net);
        tracing::debug!(program = %self.program.display(), ?args, "starting QEMU");
        let mut command = Command::new(&self.program);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if !tap_fds.is_empty() {
            let inherit: Vec<RawFd> = tap_fds.iter().map(AsRawFd::as_raw_fd).collect();
            // SAFETY: only fcntl, which is async-signal-safe, runs between
            // fork and exec; the fds stay open in the parent until after.
            unsafe {
                command.pre_exec(move || {
                    for &fd in &inherit {
                        if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().map_err(|source| Error::Spawn {
            program: self.program.clone(),
            source,
        })?;

        // QEMU refuses bad options and unreachable vhost-user sockets by
        // exiting at once; that is not waited for here (it would cost every
        // start the wait) but seen by whoever watches the VM, which reports
        // it with QEMU's stderr (`SandboxDir::hypervisor_log_tail`).
        self.vm = Some(RunningVm {
            child,
            status: None,
            _vsock: vsock,
            _fs: fs,
            _nics: nics,
        });
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Result<Option<VmExit>, Error> {
        let Some(vm) = self.vm.as_mut() else {
            return Ok(None);
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = vm.status {
                return Ok(Some(VmExit::Process(status)));
            }
            vm.status = vm.child.try_wait().map_err(Error::Process)?;
            if vm.status.is_none() {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn stop(&mut self, grace: Duration) -> Result<Stopped, Error> {
        let ended = self.wait(grace)?;
        let Some(mut vm) = self.vm.take() else {
            return Ok(Stopped::NotRunning);
        };
        if let Some(exit) = ended {
            // Dropping `vm` stops the device backends and removes their sockets.
            return Ok(Stopped::Exited(exit));
        }
        tracing::warn!(
            pid = vm.child.id(),
            "VM did not end by itself; killing QEMU"
        );
        // The child is ours and not yet reaped, so its pid is still ours.
        if let Err(e) = vm.child.kill().and_then(|()| vm.child.wait()) {
            // Kept, so that a later stop (or drop) tries again.
            self.vm = Some(vm);
            return Err(Error::Process(e));
        }
        Ok(Stopped::Killed)
    }

    fn pid(&self) -> Option<u32> {
        self.vm
            .as_ref()
            .filter(|vm| vm.status.is_none())
            .map(|vm| vm.child.id())
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // Never leave a QEMU behind; the owner should have stopped it.
        if let Err(e) = self.stop(Duration::ZERO) {
            tracing::warn!("stopping QEMU on drop: {e}");
        }
    }
}

/// How QEMU gets each NIC's datapath.
enum NetArgs {
    /// husk's backend at `SandboxDir::vhost_net_socket(i)`.
    VhostUser,
    /// QEMU's tap backend on these inherited fds, one per NIC.
    Tap(Vec<RawFd>),
}

/// QEMU's arguments for `spec`. `guest_tsc_khz`, when known, is the rate
/// of the guest's TSC, passed to the guest kernel as `tsc_early_khz=`.
fn command_line(
    spec: &VmSpec,
    accel: Accel,
    guest_tsc_khz: Option<u32>,
    net: &NetArgs,
) -> Vec<OsString> {
    let dir = &spec.sandbox;
    let mem = spec.memory_mib;
    // Before the spec's own words, so those can still override them.
    let mut backend_words = Vec::new();
    if accel == Accel::Tcg {
        // TCG emulates no TSC-deadline timer, so the kernel calibrates the
        // local APIC timer by waiting HZ/10 ticks, then verifies it for as
        // long again; a starved vCPU fails the check and the kernel falls
        // back on the PIT anyway ("APIC timer disabled due to verification
        // failure"). Going to the PIT at once saves that wait (about 0.3 to
        // 0.5 s of a TCG boot, docs/benchmarks.md "Boot budget").
        backend_words.push("noapictimer".to_owned());
    }
    if let Some(khz) = guest_tsc_khz {
        backend_words.push(format!("tsc_early_khz={khz}"));
    }
    let cmdline = if backend_words.is_empty() {
        kernel_cmdline(REBOOT, spec)
    } else {
        let mut spec = spec.clone();
        spec.kernel_args.splice(0..0, backend_words);
        kernel_cmdline(REBOOT, &spec)
    };
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |a: &str| args.push(a.into());
    push("-M");
    push("microvm,acpi=off,memory-backend=mem");
    match accel {
        Accel::Kvm => {
            push("-accel");
            push("kvm");
            push("-cpu");
            push("host");
        }
        Accel::Tcg => {
            push("-accel");
            push("tcg");
            push("-cpu");
            push("max");
        }
    }
    push("-m");
    push(&format!("{mem}M"));
    push("-smp");
    push(&spec.vcpus.to_string());
    push("-object");
    push(&format!("memory-backend-memfd,id=mem,size={mem}M,share=on"));
    for a in [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ] {
        push(a);
    }
    push("-chardev");
    push(&format!(
        "file,id=console,path={}",
        opt_path(&dir.console_log())
    ));
    push("-serial");
    push("chardev:console");
    push("-chardev");
    push(&format!(
        "socket,id=vsock,path={}",
        opt_path(&dir.vhost_vsock_socket())
    ));
    push("-device");
    push("vhost-user-vsock-device,chardev=vsock");
    push("-chardev");
    push(&format!(
        "socket,id=fs,path={}",
        opt_path(&dir.vhost_fs_socket())
    ));
    push("-device");
    push(&format!("vhost-user-fs-device,chardev=fs,tag={FS_TAG}"));
    // Each NIC: QEMU's virtio-net (configuration space, control queue) with
    // its queue pair served by husk's backend over vhost-user, or by QEMU's
    // own tap datapath on the inherited tap fd.
    for (i, nic) in spec.nics.iter().enumerate() {
        match net {
            NetArgs::VhostUser => {
                push("-chardev");
                push(&format!(
                    "socket,id=net{i},path={}",
                    opt_path(&dir.vhost_net_socket(i))
                ));
                push("-netdev");
                push(&format!("vhost-user,id=net{i},chardev=net{i}"));
            }
            NetArgs::Tap(fds) => {
                let Some(fd) = fds.get(i) else { break };
                push("-netdev");
                push(&format!("tap,id=net{i},fd={fd},vhost=off"));
            }
        }
        let mut device = format!(
            "virtio-net-device,netdev=net{i},mac={}",
            format_mac(&nic.config.mac)
        );
        if nic.config.mtu != 1500 {
            device.push_str(&format!(",host_mtu={}", nic.config.mtu));
        }
        push("-device");
        push(&device);
    }
    push("-append");
    push(&cmdline);
    args.push("-kernel".into());
    args.push(spec.kernel.clone().into());
    args.push("-initrd".into());
    args.push(spec.initrd.clone().into());
    args
}

/// The host TSC's rate in kHz, which under TCG is the guest TSC's rate too
/// (QEMU's TCG `rdtsc` returns the host's TSC plus an offset); `None` where
/// the host TSC is not invariant (its rate then is no constant to pass on)
/// or not x86. Measured once per process.
///
/// Why the guest needs it: its kernel calibrates the TSC against the PIT,
/// which fails under TCG ("tsc: Unable to calibrate against PIT", with no
/// HPET or ACPI PM timer to fall back on), marks the TSC unstable and runs
/// on the tick-counting `refined-jiffies` clock: 4 ms resolution, no
/// high-resolution timers, and slow whenever a loaded host makes ticks go
/// lost. Its delay loop and local APIC timer are then calibrated by counting
/// ticks too, which under load gave anything from 172 to 502 BogoMIPS and
/// "APIC timer disabled due to verification failure". With
/// `tsc_early_khz=` the kernel skips the PIT calibration, times the APIC
/// calibration with the TSC and keeps the TSC as its clocksource.
pub fn host_tsc_khz() -> Option<u32> {
    static KHZ: OnceLock<Option<u32>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        if !invariant_tsc(&cpuinfo) {
            return None;
        }
        measure_tsc_khz(Duration::from_millis(20))
    })
}

/// Whether `/proc/cpuinfo` text says the TSC runs at a constant rate and
/// does not stop in idle states.
fn invariant_tsc(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .is_some_and(|(_, flags)| {
            let flags: Vec<&str> = flags.split_whitespace().collect();
            flags.contains(&"constant_tsc") && flags.contains(&"nonstop_tsc")
        })
}

/// TSC cycles per millisecond of `CLOCK_MONOTONIC_RAW` over `interval`
/// (slept, so it costs no CPU). Each end is the tightest of several
/// clock-TSC-clock readings, so a preemption between the readings does not
/// skew it; over 20 ms the error is a few parts per million.
#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz(interval: Duration) -> Option<u32> {
    use nix::time::{clock_gettime, ClockId};

    fn now_ns() -> Option<i128> {
        let t = clock_gettime(ClockId::CLOCK_MONOTONIC_RAW).ok()?;
        Some(i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
    }
    /// (TSC, nanoseconds) read as close together as this host allows.
    fn sample() -> Option<(u64, i128)> {
        let mut best: Option<(i128, u64, i128)> = None;
        for _ in 0..50 {
            let before = now_ns()?;
            // SAFETY: rdtsc exists on every x86_64 CPU and only reads the counter.
            let tsc = unsafe { std::arch::x86_64::_rdtsc() };
            let after = now_ns()?;
            let gap = after - before;
            if best.map_or(true, |(g, _, _)| gap < g) {
                best = Some((gap, tsc, before + gap / 2));
            }
            if gap < 1_000 {
                break;
            }
        }
        best.map(|(_, tsc, ns)| (tsc, ns))
    }

    let (tsc0, ns0) = sample()?;
    std::thread::sleep(interval);
    let (tsc1, ns1) = sample()?;
    let ns = ns1 - ns0;
    let cycles = i128::from(tsc1.checked_sub(tsc0)?);
    if ns <= 0 {
        return None;
    }
    u32::try_from((cycles * 1_000_000 + ns / 2) / ns)
        .ok()
        .filter(|&khz| khz > 0)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz(_interval: Duration) -> Option<u32> {
    None
}

/// A path inside a QEMU `key=value,...` option: commas are doubled.
fn opt_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `program` if it is a path (has a `/`) to an executable file, else the
/// first executable of that name in `PATH`.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 || program.is_absolute() {
        return is_executable(program).then(|| program.to_owned());
    }
    find_in_path(program.to_str()?)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::test_support::{nic, spec};

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w.first().map(String::as_str) == Some(flag))
            .filter_map(|w| w.get(1).map(String::as_str))
            .collect()
    }

    #[test]
    fn tcg_command_line_has_microvm_shared_memory_and_both_devices() {
        let mut s = spec(Path::new("/run/husk"));
        s.kernel_args = vec!["husk.debug=1".into()];
        let args = strings(&command_line(&s, Accel::Tcg, None, &NetArgs::VhostUser));
        assert_eq!(
            value_after(&args, "-M"),
            ["microvm,acpi=off,memory-backend=mem"]
        );
        assert_eq!(value_after(&args, "-accel"), ["tcg"]);
        assert_eq!(value_after(&args, "-cpu"), ["max"]);
        assert_eq!(
            value_after(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert_eq!(
            value_after(&args, "-device"),
            [
                "vhost-user-vsock-device,chardev=vsock",
                "vhost-user-fs-device,chardev=fs,tag=husk"
            ]
        );
        assert_eq!(
            value_after(&args, "-chardev"),
            [
                "file,id=console,path=/run/husk/vm/console.log",
                "socket,id=vsock,path=/run/husk/vm/vhost-vsock.sock",
                "socket,id=fs,path=/run/husk/vm/vhost-fs.sock",
            ]
        );
        // QEMU passes the shared command line, with the triple-fault reboot
        // that -no-reboot turns into QEMU exiting, and TCG's own word.
        let append = value_after(&args, "-append");
        let mut with_tcg_words = s.clone();
        with_tcg_words.kernel_args.insert(0, "noapictimer".into());
        assert_eq!(append, [kernel_cmdline(REBOOT, &with_tcg_words)]);
        assert!(append[0].contains(" reboot=t "), "{append:?}");
        assert!(append[0].ends_with(" husk.debug=1"), "{append:?}");
        assert!(args.iter().any(|a| a == "-no-reboot"));
    }

    #[test]
    fn each_nic_is_a_vhost_user_netdev_with_its_mac_and_mtu_after_vsock_and_fs() {
        let (Some(a), Some(b)) = (nic(0x0a, 1500), nic(0x0b, 9000)) else {
            return;
        };
        let mut s = spec(Path::new("/run/husk"));
        s.nics = vec![a, b];
        let args = strings(&command_line(&s, Accel::Tcg, None, &NetArgs::VhostUser));
        assert_eq!(
            value_after(&args, "-device"),
            [
                "vhost-user-vsock-device,chardev=vsock",
                "vhost-user-fs-device,chardev=fs,tag=husk",
                "virtio-net-device,netdev=net0,mac=52:54:00:00:00:0a",
                "virtio-net-device,netdev=net1,mac=52:54:00:00:00:0b,host_mtu=9000",
            ]
        );
        assert_eq!(
            value_after(&args, "-netdev"),
            [
                "vhost-user,id=net0,chardev=net0",
                "vhost-user,id=net1,chardev=net1"
            ]
        );
        let chardevs = value_after(&args, "-chardev");
        assert_eq!(
            &chardevs[3..],
            [
                "socket,id=net0,path=/run/husk/vm/vhost-net-0.sock",
                "socket,id=net1,path=/run/husk/vm/vhost-net-1.sock",
            ]
        );
        // No NIC, no netdev.
        let args = strings(&command_line(
            &spec(Path::new("/r")),
            Accel::Tcg,
            None,
            &NetArgs::VhostUser,
        ));
        assert!(value_after(&args, "-netdev").is_empty());
    }

    #[test]
    fn with_the_tap_backend_each_nic_is_qemus_tap_on_an_inherited_fd() {
        let (Some(a), Some(b)) = (nic(0x0a, 1500), nic(0x0b, 9000)) else {
            eprintln!("skipped: cannot make a tap here");
            return;
        };
        let mut s = spec(Path::new("/run/husk"));
        s.nics = vec![a, b];
        let args = strings(&command_line(
            &s,
            Accel::Tcg,
            None,
            &NetArgs::Tap(vec![7, 9]),
        ));
        assert_eq!(
            value_after(&args, "-netdev"),
            ["tap,id=net0,fd=7,vhost=off", "tap,id=net1,fd=9,vhost=off"]
        );
        assert!(value_after(&args, "-device")
            .contains(&"virtio-net-device,netdev=net1,mac=52:54:00:00:00:0b,host_mtu=9000"));
        assert!(!value_after(&args, "-chardev")
            .iter()
            .any(|c| c.starts_with("socket,id=net")));
    }

    #[test]
    fn a_nic_backend_is_served_while_qemu_runs_and_removed_with_it() {
        let Some(n) = nic(1, 1500) else {
            return;
        };
        let root = tempfile::tempdir().unwrap();
        let (mut s, mut qemu) = fake_qemu(root.path(), "#!/bin/sh\nexec sleep 60\n");
        s.nics = vec![n];
        qemu.start(&s).unwrap();
        assert!(s.sandbox.vhost_net_socket(0).exists());
        qemu.stop(Duration::from_millis(50)).unwrap();
        assert!(!s.sandbox.vhost_net_socket(0).exists());
    }

    #[test]
    fn a_known_tsc_rate_reaches_the_guest_before_the_spec_words() {
        let mut s = spec(Path::new("/r"));
        s.kernel_args = vec!["tsc_early_khz=1".into()];
        let args = strings(&command_line(
            &s,
            Accel::Tcg,
            Some(2_300_000),
            &NetArgs::VhostUser,
        ));
        let append = value_after(&args, "-append");
        assert!(
            append[0].ends_with(" tsc_early_khz=2300000 tsc_early_khz=1"),
            "{append:?}"
        );
        let args = strings(&command_line(&s, Accel::Tcg, None, &NetArgs::VhostUser));
        assert!(
            !value_after(&args, "-append")[0].contains("tsc_early_khz=2300000"),
            "{args:?}"
        );
    }

    #[test]
    fn only_tcg_skips_the_local_apic_timer() {
        let s = spec(Path::new("/r"));
        let append = |accel| {
            let args = strings(&command_line(&s, accel, None, &NetArgs::VhostUser));
            value_after(&args, "-append")[0].to_string()
        };
        assert!(append(Accel::Tcg).contains(" noapictimer"));
        // KVM's vCPUs have the TSC-deadline timer: no calibration to skip.
        assert!(!append(Accel::Kvm).contains("noapictimer"));
    }

    #[test]
    fn only_a_constant_nonstop_tsc_counts_as_invariant() {
        let info = |flags: &str| format!("processor\t: 0\nflags\t\t: fpu tsc {flags}\nbugs\t\t:\n");
        assert!(invariant_tsc(&info("constant_tsc nonstop_tsc")));
        assert!(!invariant_tsc(&info("constant_tsc")));
        assert!(!invariant_tsc(&info("nonstop_tsc")));
        // Whole flags only, and from the flags line only.
        assert!(!invariant_tsc(&info("constant_tsc_x nonstop_tsc")));
        assert!(!invariant_tsc(
            "bugs\t: constant_tsc nonstop_tsc\nflags\t: fpu\n"
        ));
        assert!(!invariant_tsc(""));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_host_tsc_rate_is_measured_consistently() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        if !invariant_tsc(&cpuinfo) {
            assert_eq!(host_tsc_khz(), None);
            return;
        }
        let a = measure_tsc_khz(Duration::from_millis(20)).expect("a rate");
        let b = measure_tsc_khz(Duration::from_millis(20)).expect("a rate");
        // Between 100 MHz and 10 GHz, and two measurements within 0.5 %.
        assert!((100_000..10_000_000).contains(&a), "{a} kHz");
        assert!(a.abs_diff(b) * 200 < a, "{a} kHz vs {b} kHz");
        assert!(host_tsc_khz().is_some());
    }

    #[test]
    fn kvm_command_line_uses_kvm() {
        let args = strings(&command_line(
            &spec(Path::new("/r")),
            Accel::Kvm,
            None,
            &NetArgs::VhostUser,
        ));
        assert_eq!(value_after(&args, "-accel"), ["kvm"]);
        assert_eq!(value_after(&args, "-cpu"), ["host"]);
    }

    #[test]
    fn commas_in_paths_are_escaped_for_qemu_options() {
        let args = strings(&command_line(
            &spec(Path::new("/a,b")),
            Accel::Tcg,
            None,
            &NetArgs::VhostUser,
        ));
        assert!(
            value_after(&args, "-chardev").contains(&"socket,id=fs,path=/a,,b/vm/vhost-fs.sock")
        );
    }

    #[test]
    fn programs_are_found_by_path_or_in_path() {
        let sh = find_program(Path::new("sh")).expect("sh in PATH");
        assert!(sh.is_absolute() && is_executable(&sh));
        assert_eq!(find_program(Path::new("/bin/sh")), Some("/bin/sh".into()));
        assert_eq!(find_program(Path::new("husk-no-such-program")), None);
        assert_eq!(find_program(Path::new("/nonexistent/qemu")), None);
        // A path to something that is not executable is not a program.
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("qemu");
        std::fs::write(&plain, b"").unwrap();
        assert_eq!(find_program(&plain), None);
    }

    #[test]
    fn missing_program_kernel_initrd_or_sandbox_fail_before_anything_starts() {
        let root = tempfile::tempdir().unwrap();
        let s = spec(root.path());
        let mut qemu = Qemu::with_program(root.path().join("no-qemu"), Accel::Tcg);
        assert!(matches!(qemu.start(&s), Err(Error::MissingProgram(_))));

        let mut qemu = Qemu::with_program("/bin/true".into(), Accel::Tcg);
        assert!(matches!(
            qemu.start(&s),
            Err(Error::MissingFile { what: "kernel", .. })
        ));
        std::fs::write(&s.kernel, b"").unwrap();
        assert!(matches!(
            qemu.start(&s),
            Err(Error::MissingFile { what: "initrd", .. })
        ));
        std::fs::write(&s.initrd, b"").unwrap();
        assert!(matches!(qemu.start(&s), Err(Error::MissingSandbox(_))));
        // Nothing was served: no sockets appeared.
        assert!(!s.sandbox.path().exists());
        assert_eq!(qemu.pid(), None);
    }

    /// A sandbox ready to start, with empty kernel and initrd files and a
    /// shell script standing in for QEMU.
    fn fake_qemu(root: &Path, script: &str) -> (VmSpec, Qemu) {
        let s = spec(root);
        s.sandbox.create().unwrap();
        std::fs::write(&s.kernel, b"").unwrap();
        std::fs::write(&s.initrd, b"").unwrap();
        let fake = root.join("fake-qemu");
        std::fs::write(&fake, script).unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        (s, Qemu::with_program(fake, Accel::Tcg))
    }

    #[test]
    fn a_qemu_that_exits_at_once_is_seen_by_wait_with_its_stderr_kept_and_stop_ends_the_backends() {
        let root = tempfile::tempdir().unwrap();
        let (s, mut qemu) = fake_qemu(
            root.path(),
            "#!/bin/sh\necho 'no such device' >&2\nexit 3\n",
        );
        qemu.start(&s).unwrap();
        match qemu.wait(Duration::from_secs(30)) {
            Ok(Some(VmExit::Process(status))) => assert_eq!(status.code(), Some(3)),
            other => panic!("expected QEMU's exit, got {other:?}"),
        }
        assert_eq!(s.sandbox.hypervisor_log_tail(), "no such device");
        assert!(qemu.pid().is_none());
        qemu.stop(Duration::ZERO).unwrap();
        assert!(!s.sandbox.vhost_vsock_socket().exists());
        assert!(!s.sandbox.vhost_fs_socket().exists());
        assert!(!s.sandbox.vsock_socket().exists());
    }

    #[test]
    fn stop_reports_a_vm_that_ended_by_itself() {
        let root = tempfile::tempdir().unwrap();
        // Runs for a while, then ends like a powered-off guest.
        let (s, mut qemu) = fake_qemu(root.path(), "#!/bin/sh\nsleep 0.4\n");
        qemu.start(&s).unwrap();
        match qemu.stop(Duration::from_secs(10)).unwrap() {
            Stopped::Exited(VmExit::Process(status)) => assert!(status.success()),
            other => panic!("expected Exited, got {other:?}"),
        }
        assert!(!s.sandbox.vsock_socket().exists());
    }

    #[test]
    fn stop_kills_a_vm_that_does_not_end_and_reaps_it() {
        let root = tempfile::tempdir().unwrap();
        let (s, mut qemu) = fake_qemu(root.path(), "#!/bin/sh\nexec sleep 60\n");
        qemu.start(&s).unwrap();
        let pid = qemu.pid().unwrap();
        assert!(s.sandbox.vsock_socket().exists());
        assert_eq!(qemu.wait(Duration::from_millis(50)).unwrap(), None);
        assert_eq!(
            qemu.stop(Duration::from_millis(50)).unwrap(),
            Stopped::Killed
        );
        assert_eq!(qemu.pid(), None);
        // Killed and reaped: no process (not even a zombie) is our child any more.
        assert!(!is_child_of_us(pid));
        assert_eq!(qemu.stop(Duration::ZERO).unwrap(), Stopped::NotRunning);
        assert!(!s.sandbox.vsock_socket().exists());
        assert!(!s.sandbox.vhost_vsock_socket().exists());
        assert!(!s.sandbox.vhost_fs_socket().exists());
    }

    fn is_child_of_us(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1).map(str::to_owned))
            })
            .is_some_and(|ppid| ppid == std::process::id().to_string())
    }
}
