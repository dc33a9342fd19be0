//! Small guest programs booted through the real `Vm` API on this host's KVM:
//! each is assembled from `tests/payloads/*.S`, wrapped as an ELF vmlinux
//! (64-bit entry or PVH note) or a bzImage, and reports over COM1.
//!
//! They need `/dev/kvm` and binutils (`as`, `ld`); without them they say so
//! and skip. The payload builder is `husk_vmm::test_support` (feature
//! `test-support`, on for husk-vmm's own tests), shared with the runtime's
//! builtin-backend tests.

use std::fs;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use husk_vmm::machine::{EntryPoint, Error, ExitReason, HostCheck, Vm, VmConfig};
use husk_vmm::test_support::{
    self as payload, kvm_usable, one_vm_at_a_time, u32_at, u64_at, vcpu_threads_settled, Console,
    Kernel, Payload,
};
use husk_vmm::virtio::{ActivateError, Activation, InterruptKind, VirtioDevice};

/// Boots `kernel` with `config` and waits for the guest to end the VM.
fn boot(config: VmConfig) -> (ExitReason, Vm) {
    let mut vm = Vm::new(config).expect("VM builds");
    vm.start().unwrap();
    let reason = vm.wait_timeout(Duration::from_secs(20));
    let reason = reason.unwrap_or_else(|| {
        vm.stop();
        panic!("guest did not finish within 20 s");
    });
    assert_eq!(vcpu_threads_settled(), 0, "vCPU threads left behind");
    (reason, vm)
}

/// One VM at a time, the payload `name` assembled and KVM usable: what every
/// payload test needs first (`None` skips it, the reason already printed).
fn payload_on_kvm(name: &str) -> Option<(MutexGuard<'static, ()>, Payload)> {
    let guard = one_vm_at_a_time();
    let payload = Payload::build(name)?;
    kvm_usable().then_some((guard, payload))
}

fn config(kernel: &Kernel, console: &Console) -> VmConfig {
    let mut config = VmConfig::new(kernel.path());
    config.memory_mib = 64;
    config.console = Box::new(console.clone());
    config
}

#[test]
fn serial_output_reaches_console_sink() {
    let Some((_guard, payload)) = payload_on_kvm("serial_hello") else {
        return;
    };
    let kernel = payload.elf64();
    let console = Console::default();
    let (reason, vm) = boot(config(&kernel, &console));
    assert_eq!(reason, ExitReason::I8042Reset);
    assert_eq!(
        vm.boot_layout().entry,
        EntryPoint::Linux64(payload::LOAD_ADDR)
    );
    assert_eq!(console.bytes(), b"hello from the guest\n");
}

#[test]
fn bzimage_boots_through_its_64bit_entry() {
    let Some((_guard, payload)) = payload_on_kvm("serial_hello") else {
        return;
    };
    let kernel = payload.bzimage();
    let console = Console::default();
    let (reason, vm) = boot(config(&kernel, &console));
    assert_eq!(reason, ExitReason::I8042Reset);
    assert_eq!(
        vm.boot_layout().entry,
        EntryPoint::Linux64(payload::LOAD_ADDR + 0x200)
    );
    assert_eq!(console.bytes(), b"hello from the guest\n");
}

#[test]
fn guest_reads_e820_initrd_and_cmdline_from_zero_page() {
    let Some((_guard, payload)) = payload_on_kvm("zero_page") else {
        return;
    };
    let kernel = payload.elf64();
    let initrd = tempfile::NamedTempFile::new().unwrap();
    let initrd_data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(initrd.path(), &initrd_data).unwrap();
    let console = Console::default();
    let mut cfg = config(&kernel, &console);
    cfg.cmdline = "console=ttyS0 husk.test=zero-page".into();
    cfg.initrd = Some(initrd.path().to_owned());
    let (reason, vm) = boot(cfg);
    assert_eq!(reason, ExitReason::I8042Reset);

    let out = console.bytes();
    let n = usize::from(out[0]);
    assert_eq!(n, 2, "e820 entries");
    let entry = |i: usize| {
        let at = 1 + 20 * i;
        (
            u64_at(&out, at),
            u64_at(&out, at + 8),
            u32_at(&out, at + 16),
        )
    };
    assert_eq!(entry(0), (0, 0x9fc00, 1));
    assert_eq!(entry(1), (0x10_0000, (64 << 20) - 0x10_0000, 1));
    let at = 1 + 20 * n;
    let (initrd_addr, initrd_size) = vm.boot_layout().initrd.unwrap();
    assert_eq!(u64::from(u32_at(&out, at)), initrd_addr);
    assert_eq!(u64::from(u32_at(&out, at + 4)), initrd_size);
    assert_eq!(initrd_size, initrd_data.len() as u64);
    assert_eq!(initrd_addr % 4096, 0);
    assert!(initrd_addr + initrd_size <= 64 << 20);
    let mut in_guest = vec![0u8; initrd_data.len()];
    vm_memory::Bytes::read_slice(
        vm.memory(),
        &mut in_guest,
        vm_memory::GuestAddress(initrd_addr),
    )
    .unwrap();
    assert_eq!(in_guest, initrd_data);
    assert_eq!(&out[at + 8..], b"console=ttyS0 husk.test=zero-page\0");
}

/// A device with fixed identity that records activation.
struct ProbeDevice {
    activated: Arc<Mutex<bool>>,
}

const PROBE_TYPE: u32 = 19;
const PROBE_FEATURES: u64 = (1 << 0) | (1 << 33);

impl VirtioDevice for ProbeDevice {
    fn device_type(&self) -> u32 {
        PROBE_TYPE
    }
    fn features(&self) -> u64 {
        PROBE_FEATURES
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[64]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, _activation: Activation) -> Result<(), ActivateError> {
        *self.activated.lock().unwrap() = true;
        Ok(())
    }
    fn reset(&mut self) {}
}

#[test]
fn guest_finds_virtio_mmio_device_from_cmdline_and_negotiates() {
    let Some((_guard, payload)) = payload_on_kvm("virtio_probe") else {
        return;
    };
    let kernel = payload.elf64();
    let console = Console::default();
    let activated = Arc::new(Mutex::new(false));
    let mut cfg = config(&kernel, &console);
    cfg.cmdline = "console=ttyS0".into();
    cfg.devices.push(Box::new(ProbeDevice {
        activated: activated.clone(),
    }));
    let (reason, vm) = boot(cfg);
    assert_eq!(reason, ExitReason::I8042Reset);
    let out = console.bytes();
    assert_eq!(out.len(), 24, "serial output: {out:?}");
    assert_eq!(u32_at(&out, 0), 0x7472_6976, "magic");
    assert_eq!(u32_at(&out, 4), 2, "version");
    assert_eq!(u32_at(&out, 8), PROBE_TYPE, "device id");
    assert_eq!(u32_at(&out, 12), PROBE_FEATURES as u32, "features 0..31");
    // Bit 32 is VIRTIO_F_VERSION_1, added by the transport.
    assert_eq!(u32_at(&out, 16), ((PROBE_FEATURES >> 32) as u32) | 1);
    // ACKNOWLEDGE | DRIVER | FEATURES_OK as the guest read it back.
    assert_eq!(u32_at(&out, 20), 11);
    assert_eq!(vm.virtio_status(0), Some(11));
    assert!(!*activated.lock().unwrap(), "no DRIVER_OK, no activation");
}

/// Answers every notification of its queue 0 with a used-buffer interrupt,
/// from its own thread, as a real backend would.
struct EchoDevice {
    notified: Arc<Mutex<u32>>,
}

impl VirtioDevice for EchoDevice {
    fn device_type(&self) -> u32 {
        PROBE_TYPE
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let queue = activation.queues.into_iter().next();
        let queue = queue.ok_or(ActivateError::MissingQueue(0))?;
        let interrupt = activation.interrupt;
        let notified = self.notified.clone();
        // Through the spawner: this runs on a vCPU thread, whose filter
        // forbids creating threads.
        husk_vmm::seccomp::spawner::spawn("echo".into(), move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if queue.notifier.read().is_ok() {
                    *notified.lock().unwrap() += 1;
                    interrupt.notify(InterruptKind::Queue(queue.index)).unwrap();
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .map_err(ActivateError::Backend)?;
        Ok(())
    }
    fn reset(&mut self) {}
}

#[test]
fn guest_activates_device_notifies_queue_and_sees_used_interrupt() {
    let Some((_guard, payload)) = payload_on_kvm("virtio_activate") else {
        return;
    };
    let kernel = payload.elf64();
    let console = Console::default();
    let notified = Arc::new(Mutex::new(0));
    let mut cfg = config(&kernel, &console);
    cfg.devices.push(Box::new(EchoDevice {
        notified: notified.clone(),
    }));
    let (reason, vm) = boot(cfg);
    assert_eq!(reason, ExitReason::I8042Reset);
    let out = console.bytes();
    assert_eq!(out.len(), 36, "serial output: {out:?}");
    assert_eq!(u32_at(&out, 20), 11, "FEATURES_OK accepted");
    assert_eq!(u32_at(&out, 24), 15, "DRIVER_OK accepted");
    assert_eq!(u32_at(&out, 28), 1, "used-buffer interrupt pending");
    assert_eq!(u32_at(&out, 32), 0, "acked");
    assert_eq!(*notified.lock().unwrap(), 1);
    assert_eq!(vm.virtio_status(0), Some(15));
}

/// The host CPU's answer to CPUID `leaf`.
fn host_cpuid(leaf: u32) -> [u32; 4] {
    // SAFETY: CPUID exists on every x86_64 CPU (safe from Rust 1.87 on).
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid(leaf) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

#[test]
fn guest_cpuid_has_host_signature_and_brand_tsc_deadline_and_no_pmu() {
    let Some((_guard, payload)) = payload_on_kvm("cpuid_report") else {
        return;
    };
    let kernel = payload.elf64();
    let console = Console::default();
    let (reason, _vm) = boot(config(&kernel, &console));
    assert_eq!(reason, ExitReason::I8042Reset);
    let out = console.bytes();
    assert_eq!(out.len(), 64, "guest report: {out:?}");

    assert_eq!(
        u32_at(&out, 0),
        host_cpuid(1)[0],
        "leaf 1 EAX: the host's family, model, stepping"
    );
    let tsc_deadline = kvm_ioctls::Kvm::new()
        .unwrap()
        .check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    assert_eq!(
        u32_at(&out, 4) & (1 << 24) != 0,
        tsc_deadline,
        "TSC-deadline bit"
    );
    assert_eq!(u32_at(&out, 8), 0, "leaf 0xa: no architectural PMU");
    let amd_perfctr = (1 << 23) | (1 << 24) | (1 << 28);
    assert_eq!(
        u32_at(&out, 12) & amd_perfctr,
        0,
        "no AMD counter extensions"
    );
    if host_cpuid(0x8000_0000)[0] >= 0x8000_0004 {
        let host_brand: Vec<u8> = (0x8000_0002..=0x8000_0004)
            .flat_map(host_cpuid)
            .flat_map(u32::to_le_bytes)
            .collect();
        assert_ne!(host_brand, vec![0; 48], "the host has a brand string");
        assert_eq!(
            String::from_utf8_lossy(&out[16..]),
            String::from_utf8_lossy(&host_brand),
            "brand string"
        );
    }
}

fn from_bcd(b: u8) -> u32 {
    u32::from(b >> 4) * 10 + u32::from(b & 0xf)
}

#[test]
fn guest_probes_cmos_and_i8042_through_port_io_and_resets() {
    let Some((_guard, payload)) = payload_on_kvm("legacy_probe") else {
        return;
    };
    let kernel = payload.elf64();
    let console = Console::default();
    let before = std::time::SystemTime::now();
    let (reason, _vm) = boot(config(&kernel, &console));
    assert_eq!(reason, ExitReason::I8042Reset);
    let out = console.bytes();
    assert_eq!(out.len(), 22, "guest report: {out:x?}");

    // CMOS: A without UIP, B in BCD 24 h, D valid, RAM through the NMI bit.
    assert_eq!(out[0] & 0x80, 0, "UIP");
    assert_eq!(out[1], 0x02, "status B");
    assert_eq!(out[2], 0x80, "status D");
    assert_eq!(out[9], 0x5a, "CMOS RAM");
    // The time read is the host's UTC time (within a minute of the test).
    let (sec, min, hour) = (from_bcd(out[3]), from_bcd(out[4]), from_bcd(out[5]));
    let (day, month, year) = (from_bcd(out[6]), from_bcd(out[7]), from_bcd(out[8]));
    assert!(sec < 60 && min < 60 && hour < 24 && (1..=31).contains(&day));
    assert!((1..=12).contains(&month));
    let now = before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let guest_time_of_day = u64::from(hour * 3600 + min * 60 + sec);
    let host_time_of_day = now % 86_400;
    let drift = (guest_time_of_day + 86_400 - host_time_of_day) % 86_400;
    assert!(drift < 60, "guest {hour}:{min}:{sec} vs host {now}");
    assert!(year >= 24, "two-digit year {year}");

    // i8042: idle status has SYS and no OBF/IBF.
    assert_eq!(out[10] & 0x07, 0x04, "idle status");
    // Every answer is there the first time the status is read.
    let replies: Vec<(u8, u8)> = out[11..21].chunks(2).map(|c| (c[0], c[1])).collect();
    assert_eq!(replies[0].0 & 0x21, 0x01, "self-test OBF");
    assert_eq!(replies[0].1, 0x55, "self-test");
    assert_eq!(replies[1].1, 0x65, "power-on CTR");
    assert_eq!(replies[2].1, 0x74, "CTR written and read back");
    assert_eq!(replies[3], (replies[3].0 | 0x21, 0x5a), "aux loopback");
    assert_eq!(replies[4].1, 0x00, "keyboard interface test");
    assert_eq!(out[21] & 0x03, 0, "drained status");
}

#[test]
fn amd_legacy_pmu_msrs_raise_gp_when_kvm_can_filter() {
    let Some((_guard, payload)) = payload_on_kvm("pmu_msrs") else {
        return;
    };
    let kernel = payload.elf64();
    let console = Console::default();
    let (reason, _vm) = boot(config(&kernel, &console));
    assert_eq!(reason, ExitReason::I8042Reset);
    let filter = kvm_ioctls::Kvm::new()
        .unwrap()
        .check_extension(kvm_ioctls::Cap::X86MsrFilter);
    let expected: &[u8] = if filter { b"GG" } else { b"NN" };
    assert_eq!(
        console.bytes(),
        expected,
        "RDMSR 0xc0010000, WRMSR 0xc0010007"
    );
}

#[test]
fn two_vcpus_both_run_with_their_own_apic_ids() {
    let Some((_guard, payload)) = payload_on_kvm("smp") else {
        return;
    };
    let kernel = payload.elf64();
    let console = Console::default();
    let mut cfg = config(&kernel, &console);
    cfg.vcpus = 2;
    let (reason, _vm) = boot(cfg);
    assert_eq!(reason, ExitReason::I8042Reset);
    assert_eq!(console.bytes(), b"01");
}

#[test]
fn pvh_note_selects_32bit_entry_and_start_info() {
    let Some((_guard, payload)) = payload_on_kvm("pvh_probe") else {
        return;
    };
    let kernel = payload.elf_pvh();
    let console = Console::default();
    let mut cfg = config(&kernel, &console);
    cfg.cmdline = "console=ttyS0".into();
    let vm = Vm::new(cfg).unwrap();
    assert_eq!(
        vm.boot_layout().entry,
        EntryPoint::Pvh32(payload::LOAD_ADDR)
    );
    let mut info = [0u8; 56];
    vm_memory::Bytes::read_slice(vm.memory(), &mut info, vm_memory::GuestAddress(0x6000)).unwrap();
    assert_eq!(u32_at(&info, 0), 0x336e_c578, "hvm_start_info magic");
    assert_eq!(u64_at(&info, 24), 0x20000, "cmdline_paddr");
    let memmap = u64_at(&info, 40);
    assert_eq!(u32_at(&info, 48), 2, "memory map entries");
    let mut entry = [0u8; 24];
    vm_memory::Bytes::read_slice(
        vm.memory(),
        &mut entry,
        vm_memory::GuestAddress(memmap + 24),
    )
    .unwrap();
    assert_eq!(u64_at(&entry, 0), 0x10_0000);
    assert_eq!(u64_at(&entry, 8), (64 << 20) - 0x10_0000);
}

/// The PVH entry runs in 32-bit protected mode with paging off, which an
/// emulating KVM (kvm_pvm) cannot execute; on hardware KVM the payload
/// reads the start info the VMM wrote.
#[test]
fn pvh_payload_reads_start_info_on_hardware_kvm() {
    let _guard = one_vm_at_a_time();
    if !HostCheck::run().can_run_linux_guests() {
        eprintln!("skipping: this host's KVM cannot run 32-bit unpaged code (PVH entry)");
        return;
    }
    let Some(payload) = Payload::build("pvh_probe") else {
        return;
    };
    let kernel = payload.elf_pvh();
    let console = Console::default();
    let (reason, _vm) = boot(config(&kernel, &console));
    assert_eq!(reason, ExitReason::I8042Reset);
    let out = console.bytes();
    assert_eq!(out.len(), 8, "serial output: {out:?}");
    assert_eq!(u32_at(&out, 0), 0x336e_c578, "hvm_start_info magic");
    assert_eq!(u32_at(&out, 4), 2, "memory map entries");
}

#[test]
fn pause_parks_vcpus_and_resume_continues() {
    let Some((_guard, payload)) = payload_on_kvm("smp") else {
        return;
    };
    // vCPU 1 sits in wait-for-SIPI until vCPU 0 starts it; pausing right
    // after start must park both, whatever they were doing.
    let kernel = payload.elf64();
    let console = Console::default();
    let mut cfg = config(&kernel, &console);
    cfg.vcpus = 2;
    let mut vm = Vm::new(cfg).unwrap();
    assert!(matches!(vm.pause(), Err(Error::NotRunning)));
    vm.start().unwrap();
    vm.pause().unwrap();
    assert!(vm.is_paused());
    let during_pause = console.bytes().len();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(console.bytes().len(), during_pause, "output while paused");
    assert_eq!(vm.exit_reason(), None);
    vm.resume().unwrap();
    let reason = vm.wait_timeout(Duration::from_secs(20));
    assert_eq!(reason, Some(ExitReason::I8042Reset));
    assert_eq!(console.bytes(), b"01");
    assert_eq!(vcpu_threads_settled(), 0);
}

#[test]
fn stop_ends_a_running_vm() {
    let Some((_guard, payload)) = payload_on_kvm("smp") else {
        return;
    };
    // With one vCPU the boot vCPU waits forever for an AP that never comes.
    let kernel = payload.elf64();
    let console = Console::default();
    let mut vm = Vm::new(config(&kernel, &console)).unwrap();
    vm.start().unwrap();
    assert_eq!(vm.wait_timeout(Duration::from_millis(200)), None);
    assert_eq!(vm.stop(), ExitReason::Stopped);
    assert_eq!(vcpu_threads_settled(), 0);
    assert!(matches!(vm.start(), Err(Error::AlreadyStarted)));
}

#[test]
fn missing_kernel_is_a_clear_error() {
    let _guard = one_vm_at_a_time();
    let console = Console::default();
    let dir = tempfile::tempdir().unwrap();
    let kernel = Kernel::at(dir.path().join("nope"));
    let err = Vm::new(config(&kernel, &console)).err().unwrap();
    assert!(matches!(err, Error::KernelRead { .. }), "{err}");
    assert!(err.to_string().contains("nope"));
    assert_eq!(vcpu_threads_settled(), 0);
}

#[test]
fn kernel_that_is_neither_elf_nor_bzimage_is_refused() {
    let _guard = one_vm_at_a_time();
    let console = Console::default();
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), vec![0x90u8; 4096]).unwrap();
    let kernel = Kernel::at(file.path().to_owned());
    let err = Vm::new(config(&kernel, &console)).err().unwrap();
    assert!(matches!(err, Error::KernelFormat(_)), "{err}");
}

#[test]
fn zero_vcpus_is_refused() {
    let _guard = one_vm_at_a_time();
    let console = Console::default();
    let kernel = Kernel::at("/nonexistent".into());
    let mut cfg = config(&kernel, &console);
    cfg.vcpus = 0;
    assert!(matches!(Vm::new(cfg), Err(Error::NoVcpus)));
}

#[test]
fn initrd_too_big_for_memory_is_refused() {
    let _guard = one_vm_at_a_time();
    let Some(payload) = Payload::build("serial_hello") else {
        return;
    };
    let kernel = payload.elf64();
    let console = Console::default();
    let initrd = tempfile::NamedTempFile::new().unwrap();
    initrd.as_file().set_len(8 << 20).unwrap();
    let mut cfg = config(&kernel, &console);
    cfg.memory_mib = 8;
    cfg.initrd = Some(initrd.path().to_owned());
    let err = Vm::new(cfg).err().unwrap();
    assert!(matches!(err, Error::MemoryTooSmall { .. }), "{err}");
    assert!(err.to_string().contains("initrd"), "{err}");
}

#[test]
fn kernel_bigger_than_memory_is_refused() {
    let Some((_guard, payload)) = payload_on_kvm("serial_hello") else {
        return;
    };
    // The file is tiny, but its bss reaches past the end of 4 MiB of RAM.
    let kernel = payload.elf64_with_memsz(4 << 20);
    let console = Console::default();
    let mut cfg = config(&kernel, &console);
    cfg.memory_mib = 4;
    let err = Vm::new(cfg).err().unwrap();
    assert!(matches!(err, Error::MemoryTooSmall { .. }), "{err}");
    assert!(err.to_string().contains("kernel"), "{err}");
}

#[test]
fn bzimage_bigger_than_memory_is_refused() {
    let _guard = one_vm_at_a_time();
    let Some(payload) = Payload::build("serial_hello") else {
        return;
    };
    let kernel = payload.bzimage_padded(4 << 20);
    let console = Console::default();
    let mut cfg = config(&kernel, &console);
    cfg.memory_mib = 4;
    let err = Vm::new(cfg).err().unwrap();
    assert!(matches!(err, Error::MemoryTooSmall { .. }), "{err}");
}

#[test]
fn cmdline_longer_than_bzimage_accepts_is_refused() {
    let _guard = one_vm_at_a_time();
    let Some(payload) = Payload::build("serial_hello") else {
        return;
    };
    // The test bzImage declares cmdline_size 2048.
    let kernel = payload.bzimage();
    let console = Console::default();
    let mut cfg = config(&kernel, &console);
    cfg.cmdline = format!("husk.pad={}", "x".repeat(2100));
    let err = Vm::new(cfg).err().unwrap();
    assert!(
        matches!(err, Error::CmdlineTooLong { max: 2048, .. }),
        "{err}"
    );
}

#[test]
fn triple_fault_ends_the_vm_with_its_reason() {
    let Some((_guard, payload)) = payload_on_kvm("triple_fault") else {
        return;
    };
    let kernel = payload.elf64();
    let console = Console::default();
    let (reason, _vm) = boot(config(&kernel, &console));
    assert_eq!(reason, ExitReason::TripleFault { vcpu: 0 });
    assert_eq!(console.bytes(), b"T");
}
