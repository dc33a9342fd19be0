//! Per-vCPU CPUID: what KVM supports, normalised to this VM's topology.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

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
