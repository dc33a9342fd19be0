//! `husk check`: can this host run husk containers, and with which backend?
//!
//! [`run`] inspects the host (KVM device, hardware virtualization, QEMU,
//! guest kernel and initrd), resolves the configured backend and returns a
//! [`CheckReport`]: `Display` renders it for a person (one aligned line per
//! item, with an `ok`/`missing`/`no` marker), `serde::Serialize` gives
//! `--format json`. The KVM facts come from `husk_vmm::machine::HostCheck`.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_vmm::machine::{kernel_format, HostCheck, KernelFormat};
use serde::Serialize;

use crate::hypervisor::{qemu, Backend, ConcreteBackend};

/// How long `<qemu> --version` may take before it counts as broken.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckInputs {
    /// The configured backend.
    pub backend: Backend,
    /// The QEMU program: a path, or a name looked up in `PATH`.
    pub qemu: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initrd.
    pub initrd: PathBuf,
    /// The `[snapshot]` configuration.
    pub snapshot: crate::config::Snapshot,
}

/// The KVM device.
#[derive(Debug, Clone, Serialize)]
pub struct KvmStatus {
    /// `/dev/kvm` exists.
    pub present: bool,
    /// `/dev/kvm` opens read-write for this process.
    pub accessible: bool,
    /// `KVM_GET_API_VERSION`, when it opened.
    pub api_version: Option<i32>,
}

/// Whether KVM here can run Linux guests.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualizationStatus {
    /// `vmx` or `svm` in /proc/cpuinfo.
    pub cpu_flags: bool,
    /// `kvm_intel` or `kvm_amd` is loaded.
    pub hardware_module: bool,
    /// Only the emulating `kvm_pvm` is loaded.
    pub emulating_kvm: bool,
    /// KVM here runs Linux guests (the builtin VMM works).
    pub runs_linux_guests: bool,
    /// Why not, when it does not.
    pub limitation: Option<String>,
}

/// The QEMU program.
#[derive(Debug, Clone, Serialize)]
pub struct QemuStatus {
    /// The program as configured (path or name).
    pub program: String,
    /// Where it was found.
    pub path: Option<String>,
    /// The first line of its `--version`.
    pub version: Option<String>,
    /// What QEMU would use to run guests here: `kvm` or `tcg`.
    pub accel: &'static str,
    /// Why it cannot be used, if it cannot.
    pub problem: Option<String>,
}

/// A guest file (kernel or initrd).
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    /// The path checked.
    pub path: String,
    /// It is a regular file.
    pub present: bool,
    /// Its size in bytes, if present.
    pub size: Option<u64>,
    /// For the kernel: `elf` or `bzimage`, if it is either.
    pub format: Option<&'static str>,
    /// Why it cannot be used, if it cannot.
    pub problem: Option<String>,
}

/// Whether sandboxes restore from templates, and which exist.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotStatus {
    /// `[snapshot] enabled`.
    pub enabled: bool,
    /// Enabled and the configured backend is the builtin VMM.
    pub in_use: bool,
    /// Where templates are kept.
    pub path: String,
    /// The templates there (their directory names).
    pub templates: Vec<String>,
    /// Templates that failed in the last 5 minutes, which sandboxes do not
    /// try meanwhile: `<hash>, <seconds> s ago: <why>` each.
    pub held_back: Vec<String>,
    /// Why they are not in use, when they are not.
    pub reason: Option<String>,
}

/// A resolved backend choice.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// The backend that runs VMs.
    pub backend: ConcreteBackend,
    /// Why, for a person.
    pub reason: String,
}

/// The configured backend and whether it can run containers here.
#[derive(Debug, Clone, Serialize)]
pub struct ConfiguredStatus {
    /// As configured.
    pub backend: Backend,
    /// What it resolves to on this host.
    pub resolved: Choice,
    /// It can run containers here.
    pub usable: bool,
    /// What stands in the way, if anything.
    pub problems: Vec<String>,
}

/// Everything `husk check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The KVM device.
    pub kvm: KvmStatus,
    /// Hardware virtualization.
    pub virtualization: VirtualizationStatus,
    /// QEMU.
    pub qemu: QemuStatus,
    /// The guest kernel.
    pub kernel: FileStatus,
    /// The guest initrd.
    pub initrd: FileStatus,
    /// What `hypervisor = "auto"` picks here.
    pub auto: Choice,
    /// The configured backend.
    pub configured: ConfiguredStatus,
    /// Sandbox templates.
    pub snapshots: SnapshotStatus,
}

impl CheckReport {
    /// Whether the configured backend can run containers here: the builtin
    /// VMM needs KVM that runs Linux guests, QEMU needs its program; both
    /// need the guest kernel and initrd.
    pub fn usable(&self) -> bool {
        self.configured.usable
    }

    /// The report for a person: one aligned line per item (same as `Display`).
    pub fn render(&self) -> String {
        self.to_string()
    }
}

/// Checks this host for `inputs`.
pub fn run(inputs: &CheckInputs) -> CheckReport {
    run_on(inputs, &HostCheck::run())
}

/// Checks `inputs` against the KVM facts in `host` (tests pass a
/// `HostCheck::inspect` of a fake /dev, /proc and /sys tree).
pub fn run_on(inputs: &CheckInputs, host: &HostCheck) -> CheckReport {
    let kvm = KvmStatus {
        present: host.kvm_present,
        accessible: host.kvm_openable,
        api_version: host.kvm_api_version,
    };
    let virtualization = VirtualizationStatus {
        cpu_flags: host.cpu_has_virtualization,
        hardware_module: host.hardware_kvm_module,
        emulating_kvm: host.pvm_only,
        runs_linux_guests: host.can_run_linux_guests(),
        limitation: host.limitation().map(str::to_owned),
    };
    let qemu = check_qemu(&inputs.qemu, host);
    let kernel = check_kernel(&inputs.kernel);
    let initrd = check_initrd(&inputs.initrd);
    let (backend, reason) = Backend::Auto.resolve(host);
    let auto = Choice { backend, reason };
    let (backend, reason) = inputs.backend.resolve(host);

    let mut problems = Vec::new();
    match backend {
        ConcreteBackend::Builtin => problems.extend(virtualization.limitation.clone()),
        ConcreteBackend::Qemu => problems.extend(qemu.problem.clone()),
    }
    problems.extend(kernel.problem.clone());
    problems.extend(initrd.problem.clone());
    let configured = ConfiguredStatus {
        backend: inputs.backend,
        resolved: Choice { backend, reason },
        usable: problems.is_empty(),
        problems,
    };
    let snapshots = snapshot_status(&inputs.snapshot, backend);
    CheckReport {
        kvm,
        virtualization,
        qemu,
        kernel,
        initrd,
        auto,
        configured,
        snapshots,
    }
}

fn snapshot_status(config: &crate::config::Snapshot, backend: ConcreteBackend) -> SnapshotStatus {
    let reason = if !config.enabled {
        Some("[snapshot] enabled = false".to_owned())
    } else if backend != ConcreteBackend::Builtin {
        Some("only the builtin backend restores snapshots; this configuration runs QEMU".to_owned())
    } else {
        None
    };
    SnapshotStatus {
        enabled: config.enabled,
        in_use: reason.is_none(),
        path: config.path.display().to_string(),
        templates: crate::template::list(&config.path),
        held_back: crate::template::held_back(&config.path)
            .into_iter()
            .map(|(hash, why, age)| format!("{hash}, {} s ago: {why}", age.as_secs()))
            .collect(),
        reason,
    }
}

fn check_qemu(program: &Path, host: &HostCheck) -> QemuStatus {
    let accel = qemu::Accel::for_host(host).name();
    let mut status = QemuStatus {
        program: program.display().to_string(),
        path: None,
        version: None,
        accel,
        problem: None,
    };
    let Some(path) = qemu::find_program(program) else {
        status.problem = Some(if program.components().count() > 1 {
            format!("QEMU {} is not an executable file", program.display())
        } else {
            format!(
                "QEMU {} not found in PATH (install qemu-system-x86)",
                program.display()
            )
        });
        return status;
    };
    status.path = Some(path.display().to_string());
    match program_version(&path) {
        Ok(version) => status.version = Some(version),
        Err(e) => status.problem = Some(format!("QEMU {}: {e}", path.display())),
    }
    status
}

/// The first line of `<program> --version`, waiting at most
/// [`VERSION_TIMEOUT`].
fn program_version(program: &Path) -> Result<String, String> {
    let mut child = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run --version: {e}"))?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                // Ours and not reaped yet: the pid is still ours to kill.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "--version did not answer within {} s",
                    VERSION_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for --version: {e}")),
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        // Bounded: a version banner is a few lines.
        let _ = stdout.by_ref().take(64 * 1024).read_to_string(&mut out);
    }
    if !status.success() {
        return Err(format!("--version failed ({status})"));
    }
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| "--version printed nothing".to_owned())
}

fn file_status(path: &Path) -> FileStatus {
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file());
    FileStatus {
        path: path.display().to_string(),
        present: meta.is_some(),
        size: meta.map(|m| m.len()),
        format: None,
        problem: None,
    }
}

fn check_kernel(path: &Path) -> FileStatus {
    let mut status = file_status(path);
    if !status.present {
        status.problem = Some(format!("guest kernel {} not found", path.display()));
        return status;
    }
    match kernel_format(path) {
        Ok(Some(KernelFormat::Elf)) => status.format = Some("elf"),
        Ok(Some(KernelFormat::BzImage)) => status.format = Some("bzimage"),
        Ok(None) => {
            status.problem = Some(format!(
                "guest kernel {} is neither an ELF vmlinux nor a bzImage",
                path.display()
            ));
        }
        Err(e) => {
            status.problem = Some(format!("cannot read guest kernel {}: {e}", path.display()));
        }
    }
    status
}

fn check_initrd(path: &Path) -> FileStatus {
    let mut status = file_status(path);
    if !status.present {
        status.problem = Some(format!("guest initrd {} not found", path.display()));
    } else if status.size == Some(0) {
        status.problem = Some(format!("guest initrd {} is empty", path.display()));
    }
    status
}

/// One rendered line: label, marker, detail.
struct Line {
    label: &'static str,
    marker: String,
    detail: String,
}

impl CheckReport {
    fn lines(&self) -> Vec<Line> {
        let line = |label, marker: &str, detail: String| Line {
            label,
            marker: marker.to_owned(),
            detail,
        };
        let mut lines = Vec::new();

        lines.push(match (&self.kvm.present, &self.kvm.accessible) {
            (false, _) => line("KVM device", "missing", "/dev/kvm does not exist".into()),
            (true, false) => line(
                "KVM device",
                "no",
                "/dev/kvm cannot be opened read-write (run as root or give access to it)".into(),
            ),
            (true, true) => line(
                "KVM device",
                "ok",
                match self.kvm.api_version {
                    Some(v) => format!("/dev/kvm opens read-write (API version {v})"),
                    None => "/dev/kvm opens read-write".into(),
                },
            ),
        });

        let v = &self.virtualization;
        let found = format!(
            "vmx/svm in /proc/cpuinfo: {}; kvm_intel/kvm_amd loaded: {}{}",
            yes_no(v.cpu_flags),
            yes_no(v.hardware_module),
            if v.emulating_kvm {
                "; kvm_pvm loaded"
            } else {
                ""
            }
        );
        lines.push(match &v.limitation {
            None => line("virtualization", "ok", found),
            Some(why) => line("virtualization", "no", format!("{why} ({found})")),
        });

        let q = &self.qemu;
        lines.push(match (&q.path, &q.version, &q.problem) {
            (None, _, problem) => line(
                "QEMU",
                "missing",
                problem.clone().unwrap_or_else(|| q.program.clone()),
            ),
            (Some(_), _, Some(problem)) => line("QEMU", "no", problem.clone()),
            (Some(path), version, None) => line(
                "QEMU",
                "ok",
                format!(
                    "{path}: {} (accel {})",
                    version.as_deref().unwrap_or("version unknown"),
                    q.accel
                ),
            ),
        });

        for (label, file) in [
            ("guest kernel", &self.kernel),
            ("guest initrd", &self.initrd),
        ] {
            lines.push(match (&file.problem, file.present) {
                (Some(problem), false) => line(label, "missing", problem.clone()),
                (Some(problem), true) => line(label, "no", problem.clone()),
                (None, _) => {
                    let mut detail = file.path.clone();
                    if let Some(format) = file.format {
                        detail.push_str(&format!(" ({format})"));
                    }
                    if let Some(size) = file.size {
                        detail.push_str(&format!(", {size} bytes"));
                    }
                    line(label, "ok", detail)
                }
            });
        }

        lines.push(Line {
            label: "auto picks",
            marker: self.auto.backend.to_string(),
            detail: self.auto.reason.clone(),
        });
        let c = &self.configured;
        let detail = if c.usable {
            let how = match c.resolved.backend {
                ConcreteBackend::Builtin => "the builtin VMM on KVM".to_owned(),
                ConcreteBackend::Qemu if self.qemu.accel == qemu::Accel::Kvm.name() => {
                    "QEMU on KVM".to_owned()
                }
                ConcreteBackend::Qemu => "QEMU with TCG (software emulation, slow)".to_owned(),
            };
            format!("hypervisor = \"{}\": usable, runs {how}", c.backend)
        } else {
            format!("hypervisor = \"{}\": not usable here", c.backend)
        };
        lines.push(Line {
            label: "configured",
            marker: c.resolved.backend.to_string(),
            detail,
        });
        let snap = &self.snapshots;
        let mut templates = match snap.templates.len() {
            0 => "no template yet (the first sandbox makes one)".to_owned(),
            _ => format!("templates: {}", snap.templates.join(", ")),
        };
        if !snap.held_back.is_empty() {
            templates.push_str(&format!(
                "; failed, so sandboxes boot cold for {} minutes: {}",
                crate::template::RETRY_FAILED_AFTER.as_secs() / 60,
                snap.held_back.join("; ")
            ));
        }
        lines.push(match &snap.reason {
            None => line(
                "snapshots",
                "on",
                format!(
                    "sandboxes restore from templates in {}; {templates}",
                    snap.path
                ),
            ),
            Some(why) => line("snapshots", "off", format!("sandboxes boot cold: {why}")),
        });
        lines.push(if c.usable {
            line("verdict", "ok", "husk can run containers here".into())
        } else {
            line(
                "verdict",
                "no",
                format!("husk cannot run containers here: {}", c.problems.join("; ")),
            )
        });
        lines
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = self.lines();
        let label_width = lines.iter().map(|l| l.label.len()).max().unwrap_or(0);
        let marker_width = lines.iter().map(|l| l.marker.len()).max().unwrap_or(0);
        for l in &lines {
            writeln!(
                f,
                "{:label_width$}  {:marker_width$}  {}",
                l.label, l.marker, l.detail
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    use crate::hypervisor::test_support::host;

    fn vmx_host() -> HostCheck {
        host("vmx lm", &["kvm", "kvm_intel"], Some(true))
    }

    fn pvm_host() -> HostCheck {
        host("lm", &["kvm", "kvm_pvm"], Some(true))
    }

    /// A directory with an ELF-looking kernel, a non-empty initrd and a
    /// script answering `--version` like QEMU.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("vmlinux"), b"\x7fELF\x02\x01\x01\0").unwrap();
            fs::write(dir.path().join("initrd"), b"070701").unwrap();
            let qemu = dir.path().join("qemu");
            fs::write(
                &qemu,
                "#!/bin/sh\necho 'QEMU emulator version 9.9.9'\necho 'Copyright'\n",
            )
            .unwrap();
            fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).unwrap();
            Self { dir }
        }

        fn inputs(&self, backend: Backend) -> CheckInputs {
            CheckInputs {
                backend,
                qemu: self.dir.path().join("qemu"),
                kernel: self.dir.path().join("vmlinux"),
                initrd: self.dir.path().join("initrd"),
                snapshot: crate::config::Snapshot {
                    enabled: false,
                    path: self.dir.path().join("snapshots"),
                },
            }
        }
    }

    /// The rendered line for `label`.
    fn line_of(report: &CheckReport, label: &str) -> String {
        report
            .to_string()
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in\n{report}"))
            .to_owned()
    }

    fn marker(report: &CheckReport, label: &str) -> String {
        line_of(report, label)
            .strip_prefix(label)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn snapshots_are_on_only_when_enabled_with_the_builtin_backend_and_templates_are_listed() {
        let files = Files::new();
        let mut inputs = files.inputs(Backend::Builtin);
        let report = run_on(&inputs, &vmx_host());
        assert_eq!(marker(&report, "snapshots"), "off");
        assert!(line_of(&report, "snapshots").contains("enabled = false"));

        inputs.snapshot.enabled = true;
        let report = run_on(&inputs, &vmx_host());
        assert_eq!(marker(&report, "snapshots"), "on");
        assert!(line_of(&report, "snapshots").contains("no template yet"));
        let template = inputs.snapshot.path.join("0123456789abcdef");
        fs::create_dir_all(&template).unwrap();
        fs::write(template.join("state"), b"s").unwrap();
        fs::write(template.join("memory"), b"m").unwrap();
        let report = run_on(&inputs, &vmx_host());
        assert!(
            line_of(&report, "snapshots").contains("templates: 0123456789abcdef"),
            "{report}"
        );
        assert!(report.snapshots.in_use);
        // What a template's failure leaves (crate::template's own tests
        // make it the real way).
        fs::write(
            inputs.snapshot.path.join("0123456789abcdef.failed"),
            "booting its VM: no kernel",
        )
        .unwrap();
        let report = run_on(&inputs, &vmx_host());
        let snapshots = line_of(&report, "snapshots");
        assert!(
            snapshots.contains("failed, so sandboxes boot cold for 5 minutes: 0123456789abcdef, ")
                && snapshots.ends_with(" s ago: booting its VM: no kernel"),
            "{report}"
        );

        inputs.backend = Backend::Qemu;
        let report = run_on(&inputs, &vmx_host());
        assert_eq!(marker(&report, "snapshots"), "off");
        assert!(line_of(&report, "snapshots").contains("QEMU"), "{report}");
        assert!(!report.snapshots.in_use);
    }

    #[test]
    fn hardware_kvm_host_runs_builtin_even_without_qemu() {
        let files = Files::new();
        let mut inputs = files.inputs(Backend::Auto);
        inputs.qemu = "husk-no-such-qemu".into();
        let report = run_on(&inputs, &vmx_host());
        assert!(report.usable(), "{report}");
        assert_eq!(report.auto.backend, ConcreteBackend::Builtin);
        assert_eq!(report.configured.resolved.backend, ConcreteBackend::Builtin);
        assert_eq!(marker(&report, "KVM device"), "ok");
        assert_eq!(marker(&report, "virtualization"), "ok");
        assert_eq!(marker(&report, "QEMU"), "missing");
        assert!(line_of(&report, "QEMU").contains("not found in PATH"));
        assert_eq!(marker(&report, "guest kernel"), "ok");
        assert!(line_of(&report, "guest kernel").contains("(elf)"));
        assert_eq!(marker(&report, "auto picks"), "builtin");
        assert_eq!(marker(&report, "verdict"), "ok");
    }

    #[test]
    fn emulating_kvm_host_picks_qemu_with_tcg_and_reports_its_version() {
        let files = Files::new();
        let report = run_on(&files.inputs(Backend::Auto), &pvm_host());
        assert!(report.usable(), "{report}");
        assert!(report.virtualization.emulating_kvm);
        assert!(!report.virtualization.runs_linux_guests);
        assert_eq!(report.auto.backend, ConcreteBackend::Qemu);
        assert!(report.auto.reason.contains("kvm_pvm"));
        assert_eq!(
            report.qemu.version.as_deref(),
            Some("QEMU emulator version 9.9.9")
        );
        assert_eq!(report.qemu.accel, "tcg");
        assert_eq!(marker(&report, "virtualization"), "no");
        assert!(line_of(&report, "virtualization").contains("kvm_pvm"));
        assert_eq!(marker(&report, "QEMU"), "ok");
        assert_eq!(marker(&report, "auto picks"), "qemu");
        assert!(line_of(&report, "configured").contains("TCG"));
    }

    #[test]
    fn builtin_configured_on_emulating_kvm_is_not_usable() {
        let files = Files::new();
        let report = run_on(&files.inputs(Backend::Builtin), &pvm_host());
        assert!(!report.usable());
        assert_eq!(report.configured.resolved.backend, ConcreteBackend::Builtin);
        assert_eq!(report.configured.problems.len(), 1, "{report}");
        assert!(report.configured.problems[0].contains("kvm_pvm"));
        assert_eq!(marker(&report, "verdict"), "no");
        assert!(line_of(&report, "verdict").contains("kvm_pvm"));
    }

    #[test]
    fn qemu_needs_its_program_kernel_and_initrd() {
        let files = Files::new();
        let mut inputs = files.inputs(Backend::Qemu);
        inputs.qemu = files.dir.path().join("no-qemu");
        inputs.initrd = files.dir.path().join("no-initrd");
        fs::write(&inputs.kernel, vec![0x90u8; 1024]).unwrap();
        // Hardware KVM does not help a missing QEMU.
        let report = run_on(&inputs, &vmx_host());
        assert!(!report.usable());
        assert_eq!(report.configured.problems.len(), 3, "{report}");
        assert_eq!(marker(&report, "QEMU"), "missing");
        assert!(line_of(&report, "QEMU").contains("not an executable file"));
        assert_eq!(marker(&report, "guest kernel"), "no");
        assert!(line_of(&report, "guest kernel").contains("neither an ELF vmlinux nor a bzImage"));
        assert_eq!(marker(&report, "guest initrd"), "missing");
        assert_eq!(marker(&report, "configured"), "qemu");
        assert!(line_of(&report, "configured").contains("not usable"));
    }

    #[test]
    fn a_qemu_whose_version_fails_and_an_empty_initrd_are_problems() {
        let files = Files::new();
        let inputs = files.inputs(Backend::Qemu);
        fs::write(&inputs.qemu, "#!/bin/sh\nexit 1\n").unwrap();
        fs::write(&inputs.initrd, b"").unwrap();
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        fs::write(&inputs.kernel, bz).unwrap();
        let report = run_on(&inputs, &pvm_host());
        assert!(!report.usable());
        assert_eq!(marker(&report, "QEMU"), "no");
        assert!(line_of(&report, "QEMU").contains("--version failed"));
        assert_eq!(report.kernel.format, Some("bzimage"));
        assert_eq!(marker(&report, "guest initrd"), "no");
        assert!(line_of(&report, "guest initrd").contains("empty"));
    }

    #[test]
    fn kvm_device_missing_or_inaccessible_is_marked() {
        let files = Files::new();
        let report = run_on(
            &files.inputs(Backend::Auto),
            &host("svm", &["kvm_amd"], None),
        );
        assert_eq!(marker(&report, "KVM device"), "missing");
        assert_eq!(report.auto.backend, ConcreteBackend::Qemu);
        let report = run_on(
            &files.inputs(Backend::Auto),
            &host("svm", &["kvm_amd"], Some(false)),
        );
        assert!(report.kvm.present && !report.kvm.accessible);
        assert_eq!(marker(&report, "KVM device"), "no");
        assert!(report.auto.reason.contains("read-write"));
    }

    #[test]
    fn lines_are_aligned_in_columns() {
        let files = Files::new();
        let text = run_on(&files.inputs(Backend::Auto), &pvm_host()).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 9, "{text}");
        // The longest label is "virtualization", the longest marker "missing"
        // (the QEMU program here exists, so "builtin"/"missing" may not
        // appear: take the widest marker present).
        let marker_col = "virtualization".len() + 2;
        let markers: Vec<&str> = lines
            .iter()
            .map(|l| l[marker_col..].split(' ').next().unwrap())
            .collect();
        let detail_col = marker_col + markers.iter().map(|m| m.len()).max().unwrap() + 2;
        for (l, m) in lines.iter().zip(&markers) {
            assert!(!l[..marker_col].trim_end().contains("  "), "{l}");
            assert!(!m.is_empty(), "marker not in its column: {l}");
            assert_eq!(l[marker_col..detail_col].trim_end(), *m, "{l}");
            assert!(!l[detail_col..].starts_with(' '), "{l}");
        }
    }

    #[test]
    fn json_report_has_the_verdict_and_each_item() {
        let files = Files::new();
        let report = run_on(&files.inputs(Backend::Builtin), &pvm_host());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["configured"]["backend"], "builtin");
        assert_eq!(json["configured"]["resolved"]["backend"], "builtin");
        assert_eq!(json["configured"]["usable"], false);
        assert_eq!(json["auto"]["backend"], "qemu");
        assert_eq!(json["virtualization"]["emulating_kvm"], true);
        assert_eq!(json["kvm"]["accessible"], true);
        assert_eq!(json["kernel"]["format"], "elf");
        assert_eq!(json["qemu"]["version"], "QEMU emulator version 9.9.9");
    }

    #[test]
    fn this_host_report_follows_its_kvm() {
        let host = HostCheck::run();
        let files = Files::new();
        let report = run(&files.inputs(Backend::Auto));
        eprintln!("{report}");
        assert_eq!(
            report.virtualization.runs_linux_guests,
            host.can_run_linux_guests()
        );
        let expected = if host.can_run_linux_guests() {
            ConcreteBackend::Builtin
        } else {
            ConcreteBackend::Qemu
        };
        assert_eq!(report.auto.backend, expected);
        if host.pvm_only || !host.cpu_has_virtualization {
            // The development and CI machines: kvm_pvm, no VT-x/AMD-V.
            assert_eq!(report.auto.backend, ConcreteBackend::Qemu);
            assert_eq!(marker(&report, "virtualization"), "no");
            assert_eq!(marker(&report, "auto picks"), "qemu");
        }
        if host.pvm_only {
            assert!(report.virtualization.emulating_kvm);
            assert!(line_of(&report, "virtualization").contains("kvm_pvm"));
        }
    }
}
