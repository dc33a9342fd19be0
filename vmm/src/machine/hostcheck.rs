//! Can this host's KVM run Linux guests? Checked before booting anything.

use std::fs;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;

use kvm_ioctls::Kvm;

/// What the host offers for running VMs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostCheck {
    /// `/dev/kvm` exists.
    pub kvm_present: bool,
    /// `/dev/kvm` could be opened read-write by this process.
    pub kvm_openable: bool,
    /// `KVM_GET_API_VERSION` (12 on every supported kernel), if opened.
    pub kvm_api_version: Option<i32>,
    /// The CPU advertises VT-x or AMD-V (`vmx`/`svm` in /proc/cpuinfo).
    pub cpu_has_virtualization: bool,
    /// The hardware-virtualization KVM module is loaded (`kvm_intel`/`kvm_amd`).
    pub hardware_kvm_module: bool,
    /// Only the emulating pagetable-based KVM (`kvm_pvm`) is loaded.
    pub pvm_only: bool,
}

impl HostCheck {
    /// Inspects this host.
    pub fn run() -> Self {
        Self::inspect(Path::new("/"))
    }

    /// Inspects a host whose /dev, /proc and /sys live under `root` (tests
    /// point this at a fake tree; the KVM ioctl is only tried for `/`).
    pub fn inspect(root: &Path) -> Self {
        let kvm_dev = root.join("dev/kvm");
        let kvm_present = kvm_dev.exists();
        let device = kvm_present
            .then(|| {
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&kvm_dev)
                    .ok()
            })
            .flatten();
        let opened = device.is_some();
        let kvm_api_version = device.filter(|_| root == Path::new("/")).map(|file| {
            // SAFETY: the fd is the /dev/kvm just opened, owned by nothing else.
            let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
            kvm.get_api_version()
        });
        let cpuinfo = fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
        let cpu_has_virtualization = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .flat_map(|l| l.split_whitespace())
            .any(|flag| flag == "vmx" || flag == "svm");
        let module = |name: &str| root.join("sys/module").join(name).exists();
        let hardware_kvm_module = module("kvm_intel") || module("kvm_amd");
        Self {
            kvm_present,
            kvm_openable: opened,
            kvm_api_version,
            cpu_has_virtualization,
            hardware_kvm_module,
            pvm_only: module("kvm_pvm") && !hardware_kvm_module,
        }
    }

    /// Whether the builtin VMM can boot a stock Linux guest here.
    pub fn can_run_linux_guests(&self) -> bool {
        self.limitation().is_none()
    }

    /// Why this host's KVM cannot run Linux guests, for a person to read;
    /// `None` when it can.
    pub fn limitation(&self) -> Option<&'static str> {
        if !self.kvm_present {
            Some("/dev/kvm does not exist")
        } else if !self.kvm_openable {
            Some("/dev/kvm cannot be opened read-write")
        } else if self.pvm_only {
            Some("KVM is the emulating kvm_pvm, which cannot run Linux guests")
        } else if !(self.cpu_has_virtualization || self.hardware_kvm_module) {
            Some("the CPU shows no hardware virtualization (no vmx/svm, no kvm_intel/kvm_amd)")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(flags: &str, modules: &[&str], with_kvm: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("proc")).unwrap();
        fs::create_dir_all(dir.path().join("dev")).unwrap();
        fs::write(
            dir.path().join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu {flags} sse\n"),
        )
        .unwrap();
        for m in modules {
            fs::create_dir_all(dir.path().join("sys/module").join(m)).unwrap();
        }
        if with_kvm {
            fs::write(dir.path().join("dev/kvm"), b"").unwrap();
        }
        dir
    }

    #[test]
    fn pvm_only_host_cannot_run_linux() {
        let dir = fake("lm", &["kvm", "kvm_pvm"], true);
        let check = HostCheck::inspect(dir.path());
        assert!(check.kvm_openable && check.pvm_only);
        assert!(!check.can_run_linux_guests());
    }

    #[test]
    fn vmx_host_with_kvm_intel_can_run_linux() {
        let dir = fake("vmx lm", &["kvm", "kvm_intel"], true);
        let check = HostCheck::inspect(dir.path());
        assert!(check.cpu_has_virtualization && check.hardware_kvm_module);
        assert!(check.can_run_linux_guests());
    }

    #[test]
    fn no_dev_kvm_cannot_run_linux() {
        let dir = fake("svm", &["kvm_amd"], false);
        let check = HostCheck::inspect(dir.path());
        assert!(!check.kvm_present);
        assert!(!check.can_run_linux_guests());
    }

    #[test]
    fn this_host_reports_an_api_version_when_kvm_opens() {
        let check = HostCheck::run();
        if check.kvm_openable {
            assert_eq!(check.kvm_api_version, Some(12));
        }
    }
}
