//! One vCPU's KVM state: captured from a parked vCPU, set on a new one.
//!
//! Order matters on both sides. Capture: `KVM_RUN` with `immediate_exit`
//! first, so an I/O exit the VMM answered is completed into the registers;
//! then MP state (reading it makes KVM accept pending APIC events), the
//! registers, LAPIC, MSRs and last the pending events. Restore: CPUID
//! first (it decides which MSRs and XSAVE features exist), MP state,
//! registers, LAPIC before MSRs (the TSC-deadline MSR needs the LAPIC in
//! that mode), events last.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::pod::{check, from_bytes, to_bytes};
use super::SnapshotError;
use crate::machine::error::{kvm, Error, Result};

/// At most this many MSRs per vCPU are accepted from a file (KVM saves
/// a few dozen).
pub const MAX_MSRS: usize = 1024;

/// The saved state of one vCPU; the KVM structures as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// `kvm_cpuid_entry2` array as set on the vCPU.
    pub cpuid: Vec<u8>,
    /// `kvm_mp_state`.
    pub mp_state: Vec<u8>,
    /// `kvm_regs`.
    pub regs: Vec<u8>,
    /// `kvm_sregs`.
    pub sregs: Vec<u8>,
    /// `kvm_xsave` (legacy 4 KiB area: husk enables no dynamic features).
    pub xsave: Vec<u8>,
    /// `kvm_xcrs`.
    pub xcrs: Vec<u8>,
    /// `kvm_debugregs`.
    pub debugregs: Vec<u8>,
    /// `kvm_lapic_state`.
    pub lapic: Vec<u8>,
    /// `kvm_vcpu_events`.
    pub events: Vec<u8>,
    /// (index, value) of every MSR KVM saves that this vCPU could read.
    pub msrs: Vec<(u32, u64)>,
    /// The guest TSC frequency in kHz.
    pub tsc_khz: u32,
}

impl VcpuState {
    /// Captures the state of a parked vCPU.
    pub fn capture(vcpu: &mut VcpuFd, msr_list: &[u32]) -> Result<Self> {
        settle(vcpu)?;
        let mp_state = vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
        let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let xsave = vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
        let xcrs = vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
        let debugregs = vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
        let lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
        let msrs = read_msrs(vcpu, msr_list)?;
        let tsc_khz = vcpu.get_tsc_khz().map_err(kvm("KVM_GET_TSC_KHZ"))?;
        let cpuid = vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_CPUID2"))?;
        let events = vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        Ok(Self {
            cpuid: cpuid.as_slice().iter().flat_map(to_bytes).collect(),
            mp_state: to_bytes(&mp_state),
            regs: to_bytes(&regs),
            sregs: to_bytes(&sregs),
            xsave: to_bytes(&xsave),
            xcrs: to_bytes(&xcrs),
            debugregs: to_bytes(&debugregs),
            lapic: to_bytes(&lapic),
            events: to_bytes(&events),
            msrs,
            tsc_khz,
        })
    }

    /// Checks every field's size and count, without touching KVM.
    pub fn validate(&self) -> std::result::Result<(), SnapshotError> {
        let entry = std::mem::size_of::<kvm_cpuid_entry2>();
        let entries = self.cpuid.len() / entry;
        if self.cpuid.len() % entry != 0 || entries == 0 || entries > KVM_MAX_CPUID_ENTRIES {
            return Err(SnapshotError::Malformed(format!(
                "CPUID is {} bytes, not 1 to {KVM_MAX_CPUID_ENTRIES} entries of {entry}",
                self.cpuid.len()
            )));
        }
        check::<kvm_mp_state>(&self.mp_state, "MP state")?;
        check::<kvm_regs>(&self.regs, "registers")?;
        check::<kvm_sregs>(&self.sregs, "special registers")?;
        check::<kvm_xsave>(&self.xsave, "XSAVE area")?;
        check::<kvm_xcrs>(&self.xcrs, "XCRs")?;
        check::<kvm_debugregs>(&self.debugregs, "debug registers")?;
        check::<kvm_lapic_state>(&self.lapic, "LAPIC")?;
        check::<kvm_vcpu_events>(&self.events, "vCPU events")?;
        if self.msrs.len() > MAX_MSRS {
            return Err(SnapshotError::Malformed(format!(
                "{} MSRs, at most {MAX_MSRS} accepted",
                self.msrs.len()
            )));
        }
        if self.tsc_khz == 0 {
            return Err(SnapshotError::Malformed("TSC frequency is 0".into()));
        }
        Ok(())
    }

    /// Sets this state on a freshly created vCPU.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<()> {
        self.validate()?;
        let cpuid: Vec<kvm_cpuid_entry2> = self
            .cpuid
            .chunks_exact(std::mem::size_of::<kvm_cpuid_entry2>())
            .map(|c| from_bytes(c, "CPUID entry"))
            .collect::<std::result::Result<_, _>>()?;
        let cpuid = CpuId::from_entries(&cpuid)
            .map_err(|e| SnapshotError::Malformed(format!("CPUID: {e:?}")))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        let here = vcpu.get_tsc_khz().map_err(kvm("KVM_GET_TSC_KHZ"))?;
        if here != self.tsc_khz {
            // The guest calibrated its clocks against the saved frequency.
            vcpu.set_tsc_khz(self.tsc_khz)
                .map_err(|_| SnapshotError::Host {
                    what: "TSC frequency (kHz), which KVM cannot scale here",
                    saved: self.tsc_khz.to_string(),
                    here: here.to_string(),
                })?;
        }
        vcpu.set_mp_state(from_bytes(&self.mp_state, "MP state")?)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&from_bytes(&self.regs, "registers")?)
            .map_err(kvm("KVM_SET_REGS"))?;
        vcpu.set_sregs(&from_bytes(&self.sregs, "special registers")?)
            .map_err(kvm("KVM_SET_SREGS"))?;
        let xsave: kvm_xsave = from_bytes(&self.xsave, "XSAVE area")?;
        // SAFETY: husk enables no dynamically sized XSAVE feature (AMX), so
        // KVM reads no more than the legacy kvm_xsave size given here.
        unsafe { vcpu.set_xsave(&xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&from_bytes(&self.xcrs, "XCRs")?)
            .map_err(kvm("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&from_bytes(&self.debugregs, "debug registers")?)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&from_bytes(&self.lapic, "LAPIC")?)
            .map_err(kvm("KVM_SET_LAPIC"))?;
        write_msrs(vcpu, &self.msrs)?;
        vcpu.set_vcpu_events(&from_bytes(&self.events, "vCPU events")?)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

/// The MSRs KVM can save and restore (`KVM_GET_MSR_INDEX_LIST`).
pub fn msr_list(kvm_sys: &Kvm) -> Result<Vec<u32>> {
    let list = kvm_sys
        .get_msr_index_list()
        .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?;
    Ok(list.as_slice().to_vec())
}

/// Completes an exit the VMM already answered (an `IN` whose data is not
/// in RAX yet) without running guest code: `KVM_RUN` with `immediate_exit`.
fn settle(vcpu: &mut VcpuFd) -> Result<()> {
    vcpu.set_kvm_immediate_exit(1);
    let result = vcpu.run().map(|_| ());
    vcpu.set_kvm_immediate_exit(0);
    match result {
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        Err(e) => Err(Error::Kvm {
            op: "KVM_RUN (immediate exit)",
            source: e,
        }),
        Ok(()) => Err(SnapshotError::Malformed(
            "vCPU did not stop on immediate exit; it cannot be captured".into(),
        )
        .into()),
    }
}

/// Reads `list` in one call where possible; KVM stops at the first MSR it
/// cannot read, which is then skipped (an emulating KVM lacks some).
fn read_msrs(vcpu: &VcpuFd, list: &[u32]) -> Result<Vec<(u32, u64)>> {
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| SnapshotError::Malformed(format!("MSR list: {e:?}")))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // Skip the one KVM refused and go on after it.
        rest = rest.get(read + 1..).unwrap_or_default();
    }
    if out.len() > MAX_MSRS {
        out.truncate(MAX_MSRS);
        warn!("more MSRs than a snapshot holds; the rest are not saved");
    }
    Ok(out)
}

/// Writes saved MSRs in their order; one KVM refuses is logged and skipped.
fn write_msrs(vcpu: &VcpuFd, saved: &[(u32, u64)]) -> Result<()> {
    let mut rest = saved;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries)
            .map_err(|e| SnapshotError::Malformed(format!("MSR list: {e:?}")))?;
        let written = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if let Some(&(index, _)) = rest.get(written) {
            warn!(msr = format!("{index:#x}"), "KVM refused a saved MSR");
        }
        rest = rest.get(written + 1..).unwrap_or_default();
    }
    Ok(())
}
