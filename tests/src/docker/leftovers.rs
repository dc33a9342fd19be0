//! Finding what a test's daemons and containers left on the host: processes,
//! mounts, files. Everything is matched by *markers* (the test's private
//! directory, its cgroup parent, its container IDs), so processes and mounts
//! of other users of the machine are never reported or touched.

use std::fmt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// A process that mentions a marker in its command line, environment,
/// working directory or cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Its PID.
    pub pid: i32,
    /// Its executable's file name (`qemu-system-x86_64`, `husk`, ...).
    pub exe: String,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({}): {}", self.pid, self.exe, self.cmdline)
    }
}

/// Processes other than this one that mention any of `markers`. The
/// environment counts because daemons pass theirs down to shims, runtimes
/// and VMs that may have left the directories and cgroups that name them.
pub fn processes(markers: &[String]) -> Vec<Process> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<Process> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| inspect(pid, markers))
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// [`processes`] once they had until `timeout` to exit by themselves:
/// shims and conmon linger a moment after their container is removed.
pub fn settled_processes(markers: &[String], timeout: Duration) -> Vec<Process> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = processes(markers);
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn inspect(pid: i32, markers: &[String]) -> Option<Process> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let raw = std::fs::read(dir.join("cmdline")).ok()?;
    // Kernel threads and zombies have an empty command line: nothing to leak.
    if raw.is_empty() {
        return None;
    }
    let cmdline = String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .replace('\0', " ");
    let cwd = std::fs::read_link(dir.join("cwd"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
    let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
    let environ = String::from_utf8_lossy(&environ);
    let mentions = |text: &str| markers.iter().any(|m| text.contains(m.as_str()));
    if ![&cmdline, &cwd, &cgroup, environ.as_ref()]
        .iter()
        .any(|text| mentions(text))
    {
        return None;
    }
    let exe = std::fs::read_link(dir.join("exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| cmdline.split(' ').next().unwrap_or_default().to_owned());
    Some(Process { pid, exe, cmdline })
}

/// Mount points (from this process's mountinfo) under `root` or naming any
/// of `markers`, deepest first so they can be unmounted in order.
pub fn mounts(root: &Path, markers: &[String]) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .filter(|point| {
            Path::new(point).starts_with(root) || markers.iter().any(|m| point.contains(m.as_str()))
        })
        .map(PathBuf::from)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(digits) = octal {
            out.push(
                digits
                    .iter()
                    .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Entries named any of `names` under `dir`, at most `depth` levels down
/// (symlinks are not followed).
pub fn entries_named(dir: &Path, names: &[String], depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if names.iter().any(|n| entry.file_name() == n.as_str()) {
            found.push(path);
        } else if depth > 1 && entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            found.extend(entries_named(&path, names, depth - 1));
        }
    }
    found
}

/// Child cgroups (containers' cgroups) left under the cgroup `parent`, in
/// every hierarchy (cgroup v1 controllers, or the v2 unified tree), deepest
/// first; `parent` itself is not listed.
pub fn cgroups(parent: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in cgroup_parents(parent) {
        collect_dirs(&dir, &mut found);
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// The directories of cgroup `parent` in every hierarchy that has one.
pub fn cgroup_parents(parent: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![base.join(parent)];
    if let Ok(entries) = std::fs::read_dir(base) {
        // Co-mounted v1 controllers (cpu and cpuacct -> cpu,cpuacct) appear
        // under more than one name: only the real directory counts.
        dirs.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| !t.is_symlink()))
                .map(|e| e.path().join(parent)),
        );
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

fn collect_dirs(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            let path = entry.path();
            collect_dirs(&path, found);
            found.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Says it has started, then waits on its (piped, never written) stdin
    /// until it is killed, staying the same process with the same arguments.
    const READY_THEN_WAIT: &str = "echo ready; read line";

    /// Spawns `command` and returns once it has printed its first line: by
    /// then it has exec'd, so /proc shows its own command line and
    /// environment rather than the forked test process's.
    fn started(command: &mut Command) -> std::process::Child {
        use std::io::BufRead;
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        child
    }

    #[test]
    fn mountinfo_octal_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn a_process_is_found_by_a_marker_in_its_command_line_only() {
        let marker = format!("husk-leftover-marker-{}", std::process::id());
        let mut child = started(Command::new("sh").args(["-c", READY_THEN_WAIT, &marker]));
        let found = processes(std::slice::from_ref(&marker));
        let other = processes(&["husk-no-such-marker-anywhere".to_owned()]);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            found.iter().any(|p| p.pid == child.id() as i32),
            "{found:?}"
        );
        assert!(other.is_empty(), "{other:?}");
    }

    #[test]
    fn a_process_is_found_by_a_marker_in_its_environment() {
        let marker = format!("husk-leftover-env-{}", std::process::id());
        let mut child = started(
            Command::new("sh")
                .args(["-c", READY_THEN_WAIT])
                .env("HUSK_TEST_MARKER", &marker),
        );
        let found = processes(std::slice::from_ref(&marker));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            found.iter().any(|p| p.pid == child.id() as i32),
            "{found:?}"
        );
    }

    #[test]
    fn entries_are_found_by_name_down_to_a_depth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vm/x/shared/abc")).unwrap();
        std::fs::create_dir_all(dir.path().join("abc")).unwrap();
        let names = ["abc".to_owned()];
        let mut found = entries_named(dir.path(), &names, 4);
        found.sort();
        assert_eq!(
            found,
            [dir.path().join("abc"), dir.path().join("vm/x/shared/abc")]
        );
        assert_eq!(
            entries_named(dir.path(), &names, 3),
            [dir.path().join("abc")]
        );
    }

    #[test]
    fn mounts_under_a_root_are_listed_deepest_first() {
        // The root file system is mounted everywhere, so "/" holds at least it.
        let all = mounts(Path::new("/"), &[]);
        assert!(all.iter().any(|p| p == Path::new("/")), "{all:?}");
        let depths: Vec<usize> = all.iter().map(|p| p.components().count()).collect();
        assert!(depths.windows(2).all(|w| w[0] >= w[1]), "{all:?}");
        assert!(mounts(Path::new("/husk-no-such-dir"), &[]).is_empty());
    }
}
