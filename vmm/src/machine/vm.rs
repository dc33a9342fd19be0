//! The VM: KVM objects, guest memory, devices and vCPU threads, and its
//! lifecycle (start, pause, resume, stop, wait).

use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use tracing::{debug, info};
use vm_memory::{GuestMemory, GuestMemoryAtomic, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::boot::{self, BootLayout};
use super::bus::{Bus, SharedDevice};
use super::cmos::{Cmos, CMOS_PORT_COUNT};
use super::config::VmConfig;
use super::cpuid;
use super::error::{kvm, Error, Result};
use super::i8042::{I8042, I8042_PORT_COUNT};
use super::layout::{
    self, CMDLINE_MAX_SIZE, CMOS_PORT, I8042_AUX_IRQ, I8042_DATA_PORT, I8042_KBD_IRQ, SERIAL_IRQ,
    SERIAL_PORT, VIRTIO_MMIO_SIZE,
};
use super::legacy::{IrqTrigger, SerialDevice};
use super::lifecycle::{install_kick_handler, Control, ExitReason};
use super::mptable::{self, MAX_VCPUS};
use super::pmu;
use super::vcpu::{self, Buses, SharedVcpu};
use super::{memory, regs};
use crate::seccomp;
use crate::virtio::{MmioTransport, VirtioDevice, QUEUE_NOTIFY_OFFSET};

/// Where KVM may put the TSS it needs for real-mode emulation on Intel.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

mod save_restore;
pub use save_restore::RestoreConfig;

/// A microVM running in the calling process.
pub struct Vm {
    // Field order is drop order: threads first, then devices, then KVM.
    threads: Vec<JoinHandle<()>>,
    control: Arc<Control>,
    vcpus: Vec<SharedVcpu>,
    buses: Buses,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    serial: Arc<Mutex<SerialDevice>>,
    boot: BootLayout,
    started: bool,
    memory_mib: u64,
    mem: GuestMemoryMmap,
    vm: VmFd,
    kvm_sys: Kvm,
}

impl Vm {
    /// Builds the VM: validates `config`, allocates memory, loads the kernel
    /// and sets up devices and vCPUs. No guest code runs until
    /// [`start`](Self::start); any error leaves nothing behind.
    pub fn new(config: VmConfig) -> Result<Self> {
        check_counts(config.vcpus, config.devices.len())?;
        let mem = memory::create(config.memory_mib, config.hugepages, config.memory_backing)?;
        let cmdline = build_cmdline(&config.cmdline, config.devices.len())?;
        let boot = boot::load(
            &mem,
            config.memory_mib << 20,
            &config.kernel,
            config.initrd.as_deref(),
            &cmdline,
        )?;
        regs::write_boot_tables(&mem)?;
        mptable::write(&mem, config.vcpus)?;
        debug!(?boot, "kernel loaded");

        let (kvm_sys, vm) = create_machine(&mem)?;
        let control = Arc::new(Control::new(config.vcpus as usize));
        let devices = create_devices(&vm, &mem, &control, config.console, config.devices)?;

        let mut supported = kvm_sys
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
        cpuid::prepare(&mut supported, &cpuid::HostCpu::detect(&kvm_sys));
        // MAX_VCPUS keeps every index within an 8-bit APIC id.
        let count = config.vcpus as u8;
        let mut vcpus = Vec::with_capacity(usize::from(count));
        for index in 0..count {
            let fd = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm("KVM_CREATE_VCPU"))?;
            vcpu::configure(&fd, index, count, &supported, boot.entry)?;
            vcpus.push(Arc::new(Mutex::new(fd)));
        }
        Ok(Self {
            threads: Vec::new(),
            control,
            vcpus,
            buses: devices.buses,
            transports: devices.transports,
            serial: devices.serial,
            boot,
            started: false,
            memory_mib: config.memory_mib,
            mem,
            vm,
            kvm_sys,
        })
    }

    /// Starts one thread per vCPU.
    pub fn start(&mut self) -> Result<()> {
        if self.started {
            return Err(Error::AlreadyStarted);
        }
        self.started = true;
        // Before any vCPU runs: the filters compile here (a defect fails the start, not a
        // thread), and the spawner must be created by this unfiltered thread.
        seccomp::prepare().map_err(Error::Seccomp)?;
        seccomp::spawner::init().map_err(Error::Thread)?;
        for (index, fd) in self.vcpus.iter().cloned().enumerate() {
            let buses = self.buses.clone();
            let control = self.control.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("husk-vcpu{index}"))
                .spawn(move || vcpu::run(fd, index as u32, buses, control));
            match spawned {
                Ok(handle) => {
                    self.control.vcpu_started(index, handle.as_pthread_t());
                    self.threads.push(handle);
                }
                Err(e) => {
                    self.control.request_exit(ExitReason::Stopped);
                    self.join();
                    return Err(Error::Thread(e));
                }
            }
        }
        info!(vcpus = self.threads.len(), "VM started");
        Ok(())
    }

    /// Stops all vCPUs and returns once every one is parked.
    pub fn pause(&self) -> Result<()> {
        if !self.started || !self.control.pause() {
            return Err(Error::NotRunning);
        }
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) -> Result<()> {
        if !self.control.resume() {
            return Err(Error::NotRunning);
        }
        Ok(())
    }

    /// Whether the vCPUs are parked by [`pause`](Self::pause).
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// Ends the VM (if it did not end already) and returns why it ended.
    pub fn stop(&mut self) -> ExitReason {
        self.control.request_exit(ExitReason::Stopped);
        self.wait()
    }

    /// Waits until the guest ends the VM, or [`stop`](Self::stop) is called
    /// from elsewhere, and joins the vCPU threads. A VM never started has
    /// nothing to wait for and reports [`ExitReason::Stopped`].
    pub fn wait(&mut self) -> ExitReason {
        if !self.started {
            self.control.request_exit(ExitReason::Stopped);
        }
        let reason = self
            .control
            .wait_exited(None)
            .unwrap_or(ExitReason::Stopped);
        self.join();
        reason
    }

    /// Like [`wait`](Self::wait), but gives up after `timeout` with `None`,
    /// leaving the VM running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitReason> {
        let reason = self.control.wait_exited(Some(Instant::now() + timeout))?;
        self.join();
        Some(reason)
    }

    /// Why the VM ended, if it did.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.control.exit_reason()
    }

    /// Where the kernel, its entry point and the initrd were placed.
    pub fn boot_layout(&self) -> &BootLayout {
        &self.boot
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The virtio status register of the `index`th configured device.
    pub fn virtio_status(&self, index: usize) -> Option<u32> {
        let transport = self.transports.get(index)?;
        let status = transport.lock().unwrap_or_else(|e| e.into_inner()).status();
        Some(status)
    }

    fn join(&mut self) {
        for handle in self.threads.drain(..) {
            // A vCPU thread that panicked already left the VM; nothing to add.
            let _ = handle.join();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.control.request_exit(ExitReason::Stopped);
            self.control.wait_exited(None);
            self.join();
        }
    }
}

fn build_cmdline(base: &str, devices: usize) -> Result<Cmdline> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE)?;
    if !base.trim().is_empty() {
        cmdline.insert_str(base.trim())?;
    }
    for index in 0..devices {
        let (addr, irq) = layout::virtio_mmio_slot(index).ok_or(Error::TooManyDevices(devices))?;
        cmdline.add_virtio_mmio_device(
            VIRTIO_MMIO_SIZE,
            vm_memory::GuestAddress(addr),
            irq,
            None,
        )?;
    }
    Ok(cmdline)
}

/// Checks the vCPU and device counts a machine is built with.
fn check_counts(vcpus: u32, devices: usize) -> Result<()> {
    if vcpus == 0 {
        return Err(Error::NoVcpus);
    }
    if vcpus > MAX_VCPUS {
        return Err(Error::TooManyVcpus {
            requested: vcpus,
            max: MAX_VCPUS,
        });
    }
    if devices > layout::MAX_VIRTIO_DEVICES {
        return Err(Error::TooManyDevices(devices));
    }
    Ok(())
}

/// The KVM VM around `mem`: in-kernel interrupt controllers and PIT, RAM
/// registered, legacy PMU counters denied. No vCPU yet.
fn create_machine(mem: &GuestMemoryMmap) -> Result<(Kvm, VmFd)> {
    install_kick_handler().map_err(Error::Thread)?;
    let kvm_sys = Kvm::new().map_err(kvm("open /dev/kvm"))?;
    let vm = kvm_sys.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(kvm("KVM_CREATE_PIT2"))?;
    register_memory(&vm, mem)?;
    pmu::deny_legacy_counters(&kvm_sys, &vm);
    Ok((kvm_sys, vm))
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| Error::Memory(e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the mapping belongs to `mem`, which the Vm keeps alive
        // (and drops after the VM fd) for as long as KVM may access it.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// The devices of a machine and the buses that reach them.
struct Devices {
    buses: Buses,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    serial: Arc<Mutex<SerialDevice>>,
}

fn create_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    control: &Arc<Control>,
    console: Box<dyn std::io::Write + Send>,
    devices: Vec<Box<dyn VirtioDevice>>,
) -> Result<Devices> {
    let mut pio = Bus::default();
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(Error::Device)?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(kvm("KVM_IRQFD"))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, console)));
    let irq_trigger = |irq| -> Result<IrqTrigger> {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(Error::Device)?;
        vm.register_irqfd(&fd, irq).map_err(kvm("KVM_IRQFD"))?;
        Ok(IrqTrigger(fd))
    };
    let i8042: SharedDevice = Arc::new(Mutex::new(I8042::new(
        control.clone(),
        irq_trigger(I8042_KBD_IRQ)?,
        irq_trigger(I8042_AUX_IRQ)?,
    )));
    // Fixed, disjoint port ranges: inserting cannot fail.
    pio.insert(u64::from(SERIAL_PORT), 8, serial.clone());
    pio.insert(u64::from(I8042_DATA_PORT), I8042_PORT_COUNT, i8042);
    let cmos: SharedDevice = Arc::new(Mutex::new(Cmos::new()));
    pio.insert(u64::from(CMOS_PORT), CMOS_PORT_COUNT, cmos);

    let mut mmio = Bus::default();
    let mut transports = Vec::new();
    let atomic_mem = GuestMemoryAtomic::new(mem.clone());
    for (index, device) in devices.into_iter().enumerate() {
        let (addr, irq) =
            layout::virtio_mmio_slot(index).ok_or(Error::TooManyDevices(index + 1))?;
        let transport = MmioTransport::new(device, atomic_mem.clone()).map_err(Error::Device)?;
        vm.register_irqfd(transport.interrupt().irq_eventfd(), irq)
            .map_err(kvm("KVM_IRQFD"))?;
        for (queue, notifier) in transport.queue_notifiers() {
            vm.register_ioevent(
                notifier,
                &IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET),
                u32::from(queue),
            )
            .map_err(kvm("KVM_IOEVENTFD"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(addr, VIRTIO_MMIO_SIZE, transport.clone());
        transports.push(transport);
    }
    Ok(Devices {
        buses: Buses { pio, mmio },
        transports,
        serial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Vm>();
    }

    #[test]
    fn cmdline_lists_each_device_with_its_window_and_irq() {
        let cmdline = build_cmdline(" console=ttyS0 ", 2).unwrap();
        assert_eq!(
            cmdline.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6"
        );
    }
}
