//! The file operations a guest mount needs, end to end through the queue.

use std::os::unix::fs::PermissionsExt;

use fuse_backend_rs::abi::fuse_abi::FsOptions;
use fuse_backend_rs::api::filesystem::ROOT_ID;

use super::harness::{file_type, Fuse};
use crate::devices::fs::{FsConfig, FsDevice, FsError, CONFIG_SPACE_LEN, TAG_LEN};

fn share() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn init_answers_and_never_enables_export_support() {
    let dir = share();
    let mut fuse = Fuse::new(dir.path());
    let offered =
        (FsOptions::EXPORT_SUPPORT | FsOptions::ASYNC_READ | FsOptions::BIG_WRITES).bits();
    let out = fuse.init(offered as u32).expect("INIT");
    assert_eq!((out.major, out.minor), (7, 33));
    assert_eq!(u64::from(out.flags) & FsOptions::EXPORT_SUPPORT.bits(), 0);
}

#[test]
fn lookup_and_getattr_describe_the_host_file() {
    let dir = share();
    let path = dir.path().join("hello.txt");
    std::fs::write(&path, b"hello, guest\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();

    let mut fuse = Fuse::new(dir.path());
    let entry = fuse.lookup(ROOT_ID, b"hello.txt").expect("LOOKUP");
    assert_ne!(entry.nodeid, ROOT_ID);
    assert_eq!(entry.attr.size, 13);
    let attr = fuse.getattr(entry.nodeid).expect("GETATTR");
    assert_eq!(attr.size, 13);
    assert_eq!(file_type(attr.mode), libc::S_IFREG);
    assert_eq!(attr.mode & 0o7777, 0o640);
    assert_eq!(fuse.lookup(ROOT_ID, b"missing").unwrap_err(), libc::ENOENT);
}

#[test]
fn open_and_read_return_the_host_bytes() {
    let dir = share();
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("data.bin"), &content).unwrap();

    let mut fuse = Fuse::new(dir.path());
    let entry = fuse.lookup(ROOT_ID, b"data.bin").unwrap();
    let fh = fuse.open(entry.nodeid, libc::O_RDONLY).expect("OPEN");
    assert_eq!(fuse.read(entry.nodeid, fh, 0, 16).unwrap(), &content[..16]);
    let tail = fuse.read(entry.nodeid, fh, 99_990, 4096).unwrap();
    assert_eq!(tail, &content[99_990..]);
    let mut all = Vec::new();
    while all.len() < content.len() {
        let chunk = fuse
            .read(entry.nodeid, fh, all.len() as u64, 65536)
            .unwrap();
        assert!(!chunk.is_empty());
        all.extend_from_slice(&chunk);
    }
    assert_eq!(all, content);
    fuse.release(entry.nodeid, fh);
}

#[test]
fn create_and_write_reach_the_host_file() {
    let dir = share();
    let mut fuse = Fuse::new(dir.path());
    let (entry, fh) = fuse
        .create(ROOT_ID, b"new.txt", 0o644 | libc::S_IFREG, libc::O_RDWR)
        .expect("CREATE");
    assert_eq!(
        fuse.write(entry.nodeid, fh, 0, b"written by the guest")
            .unwrap(),
        20
    );
    assert_eq!(fuse.write(entry.nodeid, fh, 8, b"BY").unwrap(), 2);
    fuse.release(entry.nodeid, fh);
    assert_eq!(
        std::fs::read(dir.path().join("new.txt")).unwrap(),
        b"written BY the guest"
    );

    // An existing host file opened for writing.
    std::fs::write(dir.path().join("old.txt"), b"0123456789").unwrap();
    let old = fuse.lookup(ROOT_ID, b"old.txt").unwrap();
    let fh = fuse.open(old.nodeid, libc::O_WRONLY).unwrap();
    fuse.write(old.nodeid, fh, 3, b"abc").unwrap();
    fuse.release(old.nodeid, fh);
    assert_eq!(
        std::fs::read(dir.path().join("old.txt")).unwrap(),
        b"012abc6789"
    );
}

#[test]
fn mkdir_creates_a_host_directory() {
    let dir = share();
    let mut fuse = Fuse::new(dir.path());
    let entry = fuse.mkdir(ROOT_ID, b"sub", 0o755).expect("MKDIR");
    assert_eq!(file_type(entry.attr.mode), libc::S_IFDIR);
    let (file, fh) = fuse
        .create(
            entry.nodeid,
            b"inner",
            0o600 | libc::S_IFREG,
            libc::O_WRONLY,
        )
        .unwrap();
    fuse.write(file.nodeid, fh, 0, b"x").unwrap();
    fuse.release(file.nodeid, fh);
    assert_eq!(std::fs::read(dir.path().join("sub/inner")).unwrap(), b"x");
}

#[test]
fn readdir_lists_the_share() {
    let dir = share();
    std::fs::write(dir.path().join("a"), b"").unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.path().join("c")).unwrap();

    let mut fuse = Fuse::new(dir.path());
    let mut names = fuse.readdir_names(ROOT_ID).expect("READDIR");
    names.sort();
    let expected: Vec<Vec<u8>> = ["a", "b", "c"]
        .iter()
        .map(|n| n.as_bytes().to_vec())
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn config_space_carries_tag_and_queue_count() {
    let dir = share();
    let mut cfg = FsConfig::new(dir.path(), "husk");
    cfg.request_queues = 2;
    let dev = FsDevice::new(cfg).unwrap();
    let space = dev.config_space();
    assert_eq!(space.len(), CONFIG_SPACE_LEN);
    assert_eq!(&space[..4], b"husk");
    assert!(space[4..TAG_LEN].iter().all(|&b| b == 0));
    assert_eq!(&space[TAG_LEN..], &2u32.to_le_bytes());
    assert_eq!(dev.num_queues(), 3);
}

#[test]
fn bad_tags_and_queue_counts_are_refused() {
    let dir = share();
    for tag in ["", "a\0b", &"t".repeat(TAG_LEN + 1)] {
        let err = FsDevice::new(FsConfig::new(dir.path(), tag)).unwrap_err();
        assert!(matches!(err, FsError::InvalidTag(_)), "{tag:?}: {err}");
    }
    assert!(FsDevice::new(FsConfig::new(dir.path(), "t".repeat(TAG_LEN))).is_ok());
    let mut cfg = FsConfig::new(dir.path(), "husk");
    cfg.request_queues = 0;
    assert!(matches!(
        FsDevice::new(cfg).unwrap_err(),
        FsError::InvalidQueues(_)
    ));
}

#[test]
fn share_must_be_a_real_directory() {
    let dir = share();
    std::fs::write(dir.path().join("file"), b"").unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("link")).unwrap();
    for bad in ["file", "link", "missing"] {
        let err = FsDevice::new(FsConfig::new(dir.path().join(bad), "husk")).unwrap_err();
        assert!(matches!(err, FsError::OpenShare { .. }), "{bad}: {err}");
    }
}

fn thread_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).unwrap()
}

#[test]
fn setup_leaves_the_process_umask_alone() {
    // PassthroughFs::import sets umask 0; it must do so on its own helper thread.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o022) };
    let dir = share();
    let _dev = FsDevice::new(FsConfig::new(dir.path(), "husk")).unwrap();
    assert_eq!(thread_umask(), 0o022);
}
