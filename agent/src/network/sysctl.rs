//! `net.*` sysctls of a container that shares the VM's network stack.
//!
//! The host sends a container's spec without a network namespace: the VM's
//! stack, configured from the container's host namespace, is the
//! container's network namespace. libcontainer refuses `net.*` sysctls for
//! a container without a network namespace of its own (on a host they would
//! change the host's stack), yet Docker sets
//! `net.ipv4.ip_unprivileged_port_start` for every bridged container and
//! Podman `net.ipv4.ping_group_range`. Here they belong to the VM's stack,
//! so the agent, as the guest's PID 1, writes them itself and takes them out
//! of the spec it hands libcontainer.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{AgentError, Result};

/// Longest sysctl key accepted.
const MAX_KEY_LEN: usize = 256;
/// Longest sysctl value accepted.
const MAX_VALUE_LEN: usize = 4096;

/// Removes the `net.*` sysctls from `spec` when it has no network namespace
/// (the container shares the VM's stack) and returns them, checked; an
/// empty list otherwise.
pub fn take_shared(spec: &mut Spec) -> Result<Vec<(PathBuf, String)>> {
    let Some(linux) = spec.linux_mut() else {
        return Ok(Vec::new());
    };
    let own_namespace = linux
        .namespaces()
        .as_ref()
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    if own_namespace {
        return Ok(Vec::new());
    }
    let Some(sysctls) = linux.sysctl().clone() else {
        return Ok(Vec::new());
    };
    let (net, rest): (Vec<_>, Vec<_>) = sysctls
        .into_iter()
        .partition(|(k, _)| k.starts_with("net."));
    let taken = net
        .into_iter()
        .map(|(key, value)| Ok((proc_path(&key)?, checked_value(&key, value)?)))
        .collect::<Result<Vec<_>>>()?;
    linux.set_sysctl(Some(rest.into_iter().collect()));
    Ok(taken)
}

/// Writes `sysctls` (from [`take_shared`]) into the VM's network stack.
/// Only the guest's PID 1 does: an agent run on a host (tests) would change
/// the host's stack, so there they are refused as libcontainer would.
pub fn apply(sysctls: &[(PathBuf, String)]) -> Result<()> {
    if sysctls.is_empty() {
        return Ok(());
    }
    if !crate::init::is_init() {
        return Err(AgentError::InvalidArgument(format!(
            "sysctl {} needs a network namespace of the container's own outside a VM",
            sysctls[0].0.display()
        )));
    }
    for (path, value) in sysctls {
        std::fs::write(path, value)
            .map_err(|e| AgentError::io(format!("setting sysctl {}", path.display()), e))?;
    }
    Ok(())
}

/// `/proc/sys/<key with dots as slashes>`, refusing keys that could name
/// anything else.
fn proc_path(key: &str) -> Result<PathBuf> {
    let bad = || AgentError::InvalidArgument(format!("invalid sysctl key {key:?}"));
    if key.len() > MAX_KEY_LEN {
        return Err(bad());
    }
    let mut path = PathBuf::from("/proc/sys");
    for part in key.split('.') {
        let ok = !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(bad());
        }
        path.push(part);
    }
    Ok(path)
}

fn checked_value(key: &str, value: String) -> Result<String> {
    if value.len() > MAX_VALUE_LEN || value.contains('\0') {
        return Err(AgentError::InvalidArgument(format!(
            "invalid value for sysctl {key:?}"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder};

    use super::*;

    fn spec(network_namespace: bool, sysctls: &[(&str, &str)]) -> Spec {
        let mut namespaces = vec![LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Pid)
            .build()
            .unwrap()];
        if network_namespace {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .build()
                    .unwrap(),
            );
        }
        let sysctl: HashMap<String, String> = sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut spec = Spec::default();
        spec.set_linux(Some(
            LinuxBuilder::default()
                .namespaces(namespaces)
                .sysctl(sysctl)
                .build()
                .unwrap(),
        ));
        spec
    }

    #[test]
    fn net_sysctls_of_a_container_on_the_vm_stack_are_taken_out() {
        let mut s = spec(
            false,
            &[
                ("net.ipv4.ip_unprivileged_port_start", "0"),
                ("kernel.shmmax", "1000"),
            ],
        );
        let taken = take_shared(&mut s).unwrap();
        assert_eq!(
            taken,
            vec![(
                PathBuf::from("/proc/sys/net/ipv4/ip_unprivileged_port_start"),
                "0".to_owned()
            )]
        );
        let left = s.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(left.len(), 1);
        assert!(left.contains_key("kernel.shmmax"));
    }

    #[test]
    fn a_container_with_its_own_network_namespace_keeps_them() {
        let mut s = spec(true, &[("net.ipv4.ping_group_range", "0 0")]);
        assert!(take_shared(&mut s).unwrap().is_empty());
        assert_eq!(
            s.linux().as_ref().unwrap().sysctl().as_ref().unwrap().len(),
            1
        );
    }

    #[test]
    fn keys_that_leave_proc_sys_net_are_refused() {
        for key in ["net..x", "net.ipv4/../../x", "net.a.b\0", "net."] {
            let mut s = spec(false, &[(key, "1")]);
            assert!(take_shared(&mut s).is_err(), "{key:?}");
        }
    }

    #[test]
    fn outside_the_guest_they_are_refused_not_written() {
        let err = apply(&[(PathBuf::from("/proc/sys/net/ipv4/x"), "1".into())]).unwrap_err();
        assert!(err.to_string().contains("network namespace"), "{err}");
        apply(&[]).unwrap();
    }
}
