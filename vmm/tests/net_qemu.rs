//! The virtio-net backend served to a real QEMU (`-netdev vhost-user` with
//! `-device virtio-net-device`, microvm, TCG) booting the guest kernel: the
//! guest's driver negotiates with the backend, brings its NIC up, and a ping
//! from the tap's side gets answered (ARP and ICMP, both ways through the
//! backend).
//!
//! The guest runs a busybox initrd made here (no agent needed). The tap and
//! everything addressed live in a network namespace of the test's own.
//! Skips, saying why, without QEMU, a built guest kernel, a static busybox,
//! or the privileges for namespaces and taps.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_vmm::devices::net::{serve_net, NetConfig, Tap};

const GUEST_IP: &str = "10.254.0.2";
const HOST_IP: &str = "10.254.0.1";

/// The cached guest kernel, if `guest-kernel/build.sh` built one.
fn kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("HUSK_KERNEL") {
        return Some(k.into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-kernel/build.sh");
    let out = Command::new(script).arg("--print-path").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()?
        .trim()
        .to_owned();
    Some(PathBuf::from(path)).filter(|p| p.is_file())
}

/// A static busybox, whose applets the initrd's script uses.
fn busybox() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/busybox");
    let out = Command::new("file").arg(&path).output().ok();
    let is_static = out.is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains("statically"));
    (path.is_file() && is_static).then_some(path)
}

/// Appends one `newc` cpio entry.
fn cpio_entry(out: &mut Vec<u8>, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let namesize = name.len() + 1;
    let header = format!(
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        out.len() as u32 + 1, // inode: unique enough
        mode,
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        rdev.0,
        rdev.1,
        namesize,
        0
    );
    out.extend(header.as_bytes());
    out.extend(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// An initrd whose /init brings eth0 up with `GUEST_IP`, says so on the
/// console, pings the host once and then waits.
fn initrd(dir: &Path, busybox: &Path) -> PathBuf {
    let script = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mkdir -p /proc /sys\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sys /sys\n\
         echo \"NIC $(/bin/busybox cat /sys/class/net/eth0/address) driver $(/bin/busybox basename $(/bin/busybox readlink /sys/class/net/eth0/device/driver))\"\n\
         /bin/busybox ip link set eth0 up\n\
         /bin/busybox ip addr add {GUEST_IP}/24 dev eth0\n\
         echo NET-READY\n\
         /bin/busybox ping -c 1 -W 30 {HOST_IP} >/dev/null 2>&1 && echo GUEST-PING-OK\n\
         exec /bin/busybox sleep 3600\n"
    );
    let mut cpio = Vec::new();
    for d in ["bin", "dev", "proc", "sys"] {
        cpio_entry(&mut cpio, d, 0o040755, (0, 0), &[]);
    }
    cpio_entry(&mut cpio, "dev/console", 0o020600, (5, 1), &[]);
    cpio_entry(&mut cpio, "init", 0o100755, (0, 0), script.as_bytes());
    cpio_entry(
        &mut cpio,
        "bin/busybox",
        0o100755,
        (0, 0),
        &fs::read(busybox).unwrap(),
    );
    cpio_entry(&mut cpio, "TRAILER!!!", 0, (0, 0), &[]);
    let path = dir.join("initrd.cpio");
    fs::write(&path, cpio).unwrap();
    path
}

fn wait_for(path: &Path, what: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if fs::read_to_string(path).is_ok_and(|s| s.contains(what)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Runs busybox `args` (in the calling thread's namespace); its success.
fn bb(args: &[&str]) -> bool {
    Command::new("busybox")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn qemu_guest_pings_through_the_vhost_user_backend() {
    let qemu = "qemu-system-x86_64";
    if Command::new(qemu).arg("--version").output().is_err() {
        eprintln!("skipping: {qemu} is not installed");
        return;
    }
    let Some(kernel) = kernel() else {
        eprintln!("skipping: no guest kernel (run guest-kernel/build.sh)");
        return;
    };
    let Some(busybox) = busybox() else {
        eprintln!("skipping: no static busybox");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = initrd(dir.path(), &busybox);
    let console = dir.path().join("console.log");
    let socket = dir.path().join("vhost-net.sock");
    let console2 = console.clone();
    let qemu_log = dir.path().join("qemu.log");

    // Everything network-related happens in this thread's own namespace.
    let outcome = std::thread::spawn(move || -> Result<(), String> {
        // SAFETY: unshare only changes this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!("skipping: cannot make a network namespace");
            return Ok(());
        }
        let Ok(tap) = Tap::open("husktest%d") else {
            eprintln!("skipping: cannot open a tap");
            return Ok(());
        };
        let name = tap.name().to_owned();
        assert!(bb(&["ip", "link", "set", &name, "up"]));
        assert!(bb(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            &name
        ]));
        let config = NetConfig {
            mac: [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef],
            mtu: 1500,
        };
        let mut handle = serve_net(&socket, tap, config).map_err(|e| e.to_string())?;
        let mut child = Command::new(qemu)
            .args([
                "-M",
                "microvm,acpi=off,memory-backend=mem",
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-m",
                "256M",
                "-smp",
                "1",
                "-object",
                "memory-backend-memfd,id=mem,size=256M,share=on",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-serial",
            ])
            .arg(format!("file:{}", console2.display()))
            .arg("-chardev")
            .arg(format!("socket,id=net0,path={}", socket.display()))
            .args([
                "-netdev",
                "vhost-user,id=net0,chardev=net0",
                "-device",
                "virtio-net-device,netdev=net0,mac=52:54:00:ab:cd:ef",
                "-append",
                "console=ttyS0 reboot=t panic=-1 no_timer_check tsc=reliable",
                "-kernel",
            ])
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&qemu_log).unwrap())
            .spawn()
            .map_err(|e| e.to_string())?;
        let result = (|| {
            if !wait_for(&console2, "NET-READY", Duration::from_secs(240)) {
                return Err("the guest never brought its NIC up".to_owned());
            }
            // Host to guest: ARP and ICMP echo through RX, replies through TX.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !bb(&["ping", "-c", "1", "-W", "2", GUEST_IP]) {
                if Instant::now() > deadline {
                    return Err("the guest does not answer pings".to_owned());
                }
            }
            // Guest to host, and a bigger frame each way.
            if !wait_for(&console2, "GUEST-PING-OK", Duration::from_secs(60)) {
                return Err("the guest's ping of the host failed".to_owned());
            }
            if !bb(&["ping", "-c", "3", "-s", "1400", "-W", "5", GUEST_IP]) {
                return Err("1400-byte pings fail".to_owned());
            }
            Ok(())
        })();
        let _ = child.kill();
        let _ = child.wait();
        handle.stop();
        result
    })
    .join()
    .unwrap();
    let console_text = fs::read_to_string(&console).unwrap_or_default();
    let qemu_log = fs::read_to_string(dir.path().join("qemu.log")).unwrap_or_default();
    if let Err(e) = outcome {
        let _ = std::io::stderr().write_all(console_text.as_bytes());
        panic!("{e}\nQEMU: {qemu_log}");
    }
    for line in console_text.lines().filter(|l| !l.starts_with('[')) {
        eprintln!("guest: {line}");
    }
    if console_text.contains("NIC ") {
        assert!(
            console_text.contains("NIC 52:54:00:ab:cd:ef driver virtio_net"),
            "{console_text}"
        );
    }
}
