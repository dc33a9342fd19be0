//! Booting a sandbox's VM: restored from a template where the
//! configuration asks for it and the sandbox fits one, cold otherwise.
//!
//! [`boot_vm`] decides. With `[snapshot] enabled` and the builtin backend,
//! the sandbox restores from the template of its key; the first sandbox of
//! a key makes the template first ([`make`]: a VM of its own, with
//! placeholder NICs where the key has NICs, booted until the guest says
//! ready, saved, stopped). A template that
//! cannot be made or restored costs one `warn` line naming it and why, is
//! removed, and this sandbox boots cold; for [`RETRY_FAILED_AFTER`] the
//! sandboxes of its key then boot cold without trying again (an `info`
//! line each), after which the next one makes it anew. Whatever fails
//! leaves no VM, thread or directory behind.

use std::time::{Duration, Instant};

use husk_vmm::machine::HostCheck;

use super::vm::{self, blocking, stage_ms, vm_ended, SandboxVm, BOOT_POLL};
use crate::agent_client::ReadyListener;
use crate::config::Config;
use crate::hypervisor::builtin::{self, Builtin};
use crate::hypervisor::{self, ConcreteBackend, Hypervisor, VmSpec};
use crate::network::placeholder;
use crate::sandbox_dir::SandboxDir;
use crate::template::{Template, TemplateKey, RETRY_FAILED_AFTER};

/// How long a restored guest's agent gets to answer: it was listening when
/// the template was saved, so this only bounds a broken restore (nested,
/// under QEMU's emulation on a loaded machine, restored agents answered
/// within about 2.2 s).
const RESTORE_AGENT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the template's guest gets, after its ready connection closed,
/// for the vsock device to deliver the host's close to it, so the saved
/// guest holds no half-closed connection.
const READY_CLOSE_SETTLE: Duration = Duration::from_millis(200);

/// Boots `spec`'s VM for a sandbox of `config` on `backend`: from a
/// template where that is configured and possible, else (and after any
/// failure of the template) cold.
pub async fn boot_vm(
    config: &Config,
    backend: ConcreteBackend,
    host: &HostCheck,
    spec: VmSpec,
    timeout: Duration,
) -> Result<SandboxVm, vm::Error> {
    if let Some(template) = template_for(config, backend, &spec) {
        match from_template(config, &template, spec.clone(), timeout).await {
            Ok(vm) => return Ok(vm),
            Err(Failure::Sandbox(e)) => return Err(e),
            Err(Failure::HeldBack(why)) => tracing::info!(
                template = %template.paths().dir.display(),
                "sandbox template not used: {why}; booting this sandbox cold"
            ),
            Err(Failure::Template { why, discard }) => {
                tracing::warn!(
                    template = %template.paths().dir.display(),
                    "sandbox template not used: {why}; booting this sandbox cold"
                );
                let t = template.clone();
                let forgotten = blocking(move || match discard {
                    Some(state) => t.discard(state, &why),
                    None => t.record_failure(&why).map(|()| false),
                })
                .await;
                match forgotten {
                    Ok(Ok(true)) => tracing::info!(
                        template = %template.paths().dir.display(),
                        "removed the template; a sandbox makes a new one {} s from now",
                        RETRY_FAILED_AFTER.as_secs()
                    ),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::warn!(
                        template = %template.paths().dir.display(),
                        "cannot remove the template or record its failure: {e}"
                    ),
                    Err(e) => tracing::warn!("cannot remove the template: {e}"),
                }
            }
        }
    }
    let hv = hypervisor::new_hypervisor(backend, &config.qemu, host);
    SandboxVm::boot(hv, spec, timeout).await
}

/// Why a sandbox did not come from its template.
enum Failure {
    /// The template is at fault (or could not be made): boot cold; remove
    /// it when `discard` says which saved state failed.
    Template {
        why: String,
        discard: Option<Option<crate::template::StateId>>,
    },
    /// This sandbox is at fault (its directory): a cold boot fails alike.
    Sandbox(vm::Error),
    /// The template failed a short while ago (see [`RETRY_FAILED_AFTER`]):
    /// boot cold without trying it.
    HeldBack(String),
}

/// The template `spec` would restore from, if snapshots are configured and
/// it fits one; logs why not where that is not the configuration's choice.
pub fn template_for(config: &Config, backend: ConcreteBackend, spec: &VmSpec) -> Option<Template> {
    if !config.snapshot.enabled {
        return None;
    }
    if backend != ConcreteBackend::Builtin {
        tracing::debug!("snapshots need the builtin backend; booting with {backend}");
        return None;
    }
    match TemplateKey::new(spec, &builtin::cmdline(spec)) {
        Ok(key) => Some(Template::new(&config.snapshot.path, key)),
        Err(e) => {
            // The cold boot names the missing kernel or initrd.
            tracing::debug!("no template key: {e}");
            None
        }
    }
}

/// Makes the template if it is missing, then restores `spec` from it.
async fn from_template(
    config: &Config,
    template: &Template,
    spec: VmSpec,
    timeout: Duration,
) -> Result<SandboxVm, Failure> {
    if !template.exists() {
        if let Some((why, age)) = template.recent_failure(RETRY_FAILED_AFTER) {
            return Err(Failure::HeldBack(format!(
                "it failed {} s ago ({why}); sandboxes try it again {} s after a failure",
                age.as_secs(),
                RETRY_FAILED_AFTER.as_secs()
            )));
        }
        let begun = Instant::now();
        let sandbox = SandboxDir::new(
            &config.sandbox_root,
            &format!("template-{}", template.hash()),
        )
        .map_err(|e| Failure::Template {
            why: e.to_string(),
            discard: None,
        })?;
        let made = make(
            template,
            VmSpec {
                sandbox,
                ..spec.clone()
            },
            timeout,
        )
        .await
        .map_err(|why| Failure::Template {
            why: format!("cannot make it: {why}"),
            discard: None,
        })?;
        if made {
            tracing::info!(
                stage = "template-made",
                ms = stage_ms(begun),
                template = %template.paths().dir.display(),
                "sandbox template made"
            );
        }
    }
    let state = template.state_id();
    SandboxVm::restore(spec, template.clone(), RESTORE_AGENT_TIMEOUT)
        .await
        .map_err(|e| {
            if e.is_template_failure() {
                Failure::Template {
                    why: format!("restoring it failed: {e}"),
                    discard: Some(state),
                }
            } else {
                Failure::Sandbox(e)
            }
        })
}

/// Makes `template` unless another sandbox made it meanwhile (returns
/// whether this call made it): under the template's exclusive lock, boots
/// `spec` (its own sandbox directory; its NICs' MTUs on placeholder taps,
/// see [`placeholder`]) cold until the guest says ready and has closed
/// that connection, pauses and saves it to a temporary directory, stops
/// it, removes its sandbox directory and renames the template into place.
/// The placeholder taps and their namespace go with the stopped VM.
pub async fn make(template: &Template, spec: VmSpec, timeout: Duration) -> Result<bool, String> {
    let t = template.clone();
    let lock = blocking(move || t.lock(true))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("locking it: {e}"))?;
    if template.exists() {
        return Ok(false);
    }
    template
        .remove_unfinished()
        .map_err(|e| format!("removing an unfinished template: {e}"))?;
    let dir = spec.sandbox.clone();
    // A maker killed half way left its directory (and nothing running:
    // the VM was in its process).
    super::remove_leftover(dir.path());
    let mtus: Vec<u16> = spec.nics.iter().map(|n| n.config.mtu).collect();
    let nics = blocking(move || placeholder::nics(&mtus))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    dir.create().map_err(|e| e.to_string())?;
    let made = boot_and_save(template, VmSpec { nics, ..spec }, timeout).await;
    let _ = dir.remove();
    if let Err(e) = made {
        let _ = template.remove_unfinished();
        return Err(e);
    }
    if let Err(e) = template.publish() {
        let _ = template.remove_unfinished();
        return Err(format!("moving it into place: {e}"));
    }
    drop(lock);
    Ok(true)
}

/// The template VM's life: boot, ready, save, stop. The VM is stopped (its
/// threads joined) whatever happens.
async fn boot_and_save(template: &Template, spec: VmSpec, timeout: Duration) -> Result<(), String> {
    let ready = ReadyListener::bind(&spec.sandbox.vsock_socket()).map_err(|e| e.to_string())?;
    let console = spec.sandbox.clone();
    let mut builtin = Builtin::new();
    let (mut builtin, started) = blocking(move || {
        let r = builtin.start(&spec);
        (builtin, r)
    })
    .await
    .map_err(|e| e.to_string())?;
    if let Err(e) = started {
        return Err(format!("booting its VM: {e}"));
    }
    let said = tokio::select! {
        r = ready.wait_closed(timeout) => r.map_err(|e| e.to_string()),
        exit = vm_ended(&mut builtin, BOOT_POLL) => Err(format!(
            "its VM ended during boot ({exit}); the guest console ends with:\n{}",
            console.console_tail()
        )),
    };
    drop(ready);
    let saved = match said {
        Ok(()) => {
            tokio::time::sleep(READY_CLOSE_SETTLE).await;
            let paths = template.making_paths();
            let key = template.key().as_str().to_owned();
            let saving = Instant::now();
            let (b, r) = blocking(move || {
                let r = builtin.snapshot(&paths, &key);
                (builtin, r)
            })
            .await
            .map_err(|e| e.to_string())?;
            builtin = b;
            tracing::info!(
                stage = "template-saved",
                ms = stage_ms(saving),
                "template VM saved"
            );
            r.map_err(|e| format!("saving its VM: {e}"))
        }
        Err(e) => Err(e),
    };
    let _ = blocking(move || builtin.stop(Duration::ZERO)).await;
    saved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::test_support;

    fn config(enabled: bool, root: &std::path::Path) -> Config {
        let mut c = Config::default();
        c.snapshot.enabled = enabled;
        c.snapshot.path = root.join("snapshots");
        c
    }

    #[test]
    fn only_the_builtin_backend_and_enabled_uses_a_template_with_or_without_nics() {
        let dir = tempfile::tempdir().unwrap();
        let spec = test_support::spec(dir.path());
        std::fs::write(&spec.kernel, b"k").unwrap();
        std::fs::write(&spec.initrd, b"i").unwrap();
        let on = config(true, dir.path());
        let t = template_for(&on, ConcreteBackend::Builtin, &spec).expect("a template");
        assert!(t.paths().dir.starts_with(dir.path().join("snapshots")));
        assert!(t.key().as_str().contains(&builtin::cmdline(&spec)));
        assert!(
            template_for(&config(false, dir.path()), ConcreteBackend::Builtin, &spec).is_none()
        );
        assert!(template_for(&on, ConcreteBackend::Qemu, &spec).is_none());
        let mut no_kernel = spec.clone();
        no_kernel.kernel = dir.path().join("absent");
        assert!(template_for(&on, ConcreteBackend::Builtin, &no_kernel).is_none());
        if let Some(nic) = test_support::nic(2, 1500) {
            let mut with_nic = spec.clone();
            with_nic.nics.push(nic);
            let t = template_for(&on, ConcreteBackend::Builtin, &with_nic).expect("a template");
            assert!(t.key().as_str().contains("nics 1\n"), "{:?}", t.key());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_template_that_cannot_be_made_leaves_nothing_and_the_boot_goes_cold() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = test_support::spec(dir.path());
        // Not a kernel: the template VM is refused before any vCPU exists.
        std::fs::write(&spec.kernel, b"not a kernel").unwrap();
        std::fs::write(&spec.initrd, b"i").unwrap();
        let mut c = config(true, dir.path());
        c.sandbox_root = dir.path().join("vm");
        spec.sandbox = SandboxDir::new(&c.sandbox_root, "sb").unwrap();
        let template = template_for(&c, ConcreteBackend::Builtin, &spec).unwrap();
        let host = HostCheck::run();
        let err = match boot_vm(
            &c,
            ConcreteBackend::Builtin,
            &host,
            spec,
            Duration::from_secs(5),
        )
        .await
        {
            Err(e) => e,
            Ok(_) => panic!("booted a VM without a kernel"),
        };
        // The cold boot's own error, after the template's failure.
        assert!(err.to_string().contains("kernel"), "{err}");
        assert!(!template.exists());
        assert!(!template.making_paths().dir.exists());
        let left: Vec<_> = std::fs::read_dir(&c.sandbox_root)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{left:?}");

        // The next sandbox of the key does not try to make it again.
        let (why, _) = template
            .recent_failure(RETRY_FAILED_AFTER)
            .expect("the failure is recorded");
        assert!(why.contains("cannot make it"), "{why}");
        let spec = VmSpec {
            sandbox: SandboxDir::new(&c.sandbox_root, "sb2").unwrap(),
            ..test_support::spec(dir.path())
        };
        match from_template(&c, &template, spec, Duration::from_secs(5)).await {
            Err(Failure::HeldBack(why)) => assert!(why.contains("cannot make it"), "{why}"),
            Err(Failure::Template { why, .. }) => panic!("tried again: {why}"),
            Err(Failure::Sandbox(e)) => panic!("{e}"),
            Ok(_) => panic!("booted a VM without a kernel"),
        }
    }
}
