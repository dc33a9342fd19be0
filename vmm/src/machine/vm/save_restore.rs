//! Saving a paused VM as a snapshot, and building a VM from one.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::kvm_regs;
use tracing::info;

use super::{check_counts, create_devices, create_machine, Vm};
use crate::machine::boot::BootLayout;
use crate::machine::error::{kvm, Error, Result};
use crate::machine::lifecycle::Control;
use crate::machine::snapshot::{
    cpu_msr_list, map_private, temp_path, write_memory, BootState, HostIdentity, MachineState,
    SnapshotError, SnapshotPaths, VcpuState, VmState,
};
use crate::machine::EntryPoint;
use crate::virtio::VirtioDevice;

/// What a VM is restored from, and this VM's own device backends.
pub struct RestoreConfig {
    /// The snapshot's files.
    pub snapshot: SnapshotPaths,
    /// The key the snapshot must have been made with (see
    /// [`Vm::snapshot`]); another key refuses it.
    pub key: String,
    /// New backends for the saved devices, same kinds in the same order
    /// (e.g. a vsock muxer on this sandbox's socket, this sandbox's share).
    pub devices: Vec<Box<dyn VirtioDevice>>,
    /// Where the guest's serial console output goes.
    pub console: Box<dyn Write + Send>,
}

impl RestoreConfig {
    /// Restore from `snapshot` made with `key`, no devices, console discarded.
    pub fn new(snapshot: SnapshotPaths, key: impl Into<String>) -> Self {
        Self {
            snapshot,
            key: key.into(),
            devices: Vec::new(),
            console: Box::new(std::io::sink()),
        }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Vm {
    /// Saves this VM, which must be started and [paused](Self::pause), to
    /// `paths`, tagged with `key` (what it was made from: a restore must
    /// ask for the same key). Devices are stopped while it is saved and
    /// started again afterwards, so the VM can be resumed or stopped.
    /// A device must hold no state outside guest memory and its queues
    /// (vsock: no open connection).
    pub fn snapshot(&mut self, paths: &SnapshotPaths, key: &str) -> Result<()> {
        if !self.started || !self.control.is_paused() {
            return Err(SnapshotError::NotPaused.into());
        }
        let saved = self.save(paths, key);
        let mut resumed = Ok(());
        for (index, transport) in self.transports.iter().enumerate() {
            if let Err(what) = lock(transport).resume_device() {
                resumed = Err(SnapshotError::Device { index, what }.into());
            }
        }
        saved.and(resumed)
    }

    fn save(&mut self, paths: &SnapshotPaths, key: &str) -> Result<()> {
        // Devices first: once stopped, nothing changes guest memory or
        // raises an interrupt behind the state being read.
        let transports = self
            .transports
            .iter()
            .map(|t| {
                let mut t = lock(t);
                t.quiesce();
                t.save_state()
            })
            .collect();
        let msr_list = cpu_msr_list(&self.kvm_sys)?;
        let mut cpus = Vec::with_capacity(self.vcpus.len());
        for vcpu in &self.vcpus {
            cpus.push(VcpuState::capture(&mut lock(vcpu), &msr_list)?);
        }
        let (entry, pvh) = match self.boot.entry {
            EntryPoint::Linux64(at) => (at, false),
            EntryPoint::Pvh32(at) => (at, true),
        };
        let state = MachineState {
            husk_version: env!("CARGO_PKG_VERSION").into(),
            host: HostIdentity::detect(),
            key: key.into(),
            vcpus: self.vcpus.len() as u32,
            memory_mib: self.memory_mib,
            boot: BootState {
                entry,
                pvh,
                kernel_end: self.boot.kernel_end,
                initrd: self.boot.initrd,
            },
            vm: VmState::capture(&self.vm)?,
            cpus,
            serial: lock(&self.serial).state(),
            transports,
        };
        state.validate()?;

        let io = SnapshotError::io;
        std::fs::create_dir_all(&paths.dir).map_err(io(&paths.dir))?;
        // The state file goes last: without it the directory holds no
        // snapshot, so a crash half way leaves nothing that loads.
        match std::fs::remove_file(paths.state()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::io(paths.state())(e).into())
            }
            _ => {}
        }
        let memory = paths.memory();
        let tmp = temp_path(&memory);
        let written = write_memory(&self.mem, &tmp)?;
        std::fs::rename(&tmp, &memory).map_err(io(&memory))?;
        state.write(&paths.state())?;
        info!(dir = %paths.dir.display(), memory = written, "snapshot written");
        Ok(())
    }

    /// Builds a VM from a snapshot: guest RAM mapped copy-on-write from its
    /// memory file, KVM and device state set, `config`'s devices started
    /// where the guest had them running. Like [`new`](Self::new), no guest
    /// code runs until [`start`](Self::start). A snapshot of another husk,
    /// host, key or device set is refused with the reason.
    pub fn restore(config: RestoreConfig) -> Result<Self> {
        let state = MachineState::read(&config.snapshot.state())?;
        state.check_compatible(&config.key, &HostIdentity::detect())?;
        check_counts(state.vcpus, config.devices.len())?;
        if config.devices.len() != state.transports.len() {
            return Err(SnapshotError::Device {
                index: config.devices.len().min(state.transports.len()),
                what: format!(
                    "{} devices given, the snapshot has {}",
                    config.devices.len(),
                    state.transports.len()
                ),
            }
            .into());
        }
        let mem = map_private(&config.snapshot.memory(), state.memory_mib << 20)?;
        let (kvm_sys, vm) = create_machine(&mem)?;
        let control = Arc::new(Control::new(state.vcpus as usize));
        let devices = create_devices(&vm, &mem, &control, config.console, config.devices)?;
        lock(&devices.serial)
            .restore(&state.serial)
            .map_err(SnapshotError::Malformed)?;
        state.vm.restore(&vm)?;
        let mut vcpus = Vec::with_capacity(state.cpus.len());
        for (index, saved) in state.cpus.iter().enumerate() {
            let fd = vm
                .create_vcpu(index as u64)
                .map_err(kvm("KVM_CREATE_VCPU"))?;
            saved.restore(&fd).map_err(|e| with_vcpu(index, e))?;
            vcpus.push(Arc::new(Mutex::new(fd)));
        }
        for (index, (transport, saved)) in
            devices.transports.iter().zip(&state.transports).enumerate()
        {
            lock(transport)
                .restore_state(saved)
                .map_err(|what| SnapshotError::Device { index, what })?;
        }
        info!(dir = %config.snapshot.dir.display(), "VM restored from snapshot");
        Ok(Self {
            threads: Vec::new(),
            control,
            vcpus,
            buses: devices.buses,
            transports: devices.transports,
            serial: devices.serial,
            boot: BootLayout {
                entry: state.boot.entry_point(),
                kernel_end: state.boot.kernel_end,
                initrd: state.boot.initrd,
            },
            started: false,
            memory_mib: state.memory_mib,
            mem,
            vm,
            kvm_sys,
        })
    }

    /// vCPU `index`'s general registers, while the VM is paused or not
    /// started (a running vCPU's change under the caller).
    pub fn vcpu_registers(&self, index: usize) -> Result<kvm_regs> {
        if self.started && !self.control.is_paused() {
            return Err(Error::NotRunning);
        }
        let vcpu = self.vcpus.get(index).ok_or(Error::NotRunning)?;
        let regs = lock(vcpu).get_regs().map_err(kvm("KVM_GET_REGS"))?;
        Ok(regs)
    }
}

/// Names the vCPU in a malformed-state error.
fn with_vcpu(index: usize, e: Error) -> Error {
    match e {
        Error::Snapshot(SnapshotError::Malformed(what)) => {
            SnapshotError::Malformed(format!("vCPU {index}: {what}")).into()
        }
        other => other,
    }
}
