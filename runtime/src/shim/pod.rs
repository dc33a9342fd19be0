//! What a container's annotations say about its pod: which shim (and VM)
//! it belongs to, whether it is the pod's sandbox container, and how big
//! the pod's VM must be.

use std::collections::HashMap;

use oci_spec::runtime::Spec;

use crate::config::{Config, SizeError, VmSize};
use crate::hypervisor::MAX_MEMORY_MIB;

/// containerd's CRI plugin: the pod sandbox a container belongs to.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// containerd's CRI plugin: "sandbox" or "container".
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI-O's pod sandbox id.
pub const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";
/// CRI-O's "sandbox" or "container".
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
/// The grouping annotation containerd's runc shim honours.
pub const RUNC_GROUP: &str = "io.containerd.runc.v2.group";
/// The pod's CPU quota, period and memory (containerd 1.7 and later).
const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// A container's place in its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The pod's sandbox (pause) container, or a container on its own:
    /// it boots the VM.
    Sandbox,
    /// A container of the pod whose sandbox container is `sandbox_id`.
    Member {
        /// The sandbox container's id.
        sandbox_id: String,
    },
}

fn annotations(spec: &Spec) -> HashMap<String, String> {
    spec.annotations().clone().unwrap_or_default()
}

/// The id of the shim that serves container `id`: its pod's sandbox id,
/// else its group, else its own.
pub fn grouping(spec: &Spec, id: &str) -> String {
    let a = annotations(spec);
    [CRI_SANDBOX_ID, CRIO_SANDBOX_ID, RUNC_GROUP]
        .iter()
        .find_map(|key| a.get(*key).filter(|v| !v.is_empty()).cloned())
        .unwrap_or_else(|| id.to_owned())
}

/// Container `id`'s role by its annotations.
pub fn role(spec: &Spec, id: &str) -> Role {
    let a = annotations(spec);
    let kind = a
        .get(CRI_CONTAINER_TYPE)
        .or_else(|| a.get(CRIO_CONTAINER_TYPE));
    let sandbox_id = a
        .get(CRI_SANDBOX_ID)
        .or_else(|| a.get(CRIO_SANDBOX_ID))
        .filter(|s| !s.is_empty() && s.as_str() != id);
    match (kind.map(String::as_str), sandbox_id) {
        (Some("container"), Some(sandbox_id)) => Role::Member {
            sandbox_id: sandbox_id.clone(),
        },
        _ => Role::Sandbox,
    }
}

/// The pod VM's size: what the configuration gives a container with the
/// sandbox container's resources, grown to the pod's CPU and memory
/// annotations (the sum of its containers' limits) plus the overhead.
pub fn vm_size(config: &Config, spec: &Spec) -> Result<VmSize, SizeError> {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let mut size = config.vm_size(resources)?;
    let a = annotations(spec);
    let number = |key: &str| a.get(key).and_then(|v| v.trim().parse::<i64>().ok());
    if let Some(bytes) = number(SANDBOX_MEMORY).filter(|b| *b > 0) {
        let mib = u64::try_from(bytes)
            .unwrap_or(0)
            .div_ceil(1 << 20)
            .saturating_add(u64::from(config.guest.memory_overhead_mib));
        let wanted = u32::try_from(mib)
            .unwrap_or(MAX_MEMORY_MIB)
            .min(MAX_MEMORY_MIB);
        size.memory_mib = size.memory_mib.max(wanted);
    }
    if let (Some(quota), Some(period)) = (number(SANDBOX_CPU_QUOTA), number(SANDBOX_CPU_PERIOD)) {
        if quota > 0 && period > 0 {
            let cpus = u64::try_from(quota)
                .unwrap_or(0)
                .div_ceil(period.unsigned_abs());
            let cpus = cpus.clamp(1, u64::from(config.guest.max_vcpus));
            size.vcpus = size
                .vcpus
                .max(u8::try_from(cpus).unwrap_or(config.guest.max_vcpus));
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pairs: &[(&str, &str)]) -> Spec {
        let mut spec = Spec::default();
        spec.set_annotations(Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ));
        spec
    }

    #[test]
    fn a_pods_containers_share_the_shim_of_its_sandbox() {
        let sandbox = spec(&[(CRI_CONTAINER_TYPE, "sandbox"), (CRI_SANDBOX_ID, "pod1")]);
        let member = spec(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "pod1")]);
        assert_eq!(grouping(&sandbox, "pod1"), "pod1");
        assert_eq!(grouping(&member, "app"), "pod1");
        assert_eq!(role(&sandbox, "pod1"), Role::Sandbox);
        assert_eq!(
            role(&member, "app"),
            Role::Member {
                sandbox_id: "pod1".into()
            }
        );
        let crio = spec(&[
            (CRIO_CONTAINER_TYPE, "container"),
            (CRIO_SANDBOX_ID, "pod2"),
        ]);
        assert_eq!(grouping(&crio, "x"), "pod2");
        assert_eq!(grouping(&spec(&[(RUNC_GROUP, "g")]), "x"), "g");
        // `ctr run`: a container on its own is its own sandbox.
        assert_eq!(grouping(&Spec::default(), "solo"), "solo");
        assert_eq!(role(&Spec::default(), "solo"), Role::Sandbox);
    }

    #[test]
    fn the_pod_vm_grows_to_the_pods_annotations_plus_overhead() {
        let config = Config::default();
        let plain = vm_size(&config, &Spec::default()).unwrap();
        let big = vm_size(
            &config,
            &spec(&[
                (SANDBOX_MEMORY, &(1u64 << 30).to_string()),
                (SANDBOX_CPU_QUOTA, "200000"),
                (SANDBOX_CPU_PERIOD, "100000"),
            ]),
        )
        .unwrap();
        assert_eq!(
            big.memory_mib,
            (1024 + config.guest.memory_overhead_mib).max(plain.memory_mib)
        );
        assert_eq!(big.vcpus, plain.vcpus.max(2));
        let junk = vm_size(&config, &spec(&[(SANDBOX_MEMORY, "lots")])).unwrap();
        assert_eq!(junk, plain);
    }
}
