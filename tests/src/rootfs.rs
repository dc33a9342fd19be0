//! A busybox container root file system, built from Debian's `busybox-static`.

use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// The static busybox the root file system is made of.
pub const BUSYBOX: &str = "/bin/busybox";

/// Builds a busybox root file system at `dir` (which must not exist yet):
/// `/bin/busybox` with one symlink per applet, the usual mount points, and
/// users root and `user` (1000).
pub fn busybox(dir: &Path) -> io::Result<()> {
    let busybox = Path::new(BUSYBOX);
    if !busybox.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "busybox-static is missing: run scripts/install-deps.sh",
        ));
    }
    for sub in [
        "bin",
        "proc",
        "sys",
        "dev",
        "etc",
        "tmp",
        "root",
        "home/user",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    let list = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            symlink("busybox", dir.join("bin").join(applet))?;
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nuser:x:1000:\n")?;
    Ok(())
}
