//! Per-thread seccomp filters for the VMM's and the vhost-user backends' threads.
//!
//! Each kind of thread ([`ThreadKind`]) has its own allow-list, kept as data in
//! `filters/<kind>.json` (seccompiler's JSON format, as Firecracker does) and merged with
//! `filters/common.json` (what every Rust thread needs: memory, futexes, logging, exiting).
//! The lists are compiled once per process with `seccompiler` and installed by the thread
//! itself, before it reads anything the guest (or the vhost-user frontend) controls.
//!
//! Anything outside the list kills the whole process (`SECCOMP_RET_KILL_PROCESS`, logged by
//! the kernel as an audit record with the syscall number): a thread that tries a syscall it
//! never makes in normal operation is compromised or broken, and the VM must not go on.
//!
//! Threads the VMM starts after the vCPUs run (the device workers, on the driver's
//! `DRIVER_OK`) are started by [`spawner`], a thread without a filter created before the
//! vCPUs: a thread inherits its parent's filters, and a worker started by a vCPU thread
//! would otherwise be limited to the vCPU's list too.
//!
//! [`set_enabled`]`(false)` turns filters off for the whole process (debugging only).

pub mod spawner;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use seccompiler::BpfProgram;

/// The kinds of threads that run under a filter, one allow-list each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// A vCPU thread of the builtin VMM (`husk-vcpuN`): `KVM_RUN` and device exits.
    Vcpu,
    /// The virtio-net worker (builtin `husk-net`, or a vhost-user net worker).
    Net,
    /// The virtio-vsock worker (builtin `husk-vsock`, or a vhost-user vsock worker).
    Vsock,
    /// The virtio-fs worker (builtin `husk-fs`, or a vhost-user fs worker), once confined to
    /// its share.
    Fs,
    /// The vhost-user-net control relay (`vu-net-relay`).
    NetRelay,
    /// A vhost-user session (`vu-<name>`) and the request handler thread it starts.
    VhostUser,
}

impl ThreadKind {
    /// Every kind, for compiling and testing all filters.
    pub const ALL: [ThreadKind; 6] = [
        ThreadKind::Vcpu,
        ThreadKind::Net,
        ThreadKind::Vsock,
        ThreadKind::Fs,
        ThreadKind::NetRelay,
        ThreadKind::VhostUser,
    ];

    /// The filter's name: its key in its JSON file.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Net => "virtio_net",
            ThreadKind::Vsock => "virtio_vsock",
            ThreadKind::Fs => "virtio_fs",
            ThreadKind::NetRelay => "net_relay",
            ThreadKind::VhostUser => "vhost_user",
        }
    }

    fn json(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => include_str!("filters/vcpu.json"),
            ThreadKind::Net => include_str!("filters/virtio_net.json"),
            ThreadKind::Vsock => include_str!("filters/virtio_vsock.json"),
            ThreadKind::Fs => include_str!("filters/virtio_fs.json"),
            ThreadKind::NetRelay => include_str!("filters/net_relay.json"),
            ThreadKind::VhostUser => include_str!("filters/vhost_user.json"),
        }
    }
}

/// The syscalls every filtered thread needs, merged into each kind's list.
const COMMON: &str = include_str!("filters/common.json");

/// Errors compiling or installing a filter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A filter's JSON is malformed or names an unknown syscall (a build defect).
    #[error("seccomp filter {kind}: {message}")]
    Compile {
        /// The filter.
        kind: &'static str,
        /// What seccompiler or the merge said.
        message: String,
    },
    /// The kernel refused the filter.
    #[error("cannot install seccomp filter {kind}: {message}")]
    Install {
        /// The filter.
        kind: &'static str,
        /// What the kernel said.
        message: String,
    },
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the filters on or off for every thread started afterwards in this process.
/// On by default; off is for debugging a thread that gets killed.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::SeqCst);
}

/// Whether threads install their filters.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

type Compiled = Result<HashMap<ThreadKind, BpfProgram>, Error>;

/// Compiles every filter (once per process) so a defect shows at VM start, not in a thread,
/// and fixes the allocator's arena limit (see [`fix_arena_limit`]). Call it before starting
/// filtered threads.
pub fn prepare() -> Result<(), Error> {
    fix_arena_limit();
    compiled().as_ref().map(|_| ()).map_err(Clone::clone)
}

/// Sets glibc's malloc arena limit to its own default (8 per CPU) up front.
///
/// Without it glibc computes the limit lazily, the first time a thread needs a ninth arena, by
/// reading `/sys/devices/system/cpu/online`: whichever thread that is, if it runs under a filter
/// (which allows no `openat`), the process is killed.
fn fix_arena_limit() {
    #[cfg(target_env = "gnu")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let limit = libc::c_int::try_from(cpus.saturating_mul(8)).unwrap_or(libc::c_int::MAX);
            // SAFETY: mallopt only sets an allocator parameter.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, limit) };
        });
    }
}

fn compiled() -> &'static Compiled {
    static FILTERS: OnceLock<Compiled> = OnceLock::new();
    FILTERS.get_or_init(|| {
        ThreadKind::ALL
            .iter()
            .map(|&kind| compile(kind).map(|prog| (kind, prog)))
            .collect()
    })
}

/// Compiles `kind`'s list merged with the common one.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, Error> {
    let fail = |message: String| Error::Compile {
        kind: kind.name(),
        message,
    };
    let mut doc: serde_json::Value =
        serde_json::from_str(kind.json()).map_err(|e| fail(e.to_string()))?;
    let common: serde_json::Value =
        serde_json::from_str(COMMON).map_err(|e| fail(format!("common: {e}")))?;
    let extra = common
        .get("common")
        .and_then(|c| c.get("filter"))
        .and_then(|f| f.as_array())
        .ok_or_else(|| fail("common.json has no common.filter list".into()))?
        .clone();
    if doc.as_object().map(|o| o.len()) != Some(1) {
        return Err(fail("the file must hold exactly one filter".into()));
    }
    let rules = doc
        .get_mut(kind.name())
        .and_then(|f| f.get_mut("filter"))
        .and_then(|f| f.as_array_mut())
        .ok_or_else(|| fail(format!("no {}.filter list", kind.name())))?;
    rules.extend(extra);
    let text = doc.to_string();
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| fail(e.to_string()))?;
    let mut map =
        seccompiler::compile_from_json(text.as_bytes(), arch).map_err(|e| fail(e.to_string()))?;
    map.remove(kind.name())
        .ok_or_else(|| fail("filter missing after compilation".into()))
}

/// Installs `kind`'s filter on the calling thread (and `no_new_privs`, which seccomp needs
/// without `CAP_SYS_ADMIN`). Threads it starts afterwards inherit the filter. Does nothing
/// when filters are off.
pub fn apply(kind: ThreadKind) -> Result<(), Error> {
    if !enabled() {
        return Ok(());
    }
    fix_arena_limit();
    let prog = compiled()
        .as_ref()
        .map_err(Clone::clone)?
        .get(&kind)
        .ok_or_else(|| Error::Compile {
            kind: kind.name(),
            message: "not compiled".into(),
        })?;
    seccompiler::apply_filter(prog).map_err(|e| Error::Install {
        kind: kind.name(),
        message: e.to_string(),
    })?;
    tracing::debug!(filter = kind.name(), "seccomp filter installed");
    Ok(())
}

thread_local! {
    static APPLIED: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// [`apply`] on a thread the VMM did not start itself (a vhost-user worker thread of
/// `vhost-user-backend`): installs `kind`'s filter on the first call on this thread, and
/// nothing after. Call it before handling anything from the frontend.
pub fn apply_once(kind: ThreadKind) -> Result<(), Error> {
    match APPLIED.with(Cell::get) {
        Some(applied) if applied == kind => Ok(()),
        Some(other) => Err(Error::Install {
            kind: kind.name(),
            message: format!("thread already runs under {}", other.name()),
        }),
        None => {
            apply(kind)?;
            APPLIED.with(|a| a.set(Some(kind)));
            Ok(())
        }
    }
}

/// Runs `f` on a thread under the vCPU filter, as the builtin VMM runs a
/// device's activation and reset (on the vCPU that wrote the status
/// register). A call outside the list kills the test process.
#[cfg(test)]
pub(crate) fn on_vcpu_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    spawner::init().expect("spawner");
    std::thread::scope(|s| {
        s.spawn(|| {
            apply(ThreadKind::Vcpu).expect("vCPU filter");
            f()
        })
        .join()
        .expect("vCPU-kind thread")
    })
}

#[cfg(test)]
mod tests;
