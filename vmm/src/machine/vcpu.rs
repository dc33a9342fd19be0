//! One vCPU: its boot configuration and the thread that runs it.

use std::sync::{Arc, Mutex};

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use tracing::{debug, warn};

use super::bus::Bus;
use super::cpuid;
use super::error::{kvm, Result};
use super::lifecycle::{Control, ExitReason};
use super::regs::{self, EntryPoint};
use crate::seccomp::{self, ThreadKind};

/// Configures vCPU `index` of `count`: CPUID, MSRs, FPU and LAPIC for all;
/// the boot vCPU (index 0) also gets registers for `entry`. The others wait
/// for INIT/SIPI from the guest, as on a PC.
pub fn configure(
    vcpu: &VcpuFd,
    index: u8,
    count: u8,
    supported: &CpuId,
    entry: EntryPoint,
) -> Result<()> {
    let mut cpuid = supported.clone();
    cpuid::normalize(&mut cpuid, index, count);
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    regs::setup_msrs(vcpu)?;
    regs::setup_fpu(vcpu)?;
    regs::setup_lapic(vcpu)?;
    if index == 0 {
        regs::setup_sregs(vcpu, entry)?;
        regs::setup_regs(vcpu, entry)?;
    }
    Ok(())
}

/// The I/O buses a vCPU dispatches exits to.
#[derive(Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// A vCPU shared between its thread (which locks it around each
/// `KVM_RUN`) and the VM, which reads its state while it is parked.
pub type SharedVcpu = Arc<Mutex<VcpuFd>>;

/// Runs vCPU `index` until the VM ends; the body of a vCPU thread. Its
/// seccomp filter goes on before the first `KVM_RUN`.
pub fn run(vcpu: SharedVcpu, index: u32, buses: Buses, control: Arc<Control>) {
    if let Err(e) = seccomp::apply(ThreadKind::Vcpu) {
        control.request_exit(ExitReason::VcpuError {
            vcpu: index,
            message: e.to_string(),
        });
        control.vcpu_exited(index as usize);
        return;
    }
    while control.vcpu_may_run() {
        let exit = {
            let mut vcpu = vcpu.lock().unwrap_or_else(|e| e.into_inner());
            run_once(&mut vcpu, index, &buses)
        };
        if let Some(reason) = exit {
            control.request_exit(reason);
        }
    }
    control.vcpu_exited(index as usize);
}

/// One `KVM_RUN`; `Some` when the exit ends the VM.
fn run_once(vcpu: &mut VcpuFd, index: u32, buses: &Buses) -> Option<ExitReason> {
    let exit = match vcpu.run() {
        Ok(exit) => exit,
        // A kick (pause, stop) or a signal for another reason.
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return None,
        Err(e) => {
            return Some(ExitReason::VcpuError {
                vcpu: index,
                message: format!("KVM_RUN: {e}"),
            })
        }
    };
    match exit {
        VcpuExit::IoIn(port, data) => buses.pio.read(u64::from(port), data),
        VcpuExit::IoOut(port, data) => buses.pio.write(u64::from(port), data),
        VcpuExit::MmioRead(addr, data) => buses.mmio.read(addr, data),
        VcpuExit::MmioWrite(addr, data) => buses.mmio.write(addr, data),
        VcpuExit::Shutdown => return Some(ExitReason::TripleFault { vcpu: index }),
        VcpuExit::SystemEvent(kind, _) => {
            debug!(vcpu = index, kind, "system event");
            if matches!(
                kind,
                KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET | KVM_SYSTEM_EVENT_CRASH
            ) {
                return Some(ExitReason::SystemEvent { vcpu: index, kind });
            }
        }
        // With the in-kernel LAPIC, HLT is handled by KVM; an exit here
        // means the vCPU can never be woken.
        VcpuExit::Hlt => {
            return Some(ExitReason::VcpuError {
                vcpu: index,
                message: "halted with interrupts off".into(),
            })
        }
        VcpuExit::InternalError => {
            return Some(ExitReason::VcpuError {
                vcpu: index,
                message: "KVM internal error (instruction emulation failed)".into(),
            })
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Some(ExitReason::VcpuError {
                vcpu: index,
                message: format!("VM entry failed: reason {reason:#x} on host CPU {cpu}"),
            })
        }
        VcpuExit::Intr => {}
        other => {
            warn!(vcpu = index, "unexpected vCPU exit: {other:?}");
            return Some(ExitReason::VcpuError {
                vcpu: index,
                message: format!("unexpected exit {other:?}"),
            });
        }
    }
    None
}
