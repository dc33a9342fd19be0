//! The guest's CPUID: what KVM supports, completed where KVM leaves it to
//! the VMM ([`prepare`], once per VM) and normalised to this VM's topology
//! ([`normalize`], per vCPU).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use kvm_ioctls::{Cap, Kvm};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_ARCH_PERFMON: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_MAX: u32 = 0x8000_0000;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
/// First of the three leaves holding the 48-byte processor brand string.
const LEAF_BRAND_FIRST: u32 = 0x8000_0002;
const LEAF_BRAND_LAST: u32 = 0x8000_0004;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;
const LEAF_AMD_PERFMON_EXT: u32 = 0x8000_0022;

const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: the LAPIC timer has the TSC-deadline mode.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: IA32_PERF_CAPABILITIES exists (a PMU MSR).
const ECX_PDCM: u32 = 1 << 15;
/// Leaf 0x8000_0001 ECX: AMD's core, northbridge and last-level-cache
/// performance counter extensions (PerfCtrExtCore, PerfCtrExtNB,
/// PerfCtrExtLLC), each a bank of MSRs.
const AMD_ECX_PERFCTR_CORE: u32 = 1 << 23;
const AMD_ECX_PERFCTR_NB: u32 = 1 << 24;
const AMD_ECX_PERFCTR_LLC: u32 = 1 << 28;
const EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// What the VMM adds to KVM's supported CPUID, found once per VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCpu {
    /// `KVM_CAP_TSC_DEADLINE_TIMER`: the in-kernel LAPIC emulates the
    /// TSC-deadline timer mode.
    pub tsc_deadline: bool,
    /// The host's brand string, leaves 0x8000_0002..=0x8000_0004 as
    /// (eax, ebx, ecx, edx); `None` if the host CPU has no such leaves.
    pub brand: Option<[[u32; 4]; 3]>,
}

impl HostCpu {
    /// Asks `kvm` and the host CPU.
    pub fn detect(kvm: &Kvm) -> Self {
        Self {
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
            brand: host_brand(),
        }
    }
}

/// The brand string leaves of the CPU this runs on.
#[cfg(target_arch = "x86_64")]
// `__cpuid` is safe from Rust 1.87 on, but unsafe at the workspace's
// rust-version (1.80).
#[allow(unused_unsafe)]
fn host_brand() -> Option<[[u32; 4]; 3]> {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID exists on every x86_64 CPU; extended leaves are only
    // read up to the advertised maximum.
    let max = unsafe { __cpuid(LEAF_EXT_MAX) }.eax;
    if max < LEAF_BRAND_LAST {
        return None;
    }
    let mut brand = [[0; 4]; 3];
    for (leaf, regs) in (LEAF_BRAND_FIRST..=LEAF_BRAND_LAST).zip(brand.iter_mut()) {
        // SAFETY: as above.
        let r = unsafe { __cpuid(leaf) };
        *regs = [r.eax, r.ebx, r.ecx, r.edx];
    }
    Some(brand)
}

#[cfg(not(target_arch = "x86_64"))]
fn host_brand() -> Option<[[u32; 4]; 3]> {
    None
}

/// Completes `cpuid` (as returned by `KVM_GET_SUPPORTED_CPUID`) with what
/// KVM reports as unsupported only because it is the VMM's business:
///
/// - **TSC-deadline timer** (leaf 1 ECX bit 24). KVM emulates it in the
///   in-kernel LAPIC, but before its 2024 CPUID rework (e.g. Debian 12's
///   6.1, the nested L1 of the first Linux boots) does not report it as
///   supported, since it depends on the VMM creating that LAPIC; a VMM that
///   does sets the bit itself when `KVM_CAP_TSC_DEADLINE_TIMER` is present. Without it Linux calibrates
///   the LAPIC timer against the PIT, which under nested virtualization
///   fails ("APIC timer disabled due to verification failure").
/// - **Brand string** (leaves 0x8000_0002..=0x8000_0004). KVM returns these
///   leaves zeroed (they fall to the default case of its CPUID builder), so
///   the guest has no "model name": Linux then makes one up, e.g. "Hammer"
///   for AMD family 0xf. The vendor (leaf 0) and the family, model and
///   stepping (leaf 1 EAX) already come from the host through KVM.
/// - **No PMU.** This VMM does not offer a virtual PMU it would have to
///   manage (KVM's may be disabled, e.g. nested, and then every counter MSR
///   access is dropped and logged as unhandled by the host kernel). So the
///   guest is told there is none: Intel's architectural PMU leaf 0xa is
///   zeroed (Linux then registers no hardware PMU and touches no counter
///   MSR) and PDCM cleared; on AMD the extended counter banks
///   (PerfCtrExtCore/NB/LLC in 0x8000_0001 ECX: MSRs 0xc001_0200..,
///   0xc001_0240.., 0xc001_0230..) and PerfMonV2 (leaf 0x8000_0022, 0xc000_030x) are
///   hidden. AMD's four legacy counters (0xc001_0000..=0xc001_0007) have no
///   CPUID bit: Linux probes them on every AMD family 6+ CPU whatever
///   CPUID says, so an MSR filter keeps the guest off them (`pmu.rs`).
pub fn prepare(cpuid: &mut CpuId, host: &HostCpu) {
    let ext_max = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == LEAF_EXT_MAX)
        .map_or(0, |e| e.eax);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                if host.tsc_deadline {
                    entry.ecx |= ECX_TSC_DEADLINE;
                }
                entry.ecx &= !ECX_PDCM;
            }
            LEAF_ARCH_PERFMON | LEAF_AMD_PERFMON_EXT => {
                (entry.eax, entry.ebx, entry.ecx, entry.edx) = (0, 0, 0, 0);
            }
            LEAF_EXT_FEATURES => {
                entry.ecx &= !(AMD_ECX_PERFCTR_CORE | AMD_ECX_PERFCTR_NB | AMD_ECX_PERFCTR_LLC);
            }
            // KVM lists the brand leaves (zeroed) whenever its extended
            // range reaches them, which it does when the host's does.
            leaf @ LEAF_BRAND_FIRST..=LEAF_BRAND_LAST if leaf <= ext_max => {
                if let Some(brand) = host.brand {
                    let [a, b, c, d] = brand[(leaf - LEAF_BRAND_FIRST) as usize];
                    (entry.eax, entry.ebx, entry.ecx, entry.edx) = (a, b, c, d);
                }
            }
            _ => {}
        }
    }
}

/// Rewrites `cpuid` (as returned by `KVM_GET_SUPPORTED_CPUID`) for vCPU
/// `index` of `count`: one socket, one thread per core, `count` cores,
/// APIC id = index, and the hypervisor bit set.
pub fn normalize(cpuid: &mut CpuId, index: u8, count: u8) {
    let apic_id = u32::from(index);
    let count = u32::from(count.max(1));
    // Bits needed to number the cores in an APIC id.
    let core_bits = 32 - (count - 1).leading_zeros();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // Cores per package - 1; each cache is private to its core.
                entry.eax = (entry.eax & 0x03ff_ffff) | ((count - 1) << 26);
                entry.eax &= !(0xfff << 14);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => topology(entry, apic_id, count, core_bits),
            LEAF_AMD_SIZES => entry.ecx = (entry.ecx & !0xff) | (count - 1),
            LEAF_AMD_EXT_APIC => {
                entry.eax = apic_id;
                entry.ebx &= !0xff00; // one thread per core
                entry.ecx &= !0x700; // one node
            }
            _ => {}
        }
    }
}

fn topology(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, core_bits: u32) {
    entry.edx = apic_id;
    match entry.index {
        0 => {
            entry.eax = 0;
            entry.ebx = 1;
            entry.ecx = (TOPOLOGY_LEVEL_SMT << 8) | entry.index;
        }
        1 => {
            entry.eax = core_bits;
            entry.ebx = count;
            entry.ecx = (TOPOLOGY_LEVEL_CORE << 8) | entry.index;
        }
        _ => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = entry.index;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            ..Default::default()
        }
    }

    fn leaf(cpuid: &CpuId, function: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function)
            .expect("leaf present")
    }

    /// Leaves as KVM_GET_SUPPORTED_CPUID returns them on an AMD host with
    /// a PMU: extended range to 0x8000_0022, brand leaves zeroed.
    fn kvm_supported() -> CpuId {
        let all = |function, v| kvm_cpuid_entry2 {
            function,
            eax: v,
            ebx: v,
            ecx: v,
            edx: v,
            ..Default::default()
        };
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: LEAF_FEATURES,
                eax: 0x00a2_0f12, // family 0x19, model 0x21, stepping 2
                ecx: ECX_PDCM | 1,
                ..Default::default()
            },
            all(LEAF_ARCH_PERFMON, 0x0804_3005),
            kvm_cpuid_entry2 {
                function: LEAF_EXT_MAX,
                eax: LEAF_AMD_PERFMON_EXT,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_EXT_FEATURES,
                ecx: AMD_ECX_PERFCTR_CORE | AMD_ECX_PERFCTR_NB | AMD_ECX_PERFCTR_LLC | 1,
                ..Default::default()
            },
            all(LEAF_BRAND_FIRST, 0),
            all(LEAF_BRAND_FIRST + 1, 0),
            all(LEAF_BRAND_LAST, 0),
            all(LEAF_AMD_PERFMON_EXT, 0x0000_0106),
        ])
        .unwrap()
    }

    fn brand_of(text: &str) -> [[u32; 4]; 3] {
        let mut bytes = [0u8; 48];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        let mut brand = [[0; 4]; 3];
        for (i, word) in bytes.chunks(4).enumerate() {
            brand[i / 4][i % 4] = u32::from_le_bytes(word.try_into().unwrap());
        }
        brand
    }

    fn brand_text(cpuid: &CpuId) -> String {
        let bytes: Vec<u8> = (LEAF_BRAND_FIRST..=LEAF_BRAND_LAST)
            .flat_map(|f| {
                let e = leaf(cpuid, f);
                [e.eax, e.ebx, e.ecx, e.edx]
            })
            .flat_map(u32::to_le_bytes)
            .collect();
        String::from_utf8_lossy(&bytes)
            .trim_end_matches('\0')
            .to_string()
    }

    #[test]
    fn prepare_sets_tsc_deadline_only_when_kvm_has_it() {
        let mut with = kvm_supported();
        prepare(
            &mut with,
            &HostCpu {
                tsc_deadline: true,
                brand: None,
            },
        );
        assert_ne!(leaf(&with, LEAF_FEATURES).ecx & ECX_TSC_DEADLINE, 0);
        let mut without = kvm_supported();
        prepare(&mut without, &HostCpu::default());
        assert_eq!(leaf(&without, LEAF_FEATURES).ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(leaf(&without, LEAF_FEATURES).ecx & 1, 1, "other bits kept");
    }

    #[test]
    fn prepare_passes_the_host_brand_string_and_keeps_family_model() {
        let mut cpuid = kvm_supported();
        let host = HostCpu {
            tsc_deadline: false,
            brand: Some(brand_of("AMD EPYC 7B13 64-Core Processor")),
        };
        prepare(&mut cpuid, &host);
        assert_eq!(brand_text(&cpuid), "AMD EPYC 7B13 64-Core Processor");
        assert_eq!(leaf(&cpuid, LEAF_FEATURES).eax, 0x00a2_0f12);
    }

    #[test]
    fn prepare_leaves_brand_leaves_outside_the_extended_range_alone() {
        let mut cpuid = kvm_supported();
        for e in cpuid.as_mut_slice() {
            if e.function == LEAF_EXT_MAX {
                e.eax = LEAF_BRAND_FIRST;
            }
        }
        prepare(
            &mut cpuid,
            &HostCpu {
                tsc_deadline: false,
                brand: Some(brand_of("Some CPU")),
            },
        );
        assert_ne!(leaf(&cpuid, LEAF_BRAND_FIRST).eax, 0);
        assert_eq!(leaf(&cpuid, LEAF_BRAND_LAST).eax, 0);
    }

    #[test]
    fn prepare_hides_the_pmu() {
        let mut cpuid = kvm_supported();
        prepare(&mut cpuid, &HostCpu::default());
        let perfmon = leaf(&cpuid, LEAF_ARCH_PERFMON);
        assert_eq!(
            (perfmon.eax, perfmon.ebx, perfmon.ecx, perfmon.edx),
            (0, 0, 0, 0)
        );
        let amd = leaf(&cpuid, LEAF_AMD_PERFMON_EXT);
        assert_eq!((amd.eax, amd.ebx, amd.ecx, amd.edx), (0, 0, 0, 0));
        assert_eq!(
            leaf(&cpuid, LEAF_EXT_FEATURES).ecx,
            1,
            "only PMU bits cleared"
        );
        assert_eq!(leaf(&cpuid, LEAF_FEATURES).ecx & ECX_PDCM, 0);
    }

    #[test]
    fn apic_id_topology_and_hypervisor_bit_per_vcpu() {
        let mut cpuid = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_TOPOLOGY, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_AMD_EXT_APIC, 0),
        ])
        .unwrap();
        normalize(&mut cpuid, 2, 3);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 3);
        assert_eq!(e[0].ebx & 0xffff, 0x800, "CLFLUSH size kept");
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].ebx, e[1].edx), (1, 2));
        assert_eq!(
            (e[2].eax, e[2].ebx, e[2].ecx >> 8),
            (2, 3, TOPOLOGY_LEVEL_CORE)
        );
        assert_eq!(e[3].eax, 2);
    }
}
