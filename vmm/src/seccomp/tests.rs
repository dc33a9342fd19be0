//! The filters compile, allow what their threads do and kill the process on anything else.
//!
//! Each case forks: a kill takes the whole (child) process, and the test process survives to
//! read its wait status.

use super::*;

/// How a forked child ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Exited(i32),
    Signaled(i32),
}

/// Runs `body` on a thread of a forked child that installed `kind`'s filter first; the child
/// exits 0 once the thread ends, so only the filter can make it end otherwise.
fn in_filtered_thread(kind: ThreadKind, body: fn()) -> Ended {
    // Compiled here, so the child only installs.
    prepare().expect("filters compile");
    // SAFETY: the child only starts a thread, makes syscalls and leaves with `_exit`; glibc's
    // allocator is usable after fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = match std::thread::spawn(move || {
            apply(kind).expect("filter installs");
            body();
        })
        .join()
        {
            Ok(()) => 0,
            Err(_) => 3,
        };
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid);
    if libc::WIFSIGNALED(status) {
        Ended::Signaled(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    }
}

#[test]
fn every_filter_compiles_with_the_common_list() {
    for kind in ThreadKind::ALL {
        let prog = compile(kind).unwrap_or_else(|e| panic!("{e}"));
        assert!(!prog.is_empty(), "{kind:?}");
    }
    prepare().unwrap();
}

#[test]
fn a_filtered_thread_lives_and_ends_normally() {
    // Logging, locking, allocating, a clock read and a normal thread exit.
    for kind in ThreadKind::ALL {
        let ended = in_filtered_thread(kind, || {
            let lock = std::sync::Mutex::new(vec![0u8; 1 << 20]);
            lock.lock().unwrap().push(1);
            let _ = std::time::SystemTime::now();
            eprintln!("filtered thread alive");
        });
        assert_eq!(ended, Ended::Exited(0), "{kind:?}");
    }
}

#[test]
fn socket_from_a_vcpu_thread_kills_the_process() {
    let ended = in_filtered_thread(ThreadKind::Vcpu, || {
        // SAFETY: plain syscall; the filter ends the process before it returns.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    });
    assert_eq!(ended, Ended::Signaled(libc::SIGSYS));
}

#[test]
fn execve_kills_the_process_from_every_kind_of_thread() {
    for kind in ThreadKind::ALL {
        let ended = in_filtered_thread(kind, || {
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            // SAFETY: valid NUL-terminated path and argv; the filter ends the process first.
            unsafe { libc::execv(c"/bin/true".as_ptr(), argv.as_ptr()) };
        });
        assert_eq!(ended, Ended::Signaled(libc::SIGSYS), "{kind:?}");
    }
}

#[test]
fn a_vcpu_thread_may_only_issue_the_ioctls_on_its_list() {
    let ended = in_filtered_thread(ThreadKind::Vcpu, || {
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize; the filter ends the process first.
        unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut size) };
    });
    assert_eq!(ended, Ended::Signaled(libc::SIGSYS));
    // KVM_RUN on a non-KVM fd passes the filter and fails in the kernel.
    let ended = in_filtered_thread(ThreadKind::Vcpu, || {
        // SAFETY: an ioctl on an invalid fd only returns EBADF.
        let rc = unsafe { libc::ioctl(-1, 0xAE80, 0) };
        assert_eq!(rc, -1);
    });
    assert_eq!(ended, Ended::Exited(0));
}

#[test]
fn the_vsock_worker_may_open_unix_sockets_only() {
    let ended = in_filtered_thread(ThreadKind::Vsock, || {
        // SAFETY: plain syscalls on fds this closure owns.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            libc::close(fd);
        }
    });
    assert_eq!(ended, Ended::Exited(0));
    let ended = in_filtered_thread(ThreadKind::Vsock, || {
        // SAFETY: plain syscall; the filter ends the process first.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    });
    assert_eq!(ended, Ended::Signaled(libc::SIGSYS));
}

#[test]
fn the_fs_worker_cannot_leave_its_chroot_or_open_sockets() {
    for body in [
        (|| {
            // SAFETY: plain syscall; the filter ends the process first.
            unsafe { libc::chroot(c"/".as_ptr()) };
        }) as fn(),
        || {
            // SAFETY: as above.
            unsafe { libc::unshare(libc::CLONE_FS) };
        },
        || {
            // SAFETY: as above.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        },
    ] {
        assert_eq!(
            in_filtered_thread(ThreadKind::Fs, body),
            Ended::Signaled(libc::SIGSYS)
        );
    }
}

#[test]
fn a_thread_started_through_the_spawner_escapes_the_vcpu_filter() {
    prepare().unwrap();
    // SAFETY: as in `in_filtered_thread`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // The parent's spawner thread does not exist in the child: start one here.
        let spawner = std::sync::Arc::new(spawner::Spawner::start().expect("spawner"));
        let vcpu = std::thread::spawn(move || {
            apply(ThreadKind::Vcpu).expect("filter installs");
            let worker = spawner
                .spawn("worker".into(), || {
                    // Forbidden on the vCPU thread, allowed to an unfiltered worker.
                    // SAFETY: plain syscalls on an fd this closure owns.
                    unsafe {
                        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                        assert!(fd >= 0);
                        libc::close(fd);
                    }
                })
                .expect("spawned");
            worker.join().is_ok()
        });
        let code = if vcpu.join().unwrap_or(false) { 0 } else { 3 };
        // SAFETY: ends the child without the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
}

#[test]
fn a_vcpu_thread_cannot_start_threads_itself() {
    let ended = in_filtered_thread(ThreadKind::Vcpu, || {
        let _ = std::thread::spawn(|| {});
    });
    assert_eq!(ended, Ended::Signaled(libc::SIGSYS));
}
