//! OCI hooks, run on the host with the state document on stdin.
//!
//! prestart and createRuntime run during `create`, before the VM boots, so
//! that what they set up (the sandbox's network namespace, for one) is in
//! place when it starts; poststart after `start`; poststop in `delete`.
//! startContainer hooks are the guest's: their path resolves in the
//! container's namespaces (runtime spec, config.md "startContainer"),
//! which are inside the VM, so they go to the agent with the container's
//! spec and run there, right before the workload's exec. createContainer
//! hooks resolve their path on the host but must run in the container's
//! namespaces: no process can be in both across a VM boundary, so husk
//! refuses specs that have them rather than run them in the wrong place.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use super::state::State;

/// Errors running a hook.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hook could not be started.
    #[error("{kind} hook {path}: {source}")]
    Spawn {
        /// Which hook list.
        kind: &'static str,
        /// The hook's program.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The hook exited unsuccessfully.
    #[error("{kind} hook {path} failed ({status}): {stderr}")]
    Failed {
        /// Which hook list.
        kind: &'static str,
        /// The hook's program.
        path: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// The hook ran past its timeout and was killed.
    #[error("{kind} hook {path} timed out after {secs} s")]
    Timeout {
        /// Which hook list.
        kind: &'static str,
        /// The hook's program.
        path: String,
        /// The timeout.
        secs: i64,
    },
}

/// Refuses a spec with createContainer hooks, naming them.
pub fn refuse_create_container(spec: &oci_spec::runtime::Spec) -> anyhow::Result<()> {
    let has_them = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.create_container().as_ref())
        .is_some_and(|v| !v.is_empty());
    if has_them {
        anyhow::bail!(
            "hooks.createContainer: their programs resolve on the host but must run in the container's namespaces, inside the VM: not supported"
        );
    }
    Ok(())
}

/// Runs `hooks` of list `kind` in order with `state` on stdin; stops at the
/// first failure.
pub fn run(kind: &'static str, hooks: Option<&Vec<Hook>>, state: &State) -> Result<(), Error> {
    let Some(hooks) = hooks else {
        return Ok(());
    };
    let stdin = serde_json::to_vec(state).unwrap_or_default();
    for hook in hooks {
        run_one(kind, hook, &stdin)?;
    }
    Ok(())
}

/// Runs every one of `hooks` and only logs failures as warnings: the OCI
/// spec has the remaining poststart and poststop hooks, and the lifecycle,
/// go on as if a failed one had succeeded.
pub fn run_logged(kind: &'static str, hooks: Option<&Vec<Hook>>, state: &State) {
    let stdin = serde_json::to_vec(state).unwrap_or_default();
    for hook in hooks.into_iter().flatten() {
        if let Err(e) = run_one(kind, hook, &stdin) {
            tracing::warn!(container = %state.id, "{e}");
        }
    }
}

fn run_one(kind: &'static str, hook: &Hook, stdin: &[u8]) -> Result<(), Error> {
    let path = hook.path().display().to_string();
    let mut command = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((argv0, rest)) = args.split_first() {
            command.arg0(argv0).args(rest);
        }
    }
    command.env_clear();
    for pair in hook.env().iter().flatten() {
        if let Some((key, value)) = pair.split_once('=') {
            command.env(key, value);
        }
    }
    let stderr_file = tempfile::tempfile().map_err(|source| Error::Spawn {
        kind,
        path: path.clone(),
        source,
    })?;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(stderr_file.try_clone().map_err(|source| Error::Spawn {
            kind,
            path: path.clone(),
            source,
        })?)
        .spawn()
        .map_err(|source| Error::Spawn {
            kind,
            path: path.clone(),
            source,
        })?;
    if let Some(mut pipe) = child.stdin.take() {
        // A hook that ignores its stdin may close it early: not an error.
        let _ = pipe.write_all(stdin);
    }
    let timeout = hook.timeout().filter(|t| *t > 0);
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t.unsigned_abs()));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => return Err(Error::Spawn { kind, path, source }),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Timeout {
                kind,
                path,
                secs: timeout.unwrap_or_default(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    Err(Error::Failed {
        kind,
        path,
        status: status.to_string(),
        stderr: tail(stderr_file),
    })
}

/// The last line-ish of a hook's stderr, for the error message.
fn tail(mut file: std::fs::File) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 512;
    let len = file.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX)));
    let mut text = String::new();
    let _ = file.take(MAX).read_to_string(&mut text);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::state::Status;
    use oci_spec::runtime::HookBuilder;

    fn state() -> State {
        State {
            oci_version: "1.2.0".into(),
            id: "hooked".into(),
            status: Status::Creating,
            pid: 42,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: String::new(),
            owner: "root".into(),
            annotations: Default::default(),
        }
    }

    fn sh(script: &str, timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".into(), "-c".into(), script.into()])
            .env(vec!["HOOKVAR=v1".into()]);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    #[test]
    fn hooks_get_the_state_on_stdin_their_env_and_args() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let hook = sh(
            &format!("cat > {0}; echo \" $HOOKVAR $0\" >> {0}", out.display()),
            None,
        );
        run("prestart", Some(&vec![hook]), &state()).unwrap();
        let text = std::fs::read_to_string(out).unwrap();
        let (json, rest) = text.split_once(" ").unwrap();
        let parsed: State = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, state());
        assert_eq!(rest.trim(), "v1 sh");
    }

    #[test]
    fn a_failing_hook_names_itself_and_its_stderr_and_stops_the_list() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("ran");
        let hooks = vec![
            sh("echo broken network >&2; exit 7", None),
            sh(&format!("touch {}", marker.display()), None),
        ];
        let err = run("createRuntime", Some(&hooks), &state())
            .unwrap_err()
            .to_string();
        assert!(err.contains("createRuntime hook /bin/sh failed"), "{err}");
        assert!(err.contains("broken network"), "{err}");
        assert!(!marker.exists());
    }

    #[test]
    fn logged_hooks_all_run_past_a_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("ran");
        let hooks = vec![
            sh("exit 7", None),
            sh(&format!("touch {}", marker.display()), None),
        ];
        run_logged("poststop", Some(&hooks), &state());
        assert!(marker.exists());
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed() {
        let started = Instant::now();
        let err = run("prestart", Some(&vec![sh("sleep 30", Some(1))]), &state()).unwrap_err();
        assert!(matches!(err, Error::Timeout { secs: 1, .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn a_missing_hook_program_is_named() {
        let hook = HookBuilder::default()
            .path("/nonexistent/hook")
            .build()
            .unwrap();
        let err = run("poststop", Some(&vec![hook]), &state())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/hook"), "{err}");
    }
}
