//! The builtin backend: husk's own VMM ([`husk_vmm::machine::Vm`]) in the
//! calling process, one thread per vCPU, with the vsock, virtio-fs and
//! virtio-net (one per NIC) devices on virtio-mmio (each served from its
//! own thread once the guest driver activates it) and the serial console
//! written to the sandbox's console log.
//!
//! Everything that can be wrong with the input (kernel and initrd files,
//! vCPU count, memory for kernel and initrd) is refused by
//! [`Hypervisor::start`] before any vCPU thread exists; whatever was set up
//! by then (the vsock listener, the share) is dropped with the error.

use std::fs::File;
use std::time::Duration;

use husk_vmm::devices::fs::{FsConfig, FsDevice, FsMmioDevice};
use husk_vmm::devices::net::{NetMmioDevice, NetStatsHandle};
use husk_vmm::devices::vsock::VsockMmioDevice;
use husk_vmm::machine::{ExitReason, RestoreConfig, SnapshotPaths, Vm, VmConfig};
use husk_vmm::virtio::VirtioDevice;

use crate::network::placeholder;

use super::{
    check_spec, kernel_cmdline, Error, Hypervisor, RebootMode, Stopped, VmExit, VmSpec, FS_TAG,
    GUEST_CID,
};

/// How the guest ends the VM. The builtin VMM emulates the i8042 and ends
/// the VM on its reset pulse (`ExitReason::I8042Reset`): one port write the
/// VMM handles itself, so a deliberate guest reboot (the agent's power-off,
/// or `panic=-1`) is told apart from a triple fault, which the VMM reports
/// as `TripleFault` and which otherwise means the guest crashed badly.
const REBOOT: RebootMode = RebootMode::Keyboard;

/// The kernel command line the builtin backend boots `spec` with (part of
/// a sandbox template's key: a saved guest booted with it).
pub fn cmdline(spec: &VmSpec) -> String {
    kernel_cmdline(REBOOT, spec)
}

/// The builtin backend. Runs at most one VM at a time.
#[derive(Default)]
pub struct Builtin {
    vm: Option<RunningVm>,
}

/// A started VM and, once it ended, why.
struct RunningVm {
    vm: Vm,
    exit: Option<ExitReason>,
    nics: Vec<NicCounters>,
}

/// One NIC's device counters, read when the VM ends.
struct NicCounters {
    tap: String,
    stats: NetStatsHandle,
}

impl RunningVm {
    fn new(vm: Vm, nics: Vec<NicCounters>) -> Self {
        Self {
            vm,
            exit: None,
            nics,
        }
    }

    /// One `info` line per NIC with what its device moved: a network that
    /// stalled shows which way frames stopped (the guest's own counters
    /// say what it received and sent).
    fn log_nic_counters(&self) {
        for nic in &self.nics {
            let s = nic.stats.stats();
            tracing::info!(
                tap = %nic.tap,
                rx_frames = s.rx_frames,
                rx_bytes = s.rx_bytes,
                rx_dropped = s.rx_dropped,
                tx_frames = s.tx_frames,
                tx_bytes = s.tx_bytes,
                tx_dropped = s.tx_dropped,
                bad_chains = s.bad_chains,
                "virtio-net counters at the VM's end"
            );
        }
    }
}

/// A VM's console sink, virtio devices and NIC counters.
struct Devices {
    console: File,
    virtio: Vec<Box<dyn VirtioDevice>>,
    nics: Vec<NicCounters>,
}

impl Builtin {
    /// A backend with no VM yet.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The console sink and virtio devices of `spec`'s VM, on its own sockets,
/// share and taps.
fn devices(spec: &VmSpec) -> Result<Devices, Error> {
    let dir = &spec.sandbox;
    let console_path = dir.console_log();
    let console = File::create(&console_path).map_err(|source| Error::LogFile {
        path: console_path,
        source,
    })?;
    let vsock =
        VsockMmioDevice::new(GUEST_CID, &dir.vsock_socket()).map_err(|e| Error::Device {
            device: "vsock",
            message: e.to_string(),
        })?;
    let fs = FsDevice::new(FsConfig::new(dir.shared_dir(), FS_TAG)).map_err(|e| Error::Device {
        device: "fs",
        message: e.to_string(),
    })?;

    let mut virtio: Vec<Box<dyn VirtioDevice>> =
        vec![Box::new(vsock), Box::new(FsMmioDevice::new(fs))];
    let mut nics = Vec::with_capacity(spec.nics.len());
    // NICs after vsock and fs, so the guest's first NIC is always the third
    // virtio-mmio device and enumerates in the spec's order.
    for nic in &spec.nics {
        let net_error = |e: husk_vmm::devices::net::Error| Error::Device {
            device: "net",
            message: e.to_string(),
        };
        let tap = nic.tap.try_clone().map_err(net_error)?;
        let device = NetMmioDevice::new(tap, nic.config).map_err(net_error)?;
        nics.push(NicCounters {
            tap: nic.tap.name().to_owned(),
            stats: device.stats_handle(),
        });
        virtio.push(Box::new(device));
    }
    Ok(Devices {
        console,
        virtio,
        nics,
    })
}

/// Builds (but does not start) the VM for `spec`, with its NICs' counters.
fn build(spec: &VmSpec) -> Result<(Vm, Vec<NicCounters>), Error> {
    let Devices {
        console,
        virtio,
        nics,
    } = devices(spec)?;
    let mut config = VmConfig::new(&spec.kernel);
    config.vcpus = u32::from(spec.vcpus);
    config.memory_mib = u64::from(spec.memory_mib);
    config.initrd = Some(spec.initrd.clone());
    config.cmdline = cmdline(spec);
    config.devices = virtio;
    config.console = Box::new(console);
    tracing::debug!(
        cmdline = %config.cmdline,
        vcpus = config.vcpus,
        memory_mib = config.memory_mib,
        "building the builtin VM"
    );
    let vm = Vm::new(config).map_err(Error::Machine)?;
    Ok((vm, nics))
}

impl Builtin {
    /// Pauses the running VM and saves it to `paths`, tagged `key`; the VM
    /// stays paused (stop it, or resume it with [`resume`](Self::resume)).
    /// The guest must have no vsock connection open.
    pub fn snapshot(&mut self, paths: &SnapshotPaths, key: &str) -> Result<(), Error> {
        let running = self
            .vm
            .as_mut()
            .ok_or(Error::Machine(husk_vmm::machine::Error::NotRunning))?;
        running.vm.pause().map_err(Error::Machine)?;
        running.vm.snapshot(paths, key).map_err(Error::Machine)
    }

    /// Lets a VM paused by [`snapshot`](Self::snapshot) run again.
    pub fn resume(&mut self) -> Result<(), Error> {
        let running = self
            .vm
            .as_mut()
            .ok_or(Error::Machine(husk_vmm::machine::Error::NotRunning))?;
        running.vm.resume().map_err(Error::Machine)
    }

    /// Starts `spec`'s VM from the snapshot at `paths` (made with `key`)
    /// instead of booting it: the saved guest continues on this spec's own
    /// vsock socket, share, console and taps. The spec's vCPUs, memory and
    /// NIC MTUs must be the snapshot's (the key should say so); a snapshot
    /// that does not fit is refused with [`Error::Machine`] and nothing is
    /// left running.
    ///
    /// The NICs' devices keep the template's placeholder MACs
    /// ([`placeholder::mac`]): the guest read its MACs from them at probe,
    /// the VMM checks the saved configuration space against the new
    /// devices', and the agent gives each link its spec's MAC afterwards.
    pub fn start_restored(
        &mut self,
        spec: &VmSpec,
        paths: &SnapshotPaths,
        key: &str,
    ) -> Result<(), Error> {
        if self.vm.is_some() {
            return Err(Error::AlreadyRunning);
        }
        check_spec(spec)?;
        let mut spec = spec.clone();
        for (i, nic) in spec.nics.iter_mut().enumerate() {
            nic.config.mac = placeholder::mac(i);
        }
        let Devices {
            console,
            virtio,
            nics,
        } = devices(&spec)?;
        let mut config = RestoreConfig::new(paths.clone(), key);
        config.devices = virtio;
        config.console = Box::new(console);
        let mut vm = Vm::restore(config).map_err(Error::Machine)?;
        vm.start().map_err(Error::Machine)?;
        self.vm = Some(RunningVm::new(vm, nics));
        Ok(())
    }
}

impl Hypervisor for Builtin {
    fn start(&mut self, spec: &VmSpec) -> Result<(), Error> {
        if self.vm.is_some() {
            return Err(Error::AlreadyRunning);
        }
        check_spec(spec)?;
        let (mut vm, nics) = build(spec)?;
        // On failure `vm` is dropped, which joins any vCPU thread started.
        vm.start().map_err(Error::Machine)?;
        self.vm = Some(RunningVm::new(vm, nics));
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Result<Option<VmExit>, Error> {
        let Some(running) = self.vm.as_mut() else {
            return Ok(None);
        };
        if running.exit.is_none() {
            running.exit = running.vm.wait_timeout(timeout);
            if let Some(reason) = &running.exit {
                tracing::info!(?reason, "builtin VM ended");
            }
        }
        Ok(running.exit.clone().map(VmExit::Guest))
    }

    fn stop(&mut self, grace: Duration) -> Result<Stopped, Error> {
        let ended = self.wait(grace)?;
        let Some(mut running) = self.vm.take() else {
            return Ok(Stopped::NotRunning);
        };
        let outcome = match ended {
            Some(exit) => Stopped::Exited(exit),
            None => {
                tracing::warn!("VM did not end by itself; stopping its vCPUs");
                match running.vm.stop() {
                    ExitReason::Stopped => Stopped::Killed,
                    // The guest ended it just before the stop request did.
                    reason => Stopped::Exited(VmExit::Guest(reason)),
                }
            }
        };
        running.log_nic_counters();
        // Dropping the VM drops its devices: their worker threads are
        // joined and the vsock listener's socket is removed.
        drop(running);
        Ok(outcome)
    }

    fn pid(&self) -> Option<u32> {
        // The VM runs in this process; there is no process of its own.
        None
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::sandbox_dir::SandboxDir;

    fn spec(root: &Path) -> VmSpec {
        VmSpec {
            vcpus: 1,
            memory_mib: 64,
            kernel: root.join("vmlinux"),
            initrd: root.join("initrd"),
            kernel_args: vec!["husk.debug=1".into()],
            sandbox: SandboxDir::new(root, "vm").unwrap(),
            nics: vec![],
        }
    }

    #[test]
    fn command_line_reboots_through_the_i8042() {
        let line = kernel_cmdline(REBOOT, &spec(Path::new("/r")));
        assert!(line.contains(" reboot=k "), "{line}");
        assert!(line.ends_with(" husk.debug=1"), "{line}");
    }

    #[test]
    fn nothing_to_wait_for_or_stop_without_a_vm() {
        let mut b = Builtin::new();
        assert_eq!(b.wait(Duration::ZERO).unwrap(), None);
        assert_eq!(b.stop(Duration::ZERO).unwrap(), Stopped::NotRunning);
        assert_eq!(b.pid(), None);
    }

    #[test]
    fn a_missing_snapshot_is_refused_and_nothing_is_left_running() {
        let root = tempfile::tempdir().unwrap();
        let s = spec(root.path());
        std::fs::write(&s.kernel, b"").unwrap();
        std::fs::write(&s.initrd, b"").unwrap();
        s.sandbox.create().unwrap();
        let mut b = Builtin::new();
        let paths = SnapshotPaths::new(root.path().join("no-template"));
        let err = b.start_restored(&s, &paths, "key").unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Machine(husk_vmm::machine::Error::Snapshot(
                    husk_vmm::machine::SnapshotError::Io { .. }
                ))
            ),
            "{err}"
        );
        assert!(err.to_string().contains("no-template"), "{err}");
        assert_eq!(b.wait(Duration::ZERO).unwrap(), None);
        assert!(b.snapshot(&paths, "key").is_err(), "no VM to save");
        assert!(
            !s.sandbox.vsock_socket().exists(),
            "the listener was dropped"
        );
    }

    #[test]
    fn missing_files_or_sandbox_fail_before_anything_is_created() {
        let root = tempfile::tempdir().unwrap();
        let s = spec(root.path());
        let mut b = Builtin::new();
        assert!(matches!(
            b.start(&s),
            Err(Error::MissingFile { what: "kernel", .. })
        ));
        std::fs::write(&s.kernel, b"").unwrap();
        assert!(matches!(
            b.start(&s),
            Err(Error::MissingFile { what: "initrd", .. })
        ));
        std::fs::write(&s.initrd, b"").unwrap();
        assert!(matches!(b.start(&s), Err(Error::MissingSandbox(_))));
        assert!(!s.sandbox.path().exists());
        assert_eq!(b.wait(Duration::ZERO).unwrap(), None);
    }
}
