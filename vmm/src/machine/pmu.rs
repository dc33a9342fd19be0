//! Keeps the guest off AMD's legacy performance-counter MSRs.
//!
//! The guest's CPUID hides every PMU that has a CPUID bit (see
//! [`cpuid::prepare`](super::cpuid::prepare)), but AMD's four legacy
//! counters have none: Linux assumes them on every AMD family 6+ CPU and
//! probes them at boot (`check_hw_exists` reads PERF_CTL0..3, then writes
//! and reads back PERF_CTR3, 0xc001_0007). A KVM whose PMU is off (for
//! example nested, where the outer VM has no PMU) drops that write and
//! logs "Unhandled WRMSR(0xc0010007)" in the host's kernel log for every
//! boot. An MSR filter that denies these eight MSRs makes the accesses
//! raise #GP in the guest instead, which Linux's probe expects from a
//! machine without counters ("PMU not available due to virtualization,
//! using software events only"); the host logs nothing.

use kvm_ioctls::{Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};
use tracing::{debug, warn};

/// PERF_CTL0..=3 at 0xc001_0000..=0xc001_0003, PERF_CTR0..=3 after them.
pub const AMD_LEGACY_PMU_FIRST: u32 = 0xc001_0000;
/// How many MSRs the legacy counters take.
pub const AMD_LEGACY_PMU_COUNT: u32 = 8;

/// The filter: one range over the legacy counters, every bit clear (deny
/// reads and writes); every other MSR stays as KVM handles it.
fn ranges(bitmap: &[u8]) -> [MsrFilterRange<'_>; 1] {
    [MsrFilterRange {
        flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
        base: AMD_LEGACY_PMU_FIRST,
        msr_count: AMD_LEGACY_PMU_COUNT,
        bitmap,
    }]
}

/// Installs the filter on `vm` if `kvm` supports MSR filters
/// (`KVM_CAP_X86_MSR_FILTER`, Linux 5.10+); returns whether it did.
pub fn deny_legacy_counters(kvm: &Kvm, vm: &VmFd) -> bool {
    if !kvm.check_extension(Cap::X86MsrFilter) {
        debug!("KVM has no MSR filter; AMD legacy PMU MSRs left to KVM");
        return false;
    }
    let bitmap = [0u8; AMD_LEGACY_PMU_COUNT.div_ceil(8) as usize];
    match vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges(&bitmap)) {
        Ok(()) => true,
        Err(e) => {
            // Only a host log line depends on it: not worth refusing a VM.
            warn!("KVM_X86_SET_MSR_FILTER: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_denies_exactly_the_eight_legacy_counter_msrs() {
        let bitmap = [0u8; 1];
        let [range] = ranges(&bitmap);
        assert_eq!(range.base, 0xc001_0000);
        assert_eq!(range.base + range.msr_count - 1, 0xc001_0007);
        assert!(range.flags.contains(MsrFilterRangeFlags::READ));
        assert!(range.flags.contains(MsrFilterRangeFlags::WRITE));
        assert!(range.bitmap.iter().all(|&b| b == 0), "every MSR denied");
        assert_eq!(range.bitmap.len() * 8, range.msr_count as usize);
    }
}
