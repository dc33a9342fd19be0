//! Escape attempts: every way a guest could name a host path outside the share.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{SetattrIn, SetattrValid};
use fuse_backend_rs::api::filesystem::ROOT_ID;

use super::harness::{file_type, Fuse, Guest};
use crate::devices::fs::{FsConfig, FsDevice, FsError};

const SECRET: &[u8] = b"TOP SECRET host bytes";

/// A share and, next to it, a directory the guest must never reach.
struct Layout {
    _top: tempfile::TempDir,
    share: std::path::PathBuf,
    outside: std::path::PathBuf,
}

impl Layout {
    fn new() -> Self {
        let top = tempfile::tempdir().unwrap();
        let share = top.path().join("shared");
        let outside = top.path().join("outside");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let secret = outside.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        Layout {
            _top: top,
            share,
            outside,
        }
    }

    fn secret(&self) -> std::path::PathBuf {
        self.outside.join("secret")
    }

    fn assert_secret_untouched(&self) {
        let md = std::fs::metadata(self.secret()).unwrap();
        assert_eq!(std::fs::read(self.secret()).unwrap(), SECRET);
        assert_eq!(md.permissions().mode() & 0o7777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"], "nothing created outside the share");
    }
}

#[test]
fn dot_and_dotdot_lookups_are_refused() {
    let l = Layout::new();
    std::fs::create_dir(l.share.join("sub")).unwrap();
    let mut fuse = Fuse::new(&l.share);
    assert_eq!(fuse.lookup(ROOT_ID, b"..").unwrap_err(), libc::EINVAL);
    assert_eq!(fuse.lookup(ROOT_ID, b".").unwrap_err(), libc::EINVAL);
    let sub = fuse.lookup(ROOT_ID, b"sub").unwrap();
    assert_eq!(fuse.lookup(sub.nodeid, b"..").unwrap_err(), libc::EINVAL);
    assert_eq!(fuse.lookup(ROOT_ID, b"").unwrap_err(), libc::EINVAL);
}

#[test]
fn names_with_a_slash_are_refused_everywhere() {
    let l = Layout::new();
    std::fs::write(l.share.join("inside"), b"i").unwrap();
    let mut fuse = Fuse::new(&l.share);
    let escape = b"../outside/secret";
    assert_eq!(fuse.lookup(ROOT_ID, escape).unwrap_err(), libc::EINVAL);
    assert_eq!(fuse.lookup(ROOT_ID, b"/etc").unwrap_err(), libc::EINVAL);
    assert_eq!(fuse.lookup(ROOT_ID, b"./inside").unwrap_err(), libc::EINVAL);
    let created = fuse.create(
        ROOT_ID,
        b"../outside/new",
        0o644 | libc::S_IFREG,
        libc::O_RDWR,
    );
    assert_eq!(created.unwrap_err(), libc::EINVAL);
    assert_eq!(
        fuse.mkdir(ROOT_ID, b"../outside/d", 0o755).unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(
        fuse.symlink(ROOT_ID, b"../outside/l", b"x").unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(
        fuse.mknod(ROOT_ID, b"../outside/f", libc::S_IFIFO | 0o600, 0)
            .unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(
        fuse.rename(ROOT_ID, b"inside", ROOT_ID, b"../outside/moved")
            .unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(
        fuse.rename(ROOT_ID, b"../outside/secret", ROOT_ID, b"stolen")
            .unwrap_err(),
        libc::EINVAL
    );
    let long = vec![b'n'; 256];
    assert_eq!(fuse.lookup(ROOT_ID, &long).unwrap_err(), libc::ENAMETOOLONG);
    l.assert_secret_untouched();
    assert!(l.share.join("inside").exists());
}

#[test]
fn symlink_to_etc_is_never_followed() {
    let l = Layout::new();
    std::os::unix::fs::symlink("/etc", l.share.join("etc")).unwrap();
    let mut fuse = Fuse::new(&l.share);
    let link = fuse.lookup(ROOT_ID, b"etc").unwrap();
    assert_eq!(file_type(link.attr.mode), libc::S_IFLNK);
    assert_eq!(fuse.readlink(link.nodeid).unwrap(), b"/etc");
    assert_eq!(
        fuse.lookup(link.nodeid, b"passwd").unwrap_err(),
        libc::ENOTDIR
    );
    assert!(fuse.open(link.nodeid, libc::O_RDONLY).is_err());
    assert!(fuse.opendir(link.nodeid).is_err());
    // Even a forged READ on the link's inode with a made-up handle gets nothing.
    assert!(fuse.read(link.nodeid, 1, 0, 4096).is_err());
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let mem = fuse.guest.read_mem(0, super::harness::MEM_SIZE as usize);
    assert!(
        !mem.windows(passwd.len().min(32))
            .any(|w| w == &passwd[..passwd.len().min(32)]),
        "/etc/passwd bytes reached guest memory"
    );
}

#[test]
fn absolute_symlink_to_a_host_file_is_never_followed() {
    let l = Layout::new();
    let target = l.secret();
    std::os::unix::fs::symlink(&target, l.share.join("s")).unwrap();
    let mut fuse = Fuse::new(&l.share);

    let link = fuse.lookup(ROOT_ID, b"s").unwrap();
    assert_eq!(file_type(link.attr.mode), libc::S_IFLNK);
    assert_eq!(
        link.attr.size,
        target.as_os_str().len() as u64,
        "the link's own size"
    );
    assert_eq!(
        fuse.readlink(link.nodeid).unwrap(),
        target.as_os_str().as_bytes()
    );
    assert!(fuse.open(link.nodeid, libc::O_RDONLY).is_err());
    assert!(fuse
        .open(link.nodeid, libc::O_WRONLY | libc::O_TRUNC)
        .is_err());
    // CREATE without O_EXCL on an existing name opens it: it must not open the target.
    assert!(fuse
        .create(
            ROOT_ID,
            b"s",
            0o666 | libc::S_IFREG,
            libc::O_RDWR | libc::O_TRUNC
        )
        .is_err());

    // SETATTR goes through /proc/self/fd of the link itself, never its target.
    let chmod = SetattrIn {
        valid: SetattrValid::MODE.bits(),
        mode: 0o777,
        ..Default::default()
    };
    let _ = fuse.setattr(link.nodeid, chmod);
    let truncate = SetattrIn {
        valid: SetattrValid::SIZE.bits(),
        size: 0,
        ..Default::default()
    };
    assert!(fuse.setattr(link.nodeid, truncate).is_err());

    // A link the guest makes itself behaves the same.
    let made = fuse
        .symlink(ROOT_ID, b"mine", target.as_os_str().as_bytes())
        .unwrap();
    assert!(fuse.open(made.nodeid, libc::O_RDWR).is_err());
    l.assert_secret_untouched();
}

#[test]
fn guest_cannot_make_device_nodes() {
    let l = Layout::new();
    let mut fuse = Fuse::new(&l.share);
    let sda = libc::makedev(8, 0) as u32;
    assert_eq!(
        fuse.mknod(ROOT_ID, b"sda", libc::S_IFBLK | 0o600, sda)
            .unwrap_err(),
        libc::EPERM
    );
    let mem = libc::makedev(1, 1) as u32;
    assert_eq!(
        fuse.mknod(ROOT_ID, b"mem", libc::S_IFCHR | 0o600, mem)
            .unwrap_err(),
        libc::EPERM
    );
    assert!(!l.share.join("sda").exists() && !l.share.join("mem").exists());
    let fifo = fuse
        .mknod(ROOT_ID, b"pipe", libc::S_IFIFO | 0o600, 0)
        .unwrap();
    assert_eq!(file_type(fifo.attr.mode), libc::S_IFIFO);
    // A FIFO is not opened by the server (it would block the serving thread).
    assert!(fuse.open(fifo.nodeid, libc::O_RDONLY).is_err());
}

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// Runs `f` on a thread with its own mount namespace, where `procfs` is mounted at
/// `<share>/proc`; the namespace (and the mount) go away with the thread.
fn with_proc_in_share(share: &Path, f: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mnt = share.join("proc");
            std::fs::create_dir(&mnt).unwrap();
            // SAFETY: namespace and mount syscalls on this thread with valid C strings.
            unsafe {
                assert_eq!(
                    libc::unshare(libc::CLONE_NEWNS),
                    0,
                    "unshare(CLONE_NEWNS) needs root"
                );
                let root = c(Path::new("/"));
                let rc = libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                );
                assert_eq!(rc, 0, "make mounts private");
                let proc_ = c(Path::new("proc"));
                let rc = libc::mount(
                    proc_.as_ptr(),
                    c(&mnt).as_ptr(),
                    proc_.as_ptr(),
                    0,
                    std::ptr::null(),
                );
                assert_eq!(rc, 0, "mount proc");
            }
            f();
            // SAFETY: as above.
            unsafe { libc::umount2(c(&mnt).as_ptr(), libc::MNT_DETACH) };
        })
        .join()
        .unwrap();
    });
}

#[test]
fn proc_magic_links_are_never_followed() {
    let l = Layout::new();
    std::os::unix::fs::symlink("/proc/self/root", l.share.join("rootlink")).unwrap();
    with_proc_in_share(&l.share, || {
        let mut fuse = Fuse::new(&l.share);
        let proc_ = fuse.lookup(ROOT_ID, b"proc").unwrap();
        assert_eq!(file_type(proc_.attr.mode), libc::S_IFDIR);
        let pid = std::process::id().to_string();
        let me = fuse.lookup(proc_.nodeid, pid.as_bytes()).unwrap();
        for magic in [&b"root"[..], b"cwd", b"exe"] {
            let link = fuse.lookup(me.nodeid, magic).unwrap();
            assert_eq!(file_type(link.attr.mode), libc::S_IFLNK, "{magic:?}");
            assert!(fuse.lookup(link.nodeid, b"etc").is_err());
            assert!(fuse.open(link.nodeid, libc::O_RDONLY).is_err());
            assert!(fuse.opendir(link.nodeid).is_err());
        }
        let fds = fuse.lookup(me.nodeid, b"fd").unwrap();
        let fd0 = fuse.lookup(fds.nodeid, b"0").unwrap();
        assert_eq!(file_type(fd0.attr.mode), libc::S_IFLNK);
        assert!(fuse.open(fd0.nodeid, libc::O_RDONLY).is_err());

        let plain = fuse.lookup(ROOT_ID, b"rootlink").unwrap();
        assert!(fuse.lookup(plain.nodeid, b"etc").is_err());
    });
    l.assert_secret_untouched();
}

#[test]
fn directory_swaps_during_lookups_never_expose_outside_files() {
    let l = Layout::new();
    let d = l.share.join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("secret"), b"inside").unwrap();
    // `s` points at the outside directory, whose `secret` the guest must never read.
    std::os::unix::fs::symlink(&l.outside, l.share.join("s")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (a, b) = (c(&d), c(&l.share.join("s")));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: valid C strings; atomically exchanges the directory and the symlink.
                let rc = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(rc, 0);
            }
        })
    };

    let mut fuse = Fuse::new(&l.share);
    let mut reads = 0;
    for _ in 0..400 {
        for name in [&b"d"[..], b"s"] {
            let Ok(dir) = fuse.lookup(ROOT_ID, name) else {
                continue;
            };
            let Ok(file) = fuse.lookup(dir.nodeid, b"secret") else {
                continue;
            };
            let Ok(fh) = fuse.open(file.nodeid, libc::O_RDONLY) else {
                continue;
            };
            let data = fuse.read(file.nodeid, fh, 0, 64).unwrap();
            assert_eq!(data, b"inside", "read outside the share during a swap");
            fuse.release(file.nodeid, fh);
            reads += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(reads > 0, "the race was exercised");
    l.assert_secret_untouched();
}

#[test]
fn sandboxed_thread_sees_only_the_share() {
    let l = Layout::new();
    std::fs::write(l.share.join("marker"), b"m").unwrap();
    let share_ino = std::fs::metadata(&l.share).unwrap().ino();
    let before = std::fs::metadata("/").unwrap().ino();
    let device = FsDevice::new(FsConfig::new(&l.share, "husk")).unwrap();
    assert!(device.config().thread_sandbox, "on by default");
    let fd = std::fs::File::open(&l.share).unwrap();
    let parent_ino = std::fs::metadata(l.share.parent().unwrap()).unwrap().ino();
    assert_ne!(parent_ino, share_ino);

    std::thread::scope(|s| {
        s.spawn(|| {
            let mut fuse = Fuse::from_guest(Guest::with_device(device));
            // Serving still works after the chroot (files reopen via /proc/self/fd).
            let marker = fuse.lookup(ROOT_ID, b"marker").unwrap();
            let fh = fuse.open(marker.nodeid, libc::O_RDONLY).unwrap();
            assert_eq!(fuse.read(marker.nodeid, fh, 0, 8).unwrap(), b"m");
            // The thread's `/` and `/..` are the share; nothing above it is reachable.
            assert_eq!(std::fs::metadata("/").unwrap().ino(), share_ino);
            assert_eq!(std::fs::metadata("/../..").unwrap().ino(), share_ino);
            assert!(std::fs::metadata("/marker").is_ok());
            // `..` relative to an fd of the share root (opened before the chroot), resolved
            // the way PassthroughFs's `openat` would, is the share root again.
            // SAFETY: valid fd and C string; the result is checked and closed below.
            let up = unsafe { libc::openat(fd.as_raw_fd(), c"..".as_ptr(), libc::O_PATH) };
            assert!(up >= 0);
            // SAFETY: `up` is a fresh fd we own.
            let up = unsafe { std::fs::File::from_raw_fd(up) };
            assert_eq!(up.metadata().unwrap().ino(), share_ino);
            assert!(std::fs::metadata("/outside").is_err());
            assert!(std::fs::metadata("/etc/passwd").is_err());
        })
        .join()
        .unwrap();
    });
    // The rest of the process keeps its root.
    assert_eq!(std::fs::metadata("/").unwrap().ino(), before);
    assert!(std::fs::metadata("/etc/passwd").is_ok());
}

#[test]
fn sandboxed_thread_refuses_to_serve_another_share() {
    let a = Layout::new();
    let b = Layout::new();
    let dev_a = FsDevice::new(FsConfig::new(&a.share, "a")).unwrap();
    let dev_b = FsDevice::new(FsConfig::new(&b.share, "b")).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            dev_a.enter_thread_sandbox().unwrap();
            dev_a.enter_thread_sandbox().unwrap();
            let mut guest = Guest::with_device(dev_b);
            assert!(matches!(
                guest.run().unwrap_err(),
                FsError::ThreadConfinedElsewhere
            ));
        })
        .join()
        .unwrap();
    });
}
