//! The builtin backend through the `Hypervisor` trait, on this host's real
//! KVM: small test payloads (husk-vmm's `test_support`, assembled with
//! binutils) stand in for the guest kernel. They write to the serial port
//! and reset through the i8042, which is all `kvm_pvm` can run; a Linux
//! guest needs hardware virtualization and is covered under QEMU elsewhere.
//!
//! Without a usable /dev/kvm or binutils the booting tests say why and skip.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_runtime::hypervisor::builtin::Builtin;
use husk_runtime::hypervisor::{
    kernel_cmdline, new_hypervisor, ConcreteBackend, Error, Hypervisor, RebootMode, Stopped,
    VmExit, VmSpec,
};
use husk_runtime::sandbox_dir::SandboxDir;
use husk_runtime::service::vm::{self, SandboxVm};
use husk_vmm::machine::{self, ExitReason, HostCheck};
use husk_vmm::test_support::{
    kvm_usable, one_vm_at_a_time, threads_settled, u32_at, vcpu_threads_settled, Kernel, Payload,
};

/// A sandbox under `root` (created) with `kernel`, a small initrd, 1 vCPU
/// and 64 MiB.
fn spec(root: &Path, kernel: &Path) -> VmSpec {
    let initrd = root.join("initrd");
    let initrd_data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&initrd, initrd_data).unwrap();
    let sandbox = SandboxDir::new(root, "vm").unwrap();
    sandbox.create().unwrap();
    VmSpec {
        vcpus: 1,
        memory_mib: 64,
        kernel: kernel.to_owned(),
        initrd,
        kernel_args: vec![],
        sandbox,
        nics: vec![],
    }
}

fn builtin() -> Box<dyn Hypervisor> {
    new_hypervisor(
        ConcreteBackend::Builtin,
        &husk_runtime::config::Qemu::default(),
        &HostCheck::run(),
    )
}

/// Nothing of a VM is left: no vCPU or device thread, no vsock socket.
fn assert_nothing_left(spec: &VmSpec) {
    assert_eq!(vcpu_threads_settled(), 0, "vCPU threads left behind");
    assert_eq!(threads_settled("husk-vsock"), 0, "vsock worker left");
    assert_eq!(threads_settled("husk-fs"), 0, "fs worker left");
    assert!(
        !spec.sandbox.vsock_socket().exists(),
        "vsock socket left behind"
    );
}

/// A VM spec booting a test payload, with the files it names kept alive.
struct PayloadVm {
    spec: VmSpec,
    _kernel: Kernel,
    _root: tempfile::TempDir,
}

/// The spec (see [`spec`]) of a VM booting payload `name` as an ELF
/// vmlinux; `None`, having said why, without binutils or a usable /dev/kvm.
fn payload_vm(name: &str) -> Option<PayloadVm> {
    let payload = Payload::build(name)?;
    if !kvm_usable() {
        return None;
    }
    let kernel = payload.elf64();
    let root = tempfile::tempdir().unwrap();
    Some(PayloadVm {
        spec: spec(root.path(), kernel.path()),
        _kernel: kernel,
        _root: root,
    })
}

#[test]
fn serial_line_reaches_the_console_log_and_an_i8042_reset_ends_the_vm() {
    let _guard = one_vm_at_a_time();
    let Some(vm) = payload_vm("serial_hello") else {
        return;
    };
    let spec = vm.spec;
    let mut hv = builtin();
    hv.start(&spec).unwrap();
    assert_eq!(hv.pid(), None, "the VM runs in this process");
    // The device backends are up until stop, even once the guest ended.
    assert!(spec.sandbox.vsock_socket().exists());
    assert!(matches!(hv.start(&spec), Err(Error::AlreadyRunning)));

    let exit = hv.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(exit, Some(VmExit::Guest(ExitReason::I8042Reset)));
    assert_eq!(
        fs::read_to_string(spec.sandbox.console_log()).unwrap(),
        "hello from the guest\n"
    );
    // Waiting again reports the same end.
    assert_eq!(hv.wait(Duration::ZERO).unwrap(), exit);
    assert_eq!(
        hv.stop(Duration::from_secs(1)).unwrap(),
        Stopped::Exited(VmExit::Guest(ExitReason::I8042Reset))
    );
    assert_nothing_left(&spec);
    assert_eq!(hv.stop(Duration::ZERO).unwrap(), Stopped::NotRunning);
    assert_eq!(hv.wait(Duration::ZERO).unwrap(), None);
}

#[test]
fn guest_gets_the_command_line_with_both_devices_and_the_initrd() {
    let _guard = one_vm_at_a_time();
    let Some(vm) = payload_vm("zero_page") else {
        return;
    };
    let mut spec = vm.spec;
    spec.kernel_args = vec!["husk.test=zero-page".into()];
    let mut hv = Builtin::new();
    hv.start(&spec).unwrap();
    let exit = hv.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(exit, Some(VmExit::Guest(ExitReason::I8042Reset)));

    // The payload reports: e820 count, the entries, initrd address and
    // size, then the command line with its NUL.
    let out = fs::read(spec.sandbox.console_log()).unwrap();
    let n = usize::from(out[0]);
    let at = 1 + 20 * n;
    let initrd_len = fs::metadata(&spec.initrd).unwrap().len();
    assert_ne!(u32_at(&out, at), 0, "initrd address");
    assert_eq!(u64::from(u32_at(&out, at + 4)), initrd_len, "initrd size");
    // The runtime's own line (reboot=k: the builtin VMM ends the VM on the
    // i8042 reset), the spec's words, then the VMM's two device entries.
    let line = kernel_cmdline(RebootMode::Keyboard, &spec);
    assert!(line.contains(" reboot=k ") && line.ends_with(" husk.test=zero-page"));
    assert_eq!(
        String::from_utf8_lossy(&out[at + 8..]),
        format!("{line} virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6\0")
    );
    hv.stop(Duration::ZERO).unwrap();
    assert_nothing_left(&spec);
}

#[test]
fn the_first_virtio_mmio_device_is_the_vsock_device() {
    let _guard = one_vm_at_a_time();
    let Some(vm) = payload_vm("virtio_probe") else {
        return;
    };
    let spec = vm.spec;
    let mut hv = builtin();
    hv.start(&spec).unwrap();
    let exit = hv.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(exit, Some(VmExit::Guest(ExitReason::I8042Reset)));
    let out = fs::read(spec.sandbox.console_log()).unwrap();
    assert_eq!(out.len(), 24, "serial output: {out:?}");
    assert_eq!(u32_at(&out, 0), 0x7472_6976, "virtio-mmio magic");
    assert_eq!(u32_at(&out, 4), 2, "virtio-mmio version");
    assert_eq!(u32_at(&out, 8), 19, "device id: vsock");
    // ACKNOWLEDGE | DRIVER | FEATURES_OK: the device accepted the driver.
    assert_eq!(u32_at(&out, 20), 11);
    hv.stop(Duration::ZERO).unwrap();
    assert_nothing_left(&spec);
}

#[test]
fn stop_ends_a_guest_that_never_ends_by_itself() {
    let _guard = one_vm_at_a_time();
    // With one vCPU the payload waits forever for a second one.
    let Some(vm) = payload_vm("smp") else {
        return;
    };
    let spec = vm.spec;
    let mut hv = builtin();
    hv.start(&spec).unwrap();
    assert_eq!(hv.wait(Duration::from_millis(200)).unwrap(), None);
    let started = Instant::now();
    assert_eq!(
        hv.stop(Duration::from_millis(100)).unwrap(),
        Stopped::Killed
    );
    assert!(started.elapsed() < Duration::from_secs(5), "stop hung");
    assert_nothing_left(&spec);
}

#[test]
fn sandbox_boot_fails_fast_when_the_builtin_vm_ends() {
    let _guard = one_vm_at_a_time();
    let Some(vm) = payload_vm("serial_hello") else {
        return;
    };
    let spec = vm.spec;
    let dir = spec.sandbox.clone();
    // Boot creates the sandbox directory itself.
    dir.remove().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // An agent timeout far longer than the test may take.
    let boot = SandboxVm::boot(builtin(), spec.clone(), Duration::from_secs(600));
    let result =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(60), boot).await });
    match result {
        Ok(Err(vm::Error::VmEnded {
            exit,
            hypervisor,
            console,
        })) => {
            assert_eq!(exit, VmExit::Guest(ExitReason::I8042Reset));
            // The builtin VMM runs in this process: no separate stderr.
            assert_eq!(hypervisor, "");
            assert_eq!(console, "hello from the guest");
        }
        Ok(Err(other)) => panic!("expected VmEnded, got {other}"),
        Ok(Ok(_)) => panic!("booted without an agent"),
        Err(_) => panic!("boot waited for the agent although the VM had ended"),
    }
    assert!(!dir.path().exists(), "sandbox dir left behind");
    assert_nothing_left(&spec);
}

/// Starts `spec` through the trait, expecting an error; checks nothing
/// runs afterwards.
fn start_fails(spec: &VmSpec) -> Error {
    let mut hv = builtin();
    let err = hv.start(spec).expect_err("start succeeded");
    assert_eq!(hv.wait(Duration::ZERO).unwrap(), None);
    assert_eq!(hv.stop(Duration::ZERO).unwrap(), Stopped::NotRunning);
    assert_nothing_left(spec);
    err
}

#[test]
fn missing_kernel_is_refused() {
    let _guard = one_vm_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let spec = spec(root.path(), &root.path().join("no-vmlinux"));
    let err = start_fails(&spec);
    assert!(
        matches!(err, Error::MissingFile { what: "kernel", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no-vmlinux"), "{err}");
}

#[test]
fn kernel_that_is_neither_elf_nor_bzimage_is_refused() {
    let _guard = one_vm_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let kernel = root.path().join("garbage");
    fs::write(&kernel, vec![0x90u8; 4096]).unwrap();
    let spec = spec(root.path(), &kernel);
    let err = start_fails(&spec);
    assert!(
        matches!(err, Error::Machine(machine::Error::KernelFormat(_))),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("neither an ELF vmlinux nor a bzImage"),
        "{err}"
    );
}

#[test]
fn zero_vcpus_are_refused() {
    let _guard = one_vm_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let kernel = root.path().join("vmlinux");
    fs::write(&kernel, b"\x7fELF").unwrap();
    let mut spec = spec(root.path(), &kernel);
    spec.vcpus = 0;
    let err = start_fails(&spec);
    assert!(matches!(err, Error::InvalidSpec(_)), "{err}");
    assert!(err.to_string().contains("vcpus 0"), "{err}");
}

#[test]
fn too_little_memory_is_refused() {
    let _guard = one_vm_at_a_time();
    let Some(payload) = Payload::build("serial_hello") else {
        return;
    };
    let kernel = payload.elf64();
    let root = tempfile::tempdir().unwrap();

    // Below what any guest gets.
    let mut spec = spec(root.path(), kernel.path());
    spec.memory_mib = 32;
    let err = start_fails(&spec);
    assert!(matches!(err, Error::InvalidSpec(_)), "{err}");
    assert!(err.to_string().contains("memory 32 MiB"), "{err}");

    // In range, but the initrd does not fit beside the kernel.
    let spec = {
        let mut s = spec;
        s.memory_mib = 64;
        fs::File::create(&s.initrd)
            .unwrap()
            .set_len(70 << 20)
            .unwrap();
        s
    };
    let err = start_fails(&spec);
    assert!(
        matches!(err, Error::Machine(machine::Error::MemoryTooSmall { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("initrd"), "{err}");
}
