//! VM snapshots on this host's KVM: the `counter` payload is paused
//! mid-count, saved, and restored into new VMs, which must go on counting
//! from where it stopped (registers, memory), each on its own
//! copy-on-write view of the saved RAM. Bad snapshots must be refused with
//! their reason, leaving nothing behind.
//!
//! They need `/dev/kvm` and binutils; without them they say so and skip.

use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use husk_vmm::machine::{
    Error, ExitReason, RestoreConfig, SnapshotError, SnapshotPaths, Vm, VmConfig,
};
use husk_vmm::test_support::{
    kvm_usable, one_vm_at_a_time, u64_at, vcpu_threads_settled, Console, Kernel, Payload,
};
use husk_vmm::virtio::{ActivateError, Activation, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

const COUNTER: GuestAddress = GuestAddress(0x20_0000);
const STOP_FLAG: GuestAddress = GuestAddress(0x20_1000);
const KEY: &str = "counter payload, 1 vCPU, 64 MiB";

fn counter_on_kvm() -> Option<(MutexGuard<'static, ()>, Kernel)> {
    let guard = one_vm_at_a_time();
    let payload = Payload::build("counter")?;
    kvm_usable().then(|| (guard, payload.elf64()))
}

fn config(kernel: &Kernel, console: &Console) -> VmConfig {
    let mut config = VmConfig::new(kernel.path());
    config.memory_mib = 64;
    config.console = Box::new(console.clone());
    config
}

fn counter(vm: &Vm) -> u64 {
    vm.memory().read_obj(COUNTER).unwrap()
}

/// Waits until the guest's memory counter passes `above`.
fn counts_past(vm: &Vm, above: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(vm) <= above {
        assert!(
            Instant::now() < deadline && vm.exit_reason().is_none(),
            "the guest does not count (at {}, ended: {:?})",
            counter(vm),
            vm.exit_reason()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Tells the guest to stop and report; returns (RBX, R15, memory counter).
fn stop_and_report(vm: &mut Vm, console: &Console) -> (u64, u64, u64) {
    vm.memory().write_obj(1u8, STOP_FLAG).unwrap();
    let reason = vm.wait_timeout(Duration::from_secs(20));
    let reason = reason.unwrap_or_else(|| {
        vm.stop();
        panic!("guest did not report within 20 s");
    });
    assert_eq!(reason, ExitReason::I8042Reset);
    let out = console.bytes();
    assert_eq!(out.len(), 24, "report: {out:?}");
    (u64_at(&out, 0), u64_at(&out, 8), u64_at(&out, 16))
}

/// Boots the counter, lets it count, pauses it and saves it to `dir`.
/// Returns the paused template and the count it was saved at.
fn template(kernel: &Kernel, console: &Console, paths: &SnapshotPaths) -> (Vm, u64) {
    let mut vm = Vm::new(config(kernel, console)).unwrap();
    vm.start().unwrap();
    counts_past(&vm, 1000);
    vm.pause().unwrap();
    let rbx = vm.vcpu_registers(0).unwrap().rbx;
    let in_memory = counter(&vm);
    // A kick can land between the increment and the store.
    assert!(
        in_memory == rbx || in_memory + 1 == rbx,
        "{in_memory} vs {rbx}"
    );
    vm.snapshot(paths, KEY).unwrap();
    (vm, rbx)
}

#[test]
fn restored_vms_count_on_from_the_saved_state_each_on_its_own_memory() {
    let Some((_guard, kernel)) = counter_on_kvm() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let paths = SnapshotPaths::new(dir.path().join("snap"));
    let console = Console::default();
    let (mut original, saved) = template(&kernel, &console, &paths);
    let saved_regs = original.vcpu_registers(0).unwrap();
    let saved_in_memory = counter(&original);

    // The snapshot leaves the original usable: it resumes and finishes.
    original.resume().unwrap();
    counts_past(&original, saved_in_memory + 10);
    let (rbx, r15, mem) = stop_and_report(&mut original, &console);
    assert!(rbx > saved && mem == rbx && r15 == rbx + 1000);
    drop(original);

    let consoles = [Console::default(), Console::default()];
    let mut restored: Vec<Vm> = consoles
        .iter()
        .map(|console| {
            let mut cfg = RestoreConfig::new(paths.clone(), KEY);
            cfg.console = Box::new(console.clone());
            Vm::restore(cfg).unwrap()
        })
        .collect();
    for vm in &restored {
        let regs = vm.vcpu_registers(0).unwrap();
        assert_eq!(regs, saved_regs, "registers as saved");
        assert_eq!(counter(vm), saved_in_memory, "memory as saved");
    }
    for vm in &mut restored {
        vm.start().unwrap();
    }
    for vm in &restored {
        counts_past(vm, saved_in_memory + 1000);
    }
    for (vm, console) in restored.iter_mut().zip(&consoles) {
        let (rbx, r15, mem) = stop_and_report(vm, console);
        assert!(rbx > saved + 1000, "counted on: {rbx} after {saved}");
        assert_eq!(mem, rbx, "memory counter follows RBX");
        assert_eq!(r15, rbx + 1000, "R15 restored");
    }
    drop(restored);
    assert_eq!(vcpu_threads_settled(), 0, "vCPU threads left behind");

    // Guest writes went to private copies, never to the template file.
    let file = std::fs::read(paths.memory()).unwrap();
    assert_eq!(file.len(), 64 << 20);
    assert_eq!(u64_at(&file, COUNTER.0 as usize), saved_in_memory);
}

/// A device that only needs to be present (the counter never drives it).
struct Idle(u32);

impl VirtioDevice for Idle {
    fn device_type(&self) -> u32 {
        self.0
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
    fn activate(&mut self, _activation: Activation) -> Result<(), ActivateError> {
        Ok(())
    }
    fn reset(&mut self) {}
}

fn refusal(cfg: RestoreConfig) -> SnapshotError {
    match Vm::restore(cfg) {
        Ok(_) => panic!("restore must be refused"),
        Err(Error::Snapshot(e)) => e,
        Err(other) => panic!("refused for another reason: {other}"),
    }
}

#[test]
fn bad_or_mismatched_snapshots_are_refused_with_their_reason() {
    let Some((_guard, kernel)) = counter_on_kvm() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let paths = SnapshotPaths::new(dir.path().join("snap"));
    let console = Console::default();
    let mut cfg = config(&kernel, &console);
    cfg.devices.push(Box::new(Idle(19)));
    let mut vm = Vm::new(cfg).unwrap();
    vm.start().unwrap();
    counts_past(&vm, 10);
    vm.pause().unwrap();
    vm.snapshot(&paths, KEY).unwrap();
    vm.stop();
    drop(vm);

    let with = |key: &str, devices: Vec<Box<dyn VirtioDevice>>| {
        let mut cfg = RestoreConfig::new(paths.clone(), key);
        cfg.devices = devices;
        cfg
    };
    // The snapshot is good: with the same key and device kind it loads.
    Vm::restore(with(KEY, vec![Box::new(Idle(19))])).unwrap();

    let err = refusal(with("another kernel", vec![Box::new(Idle(19))]));
    assert!(matches!(err, SnapshotError::Key { .. }), "{err}");
    let err = refusal(with(KEY, vec![]));
    assert!(err.to_string().contains("0 devices given"), "{err}");
    let err = refusal(with(KEY, vec![Box::new(Idle(26))]));
    assert!(err.to_string().contains("device type 19"), "{err}");

    let state = std::fs::read(paths.state()).unwrap();
    let mut corrupted = state.clone();
    let at = corrupted.len() / 2;
    corrupted[at] ^= 0x20;
    std::fs::write(paths.state(), &corrupted).unwrap();
    let err = refusal(with(KEY, vec![Box::new(Idle(19))]));
    assert!(matches!(err, SnapshotError::Checksum(_)), "{err}");
    std::fs::write(paths.state(), &state[..state.len() - 1]).unwrap();
    let err = refusal(with(KEY, vec![Box::new(Idle(19))]));
    assert!(matches!(err, SnapshotError::Length { .. }), "{err}");
    std::fs::write(paths.state(), &state).unwrap();

    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(paths.memory())
        .unwrap();
    memory.set_len(32 << 20).unwrap();
    let err = refusal(with(KEY, vec![Box::new(Idle(19))]));
    assert!(matches!(err, SnapshotError::MemoryFile { .. }), "{err}");
    std::fs::remove_file(paths.memory()).unwrap();
    let err = refusal(with(KEY, vec![Box::new(Idle(19))]));
    assert!(matches!(err, SnapshotError::Io { .. }), "{err}");
    assert_eq!(vcpu_threads_settled(), 0);
}

#[test]
fn only_a_started_and_paused_vm_is_saved() {
    let Some((_guard, kernel)) = counter_on_kvm() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let paths = SnapshotPaths::new(dir.path());
    let console = Console::default();
    let mut vm = Vm::new(config(&kernel, &console)).unwrap();
    let not_paused = |vm: &mut Vm| {
        matches!(
            vm.snapshot(&paths, KEY),
            Err(Error::Snapshot(SnapshotError::NotPaused))
        )
    };
    assert!(not_paused(&mut vm), "not started");
    vm.start().unwrap();
    assert!(not_paused(&mut vm), "running");
    assert!(!paths.exists());
    vm.stop();
}
