//! The container's seccomp filter, loaded by the agent's own executor
//! immediately before `execve`, whatever `noNewPrivileges` says.
//!
//! libcontainer loads the filter itself, and without no_new_privs (the
//! spec's default, and Docker's) it does so before it drops capabilities,
//! changes directory and checks the cwd: loading a filter without
//! no_new_privs needs CAP_SYS_ADMIN, which the drop may remove. A profile
//! that blocks `getcwd`, `chdir` or `prctl` for the workload then breaks
//! the container's start. So the agent takes the filter out of the spec
//! libcontainer sees, keeps CAP_SYS_ADMIN in the process's effective and
//! permitted sets through libcontainer's drop when no_new_privs is off,
//! and in the executor loads the filter and then drops that one
//! capability: between the filter and `execve` the init only calls
//! `capset` and `execve`. As crun does.

use std::fs;
use std::path::Path;

use caps::{CapSet, Capability};
use libcontainer::oci_spec::runtime::{
    Capabilities, Capability as OciCapability, LinuxSeccomp, LinuxSeccompAction,
    Process as OciProcess, Spec,
};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

use crate::error::{AgentError, Result};

/// The file, in the agent's bundle of a container, that keeps the
/// container's filter for its exec'd processes.
const FILTER_FILE: &str = "seccomp.json";

/// What the executor does before `execve`.
#[derive(Clone, Debug, Default)]
pub struct LateSeccomp {
    /// The filter to load, if the container has one.
    filter: Option<LinuxSeccomp>,
    /// The capability sets CAP_SYS_ADMIN was added to, so the filter can
    /// be loaded without no_new_privs; it is dropped from them right after.
    drop_sys_admin: Vec<CapSet>,
}

impl LateSeccomp {
    /// Takes the filter out of a container's `spec` (so libcontainer never
    /// loads it) and prepares its init `process` for the late load.
    /// Refuses what cannot be loaded late.
    pub fn take(spec: &mut Spec) -> Result<Self> {
        let filter = spec.linux_mut().as_mut().and_then(|l| l.seccomp().clone());
        if let Some(linux) = spec.linux_mut() {
            linux.set_seccomp(None);
        }
        let Some(filter) = filter else {
            return Ok(Self::default());
        };
        refuse_notify(&filter)?;
        let process = spec
            .process_mut()
            .as_mut()
            .ok_or_else(|| AgentError::InvalidArgument("the spec has no process".into()))?;
        Self::prepare(filter, process, || Ok(false))
    }

    /// Keeps a container's filter in its agent bundle for its exec'd
    /// processes (libcontainer would read it from the bundle's spec).
    pub fn save(&self, bundle: &Path) -> Result<()> {
        let Some(filter) = &self.filter else {
            return Ok(());
        };
        let path = bundle.join(FILTER_FILE);
        let json = serde_json::to_vec(filter)
            .map_err(|e| AgentError::Engine(format!("seccomp filter: {e}")))?;
        fs::write(&path, json).map_err(|e| AgentError::io(format!("writing {}", path.display()), e))
    }

    /// The late load for a process exec'd in the container whose agent
    /// bundle is `bundle`; `container_nnp` reads the container's own
    /// no_new_privileges, which an exec'd process inherits unless it says
    /// (read only when there is a filter and the process does not say).
    pub fn for_exec(
        bundle: &Path,
        process: &mut OciProcess,
        container_nnp: impl FnOnce() -> Result<bool>,
    ) -> Result<Self> {
        let path = bundle.join(FILTER_FILE);
        let filter: LinuxSeccomp = match fs::read(&path) {
            Ok(json) => serde_json::from_slice(&json)
                .map_err(|e| AgentError::Engine(format!("reading {}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(AgentError::io(format!("reading {}", path.display()), e)),
        };
        Self::prepare(filter, process, container_nnp)
    }

    fn prepare(
        filter: LinuxSeccomp,
        process: &mut OciProcess,
        inherited_nnp: impl FnOnce() -> Result<bool>,
    ) -> Result<Self> {
        let nnp = match process.no_new_privileges() {
            Some(nnp) => nnp,
            None => inherited_nnp()?,
        };
        let drop_sys_admin = if nnp {
            Vec::new()
        } else {
            keep_sys_admin(process)
        };
        Ok(Self {
            filter: Some(filter),
            drop_sys_admin,
        })
    }

    /// Loads the filter and drops what was kept to load it. Runs in the
    /// container's init (a fork of the agent) right before `execve`.
    fn load(&self) -> std::result::Result<(), String> {
        let Some(filter) = &self.filter else {
            return Ok(());
        };
        match libcontainer::seccomp::initialize_seccomp(filter) {
            Ok(None) => {}
            Ok(Some(_)) => return Err("seccomp user notification is not supported".into()),
            Err(e) => return Err(format!("loading the seccomp filter: {e}")),
        }
        // Effective first: it must stay within permitted.
        for set in &self.drop_sys_admin {
            caps::drop(None, *set, Capability::CAP_SYS_ADMIN)
                .map_err(|e| format!("dropping CAP_SYS_ADMIN from {set:?}: {e}"))?;
        }
        Ok(())
    }
}

/// Adds CAP_SYS_ADMIN to the effective and permitted sets the process is
/// given, where the spec names a set and leaves it out. Returns the sets
/// it was added to, to drop it from after the load.
fn keep_sys_admin(process: &mut OciProcess) -> Vec<CapSet> {
    let Some(mut capabilities) = process.capabilities().clone() else {
        return Vec::new();
    };
    let with_sys_admin = |set: &Option<Capabilities>| {
        let set = set.as_ref()?;
        (!set.contains(&OciCapability::SysAdmin)).then(|| {
            let mut set = set.clone();
            set.insert(OciCapability::SysAdmin);
            set
        })
    };
    let mut added = Vec::new();
    if let Some(effective) = with_sys_admin(capabilities.effective()) {
        capabilities.set_effective(Some(effective));
        added.push(CapSet::Effective);
    }
    if let Some(permitted) = with_sys_admin(capabilities.permitted()) {
        capabilities.set_permitted(Some(permitted));
        added.push(CapSet::Permitted);
    }
    process.set_capabilities(Some(capabilities));
    added
}

/// Seccomp user notification hands a listener fd to a host-side agent
/// through `listenerPath`; there is no such agent across the VM boundary.
fn refuse_notify(filter: &LinuxSeccomp) -> Result<()> {
    let notifies = filter.default_action() == LinuxSeccompAction::ScmpActNotify
        || filter
            .syscalls()
            .iter()
            .flatten()
            .any(|rule| rule.action() == LinuxSeccompAction::ScmpActNotify);
    if notifies || filter.listener_path().is_some() {
        return Err(AgentError::InvalidArgument(
            "linux.seccomp: SCMP_ACT_NOTIFY and listenerPath (seccomp user notification) are not supported in a husk VM".into(),
        ));
    }
    Ok(())
}

/// libcontainer's executor (PATH lookup, `execvp`), preceded by the late
/// seccomp load.
#[derive(Clone)]
pub struct HuskExecutor {
    late: LateSeccomp,
}

impl HuskExecutor {
    /// An executor that loads `late`'s filter right before exec.
    pub fn new(late: LateSeccomp) -> Self {
        Self { late }
    }
}

impl Executor for HuskExecutor {
    fn exec(&self, spec: &Spec) -> std::result::Result<(), ExecutorError> {
        self.late.load().map_err(ExecutorError::Other)?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use libcontainer::oci_spec::runtime::{
        LinuxBuilder, LinuxCapabilitiesBuilder, LinuxSeccompBuilder, LinuxSyscallBuilder,
        ProcessBuilder, SpecBuilder,
    };

    use super::*;

    fn spec(nnp: Option<bool>, action: LinuxSeccompAction) -> Spec {
        let caps: std::collections::HashSet<_> = [OciCapability::Chown].into_iter().collect();
        let mut process = ProcessBuilder::default()
            .args(vec!["true".to_string()])
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(caps.clone())
                    .effective(caps.clone())
                    .permitted(caps)
                    .build()
                    .expect("caps"),
            )
            .build()
            .expect("process");
        process.set_no_new_privileges(nnp);
        let seccomp = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![LinuxSyscallBuilder::default()
                .names(vec!["getcwd".to_string()])
                .action(action)
                .build()
                .expect("rule")])
            .build()
            .expect("seccomp");
        SpecBuilder::default()
            .process(process)
            .linux(
                LinuxBuilder::default()
                    .seccomp(seccomp)
                    .build()
                    .expect("linux"),
            )
            .build()
            .expect("spec")
    }

    fn has_sys_admin(spec: &Spec) -> (bool, bool, bool) {
        let caps = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().clone())
            .expect("caps");
        let has = |set: &Option<std::collections::HashSet<OciCapability>>| {
            set.as_ref()
                .is_some_and(|s| s.contains(&OciCapability::SysAdmin))
        };
        (
            has(caps.bounding()),
            has(caps.effective()),
            has(caps.permitted()),
        )
    }

    #[test]
    fn without_no_new_privs_sys_admin_is_kept_for_the_load_but_never_bounded() {
        let mut spec = spec(None, LinuxSeccompAction::ScmpActErrno);
        let late = LateSeccomp::take(&mut spec).expect("taken");
        assert!(spec.linux().as_ref().expect("linux").seccomp().is_none());
        assert!(late.filter.is_some() && late.drop_sys_admin.len() == 2);
        assert_eq!(has_sys_admin(&spec), (false, true, true));
    }

    #[test]
    fn with_no_new_privs_nothing_is_added() {
        let mut spec = spec(Some(true), LinuxSeccompAction::ScmpActErrno);
        let late = LateSeccomp::take(&mut spec).expect("taken");
        assert!(late.filter.is_some() && late.drop_sys_admin.is_empty());
        assert_eq!(has_sys_admin(&spec), (false, false, false));
    }

    #[test]
    fn user_notification_is_refused_by_name() {
        let mut spec = spec(None, LinuxSeccompAction::ScmpActNotify);
        let err = LateSeccomp::take(&mut spec).expect_err("refused");
        assert!(err.to_string().contains("SCMP_ACT_NOTIFY"), "{err}");
    }

    #[test]
    fn an_exec_inherits_the_containers_no_new_privs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut container = spec(None, LinuxSeccompAction::ScmpActErrno);
        LateSeccomp::take(&mut container)
            .expect("taken")
            .save(dir.path())
            .expect("saved");
        let fresh = || {
            spec(None, LinuxSeccompAction::ScmpActErrno)
                .process()
                .clone()
                .expect("p")
        };
        let mut process = fresh();
        let late = LateSeccomp::for_exec(dir.path(), &mut process, || Ok(true)).expect("exec");
        assert!(late.filter.is_some() && late.drop_sys_admin.is_empty());
        let mut process = fresh();
        let late = LateSeccomp::for_exec(dir.path(), &mut process, || Ok(false)).expect("exec");
        assert_eq!(late.drop_sys_admin.len(), 2);
        let empty = tempfile::tempdir().expect("tempdir");
        let late = LateSeccomp::for_exec(empty.path(), &mut fresh(), || {
            panic!("read without a filter")
        })
        .expect("exec");
        assert!(late.filter.is_none() && late.drop_sys_admin.is_empty());
    }
}
