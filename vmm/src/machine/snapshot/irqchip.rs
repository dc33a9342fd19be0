//! VM-wide KVM state: the in-kernel PICs and IOAPIC, the PIT and kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::pod::{check, from_bytes, to_bytes};
use super::SnapshotError;
use crate::machine::error::{kvm, Result};

/// The chips `KVM_GET_IRQCHIP` knows, in the order they are saved.
const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

/// Saved VM-wide state; KVM structures as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// `kvm_irqchip` of the master PIC, the slave PIC and the IOAPIC.
    pub irqchips: Vec<Vec<u8>>,
    /// `kvm_pit_state2`.
    pub pit: Vec<u8>,
    /// `kvm_clock_data`: kvmclock as the guest last saw it.
    pub clock: Vec<u8>,
}

impl VmState {
    /// Captures the state of a VM whose vCPUs are parked.
    pub fn capture(vm: &VmFd) -> Result<Self> {
        let mut irqchips = Vec::with_capacity(CHIPS.len());
        for chip_id in CHIPS {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip).map_err(kvm("KVM_GET_IRQCHIP"))?;
            irqchips.push(to_bytes(&chip));
        }
        let pit = vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?;
        let clock = vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
        Ok(Self {
            irqchips,
            pit: to_bytes(&pit),
            clock: to_bytes(&clock),
        })
    }

    /// Checks sizes and chip ids without touching KVM.
    pub fn validate(&self) -> std::result::Result<(), SnapshotError> {
        if self.irqchips.len() != CHIPS.len() {
            return Err(SnapshotError::Malformed(format!(
                "{} interrupt controllers saved, expected {}",
                self.irqchips.len(),
                CHIPS.len()
            )));
        }
        for (bytes, want) in self.irqchips.iter().zip(CHIPS) {
            let chip: kvm_irqchip = from_bytes(bytes, "interrupt controller")?;
            if chip.chip_id != want {
                return Err(SnapshotError::Malformed(format!(
                    "interrupt controller {} where {want} was expected",
                    chip.chip_id
                )));
            }
        }
        check::<kvm_pit_state2>(&self.pit, "PIT")?;
        check::<kvm_clock_data>(&self.clock, "kvmclock")
    }

    /// Sets this state on a new VM (before its vCPUs run).
    pub fn restore(&self, vm: &VmFd) -> Result<()> {
        self.validate()?;
        vm.set_pit2(&from_bytes(&self.pit, "PIT")?)
            .map_err(kvm("KVM_SET_PIT2"))?;
        let mut clock: kvm_clock_data = from_bytes(&self.clock, "kvmclock")?;
        // No flags: the guest's clock continues from where it was saved,
        // not advanced by the wall time the snapshot spent on disk; the
        // sandbox sets the guest's wall clock itself after a restore.
        clock.flags = 0;
        vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
        for bytes in &self.irqchips {
            let chip: kvm_irqchip = from_bytes(bytes, "interrupt controller")?;
            vm.set_irqchip(&chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }
}
