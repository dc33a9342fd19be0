//! Run state shared by the VM handle and its vCPU threads: pause, resume,
//! stop, and why the VM ended.

use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Why a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine through the i8042 (`reboot=k`, the default).
    I8042Reset,
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`; Linux `reboot=t`).
    TripleFault {
        /// The vCPU.
        vcpu: u32,
    },
    /// KVM reported a system event (PSCI-style shutdown, reset or crash).
    SystemEvent {
        /// The vCPU.
        vcpu: u32,
        /// `KVM_SYSTEM_EVENT_*`.
        kind: u32,
    },
    /// The host stopped the VM.
    Stopped,
    /// A vCPU could not continue (emulation failure, failed entry, ioctl error).
    VcpuError {
        /// The vCPU.
        vcpu: u32,
        /// What happened.
        message: String,
    },
}

/// What the vCPU threads should be doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Running,
    Paused,
    Exiting,
}

/// A vCPU thread as far as kicking it is concerned.
#[derive(Clone, Copy)]
enum Thread {
    NotStarted,
    Running(libc::pthread_t),
    Exited,
}

struct State {
    mode: Mode,
    exit: Option<ExitReason>,
    /// The vCPU threads.
    threads: Vec<Thread>,
    parked: usize,
}

/// Shared between the VM handle, its vCPU threads and the reset device.
pub struct Control {
    state: Mutex<State>,
    changed: Condvar,
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process, so the signal
/// interrupts `KVM_RUN` with EINTR instead of killing the process.
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), noop_handler)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// How often kicks are repeated: a kick that lands just before a thread
/// enters `KVM_RUN` is lost, the next one is not.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

impl Control {
    /// Control for `vcpus` threads, running.
    pub fn new(vcpus: usize) -> Self {
        Self {
            state: Mutex::new(State {
                mode: Mode::Running,
                exit: None,
                threads: vec![Thread::NotStarted; vcpus],
                parked: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `thread` as vCPU `index`'s; called by the spawner, so a
    /// thread is known before it can be waited for.
    pub fn vcpu_started(&self, index: usize, thread: libc::pthread_t) {
        let mut state = self.lock();
        if let Some(slot @ Thread::NotStarted) = state.threads.get_mut(index) {
            *slot = Thread::Running(thread);
        }
    }

    /// Marks vCPU `index` as gone; it is never kicked again.
    pub fn vcpu_exited(&self, index: usize) {
        let mut state = self.lock();
        if let Some(slot) = state.threads.get_mut(index) {
            *slot = Thread::Exited;
        }
        self.changed.notify_all();
    }

    /// Ends the VM for `reason` unless it already ended; the first reason wins.
    pub fn request_exit(&self, reason: ExitReason) {
        let mut state = self.lock();
        if state.exit.is_none() {
            state.exit = Some(reason);
        }
        state.mode = Mode::Exiting;
        Self::kick_all(&state);
        self.changed.notify_all();
    }

    fn kick_all(state: &State) {
        for thread in &state.threads {
            if let Thread::Running(thread) = thread {
                // SAFETY: a thread marked running has not been joined
                // (joining happens only after it marked itself exited).
                unsafe { libc::pthread_kill(*thread, kick_signal()) };
            }
        }
    }

    /// Called by a vCPU thread between runs: parks while paused; false when
    /// the thread must leave its loop.
    pub fn vcpu_may_run(&self) -> bool {
        let mut state = self.lock();
        loop {
            match state.mode {
                Mode::Running => return true,
                Mode::Exiting => return false,
                Mode::Paused => {
                    state.parked += 1;
                    self.changed.notify_all();
                    while state.mode == Mode::Paused {
                        state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                    }
                    state.parked -= 1;
                }
            }
        }
    }

    /// Stops every vCPU and returns once all are parked; false if the VM
    /// ended instead.
    pub fn pause(&self) -> bool {
        let mut state = self.lock();
        if state.mode != Mode::Running {
            return state.mode == Mode::Paused;
        }
        state.mode = Mode::Paused;
        loop {
            let live = state
                .threads
                .iter()
                .filter(|t| matches!(t, Thread::Running(_)))
                .count();
            if state.mode != Mode::Paused {
                return false;
            }
            if state.parked >= live {
                return true;
            }
            Self::kick_all(&state);
            state = self
                .changed
                .wait_timeout(state, KICK_INTERVAL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets paused vCPUs run again; false if the VM is not paused.
    pub fn resume(&self) -> bool {
        let mut state = self.lock();
        if state.mode != Mode::Paused {
            return false;
        }
        state.mode = Mode::Running;
        self.changed.notify_all();
        true
    }

    /// Whether the vCPUs are parked by [`pause`](Self::pause).
    pub fn is_paused(&self) -> bool {
        self.lock().mode == Mode::Paused
    }

    /// Why the VM ended, if it did.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.lock().exit.clone()
    }

    /// Waits until the VM ends and every vCPU thread left its loop, or the
    /// deadline passes; returns the exit reason if it ended.
    pub fn wait_exited(&self, deadline: Option<Instant>) -> Option<ExitReason> {
        let mut state = self.lock();
        loop {
            if state.mode == Mode::Exiting
                && state
                    .threads
                    .iter()
                    .all(|t| !matches!(t, Thread::Running(_)))
            {
                return state.exit.clone();
            }
            if state.mode == Mode::Exiting {
                Self::kick_all(&state);
            }
            let mut timeout = KICK_INTERVAL;
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                timeout = timeout.min(left);
            }
            state = self
                .changed
                .wait_timeout(state, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
