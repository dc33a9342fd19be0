//! What husk's benchmarks share: medians, running the peer OCI runtimes
//! (runc, crun) that husk is measured beside, a process's memory by mapping
//! (`/proc/PID/smaps`), and the time of a VM's first guest instruction from
//! the kernel's `kvm:kvm_entry` tracepoint.
//!
//! crun 1.8 refuses this host's hybrid cgroup layout (cgroup v1 with a
//! cgroup2 hierarchy beside it), so crun runs in a private mount namespace
//! with a bare cgroup2 mount and its cgroup manager disabled. It then does
//! less work than runc and husk (it creates no cgroup at all), plus the cost
//! of `unshare` and one `sh`: the comparison favours it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The peer runtimes this host has, of `crun` and `runc`.
pub fn peers() -> Vec<&'static str> {
    ["crun", "runc"]
        .into_iter()
        .filter(|p| Command::new(p).arg("--version").output().is_ok())
        .collect()
}

/// `runtime ARGS`, set up so that it works on this host (see the module doc).
pub fn peer_command(runtime: &str, args: &[&str]) -> Command {
    if runtime == "crun" {
        let mut cmd = Command::new("unshare");
        // The arguments go through "$@", never through the shell's parser.
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && \
                 exec crun --cgroup-manager=disabled \"$@\"",
            )
            .arg("sh")
            .args(args);
        cmd
    } else {
        let mut cmd = Command::new(runtime);
        cmd.args(args);
        cmd
    }
}

/// `runtime run --bundle BUNDLE ID` to completion, without stdio; its wall
/// time, or what went wrong. A failed run's container is deleted.
pub fn peer_run(runtime: &str, bundle: &Path, id: &str) -> Result<Duration, String> {
    let bundle = bundle.to_str().ok_or("bundle path is not UTF-8")?;
    let started = Instant::now();
    let out = peer_command(runtime, &["run", "--bundle", bundle, id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running {runtime}: {e}"))?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        peer_delete(runtime, id);
        return Err(format!(
            "{runtime} run {id}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(elapsed)
}

/// Forcibly deletes `runtime`'s container `id`, if it is there.
pub fn peer_delete(runtime: &str, id: &str) {
    let _ = peer_command(runtime, &["delete", "--force", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The median of `values` (the upper one of an even count).
///
/// # Panics
/// If `values` is empty.
pub fn median<T: Ord + Copy>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// One mapping of a process, from `/proc/PID/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Its size in bytes (end − start).
    pub size: u64,
    /// Its permissions (`rw-p`, `r-xp`, ...).
    pub perms: String,
    /// The file or pseudo-name (`[heap]`, `/memfd:mem (deleted)`); empty for
    /// an anonymous mapping.
    pub name: String,
    /// Resident KiB.
    pub rss_kib: u64,
    /// Proportional set size in KiB: resident pages divided by the number of
    /// processes mapping each.
    pub pss_kib: u64,
    /// The two-letter `VmFlags` (`rd wr mr mw me nr ...`).
    pub flags: Vec<String>,
}

/// Every mapping of process `pid`.
pub fn mappings(pid: i32) -> Result<Vec<Mapping>, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("/proc/{pid}/smaps: {e}"))?;
    Ok(parse_smaps(&text))
}

/// The mappings described by the text of an smaps file.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut found: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        // A header: `start-end perms offset dev inode [name]`.
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                let perms = words.next().unwrap_or("").to_owned();
                // offset, device, inode; the name is the rest (it may hold
                // spaces: "/memfd:mem (deleted)").
                let name = line
                    .splitn(6, char::is_whitespace)
                    .nth(5)
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                found.push(Mapping {
                    size: b.saturating_sub(a),
                    perms,
                    name,
                    rss_kib: 0,
                    pss_kib: 0,
                    flags: Vec::new(),
                });
                continue;
            }
        }
        let Some(current) = found.last_mut() else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        let kib = rest
            .first()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        match first {
            "Rss:" => current.rss_kib = kib,
            "Pss:" => current.pss_kib = kib,
            "VmFlags:" => current.flags = rest.iter().map(|f| (*f).to_owned()).collect(),
            _ => {}
        }
    }
    found
}

/// The kernel's `kvm:kvm_entry` tracepoint (one event each time a vCPU
/// enters the guest), recorded with the `mono` clock, which is
/// `CLOCK_MONOTONIC`, so that the first entry of a VM can be set against
/// the bench's own clock ([`monotonic_now`]). The first entry after
/// [`clear`](Self::clear) is the first instruction the next VM runs, as long
/// as no other VM runs meanwhile.
///
/// The ring buffer is set not to overwrite: once full it drops the newest
/// events, keeping the first. The tracing settings this changes are put back
/// on drop.
pub struct KvmEntryTrace {
    dir: PathBuf,
    saved: Vec<(&'static str, String)>,
}

/// The tracing files [`KvmEntryTrace`] sets, and to what.
const TRACE_SETTINGS: [(&str, &str); 5] = [
    ("trace_clock", "mono"),
    ("buffer_size_kb", "256"),
    ("options/overwrite", "0"),
    ("events/kvm/kvm_entry/enable", "1"),
    ("tracing_on", "1"),
];

impl KvmEntryTrace {
    /// Starts recording, or says why it cannot (no tracefs mounted, no KVM
    /// module, not root).
    pub fn start() -> Result<Self, String> {
        let dir = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("trace_clock").exists())
            .ok_or("no tracefs mounted at /sys/kernel/tracing")?;
        if !dir.join("events/kvm/kvm_entry").exists() {
            return Err("no kvm:kvm_entry tracepoint (kvm module not loaded?)".into());
        }
        let mut trace = Self {
            dir,
            saved: Vec::new(),
        };
        for (file, value) in TRACE_SETTINGS {
            let old = trace.read(file)?;
            let old = match file {
                // "local [global] counter ...": the selected one.
                "trace_clock" => old
                    .split_whitespace()
                    .find_map(|c| c.strip_prefix('[')?.strip_suffix(']'))
                    .unwrap_or("local")
                    .to_owned(),
                // "7 (expanded: 1408)" before the buffer is first used:
                // 1408 is what it would have been.
                _ => old
                    .trim()
                    .trim_end_matches(')')
                    .rsplit(' ')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            };
            trace.write(file, value)?;
            trace.saved.push((file, old));
        }
        Ok(trace)
    }

    fn read(&self, file: &str) -> Result<String, String> {
        std::fs::read_to_string(self.dir.join(file))
            .map_err(|e| format!("{}: {e}", self.dir.join(file).display()))
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        std::fs::write(self.dir.join(file), value)
            .map_err(|e| format!("{}: {e}", self.dir.join(file).display()))
    }

    /// Empties the buffer (writing `trace` with truncation does that).
    pub fn clear(&self) -> Result<(), String> {
        self.write("trace", "")
    }

    /// The `CLOCK_MONOTONIC` time of the first guest entry since the last
    /// [`clear`](Self::clear), if any.
    pub fn first_entry(&self) -> Result<Option<Duration>, String> {
        Ok(first_kvm_entry(&self.read("trace")?))
    }
}

impl Drop for KvmEntryTrace {
    fn drop(&mut self) {
        // In reverse: the event goes off before the buffer and clock are
        // put back.
        for (file, old) in self.saved.iter().rev() {
            let _ = std::fs::write(self.dir.join(file), old);
        }
        let _ = std::fs::write(self.dir.join("trace"), "");
    }
}

/// The earliest `kvm_entry` timestamp in the text of a `trace` file.
pub fn first_kvm_entry(trace: &str) -> Option<Duration> {
    trace
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (before, _) = l.split_once(" kvm_entry:")?;
            let stamp = before.split_whitespace().last()?.strip_suffix(':')?;
            parse_seconds(stamp)
        })
        .min()
}

/// `SECONDS.FRACTION` (as tracefs prints its timestamps) exactly.
fn parse_seconds(text: &str) -> Option<Duration> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = format!("{frac:0<9}").parse().ok()?;
    Some(Duration::new(secs.parse().ok()?, nanos))
}

/// `CLOCK_MONOTONIC` now, the clock [`KvmEntryTrace`] records with.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which ts is.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The positive number in environment variable `name`, or `default` when
/// it is unset; anything else is an error naming the variable.
pub fn env_number(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{name}={v}: expected a positive number")),
        Err(_) => Ok(default),
    }
}

/// A temporary directory under /tmp named `prefix...`: short, because
/// the sandbox sockets of a bench live under it (108 bytes at most).
pub fn short_tempdir(prefix: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .map_err(|e| format!("temporary directory: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_middle_value() {
        assert_eq!(median(&[3, 1, 2]), 2);
        assert_eq!(median(&[4, 1, 3, 2]), 3);
        assert_eq!(median(&[7]), 7);
    }

    #[test]
    fn smaps_mappings_keep_names_with_spaces_sizes_and_flags() {
        let text = "\
7f0000000000-7f0010000000 rw-s 00000000 00:01 1234                       /memfd:mem (deleted)
Size:             262144 kB
Rss:               52224 kB
Pss:               26112 kB
VmFlags: rd wr sh mr mw me ms sd
7f0010000000-7f0010021000 rw-p 00000000 00:00 0 
Rss:                  12 kB
Pss:                  12 kB
VmFlags: rd wr mr mw me nr
";
        let maps = parse_smaps(text);
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].name, "/memfd:mem (deleted)");
        assert_eq!(maps[0].size, 256 << 20);
        assert_eq!(maps[0].perms, "rw-s");
        assert_eq!((maps[0].rss_kib, maps[0].pss_kib), (52224, 26112));
        assert_eq!(maps[1].name, "");
        assert_eq!(maps[1].size, 0x21000);
        assert!(maps[1].flags.iter().any(|f| f == "nr"));
    }

    #[test]
    fn first_kvm_entry_is_the_earliest_timestamp_of_any_cpu() {
        let trace = "\
# tracer: nop
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
 qemu-system-x86-142     [001] d..1.     7.880791: kvm_entry: vcpu 0, rip 0xfff0
 qemu-system-x86-142     [000] d..1.     7.880790: kvm_exit: reason EXIT_IO
 vcpu0-150     [000] d..1.     7.500002: kvm_entry: vcpu 1, rip 0x0
";
        assert_eq!(first_kvm_entry(trace), Some(Duration::new(7, 500_002_000)));
        assert_eq!(first_kvm_entry("# tracer: nop\n"), None);
        assert_eq!(parse_seconds("12.5"), Some(Duration::from_millis(12_500)));
        assert_eq!(parse_seconds("1.x"), None);
    }

    #[test]
    fn crun_runs_in_a_private_cgroup2_namespace_with_its_arguments_intact() {
        let cmd = peer_command("crun", &["run", "--bundle", "/b x", "id"]);
        assert_eq!(cmd.get_program(), "unshare");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert!(args[5].contains("mount -t cgroup2"));
        assert!(args[5].contains("--cgroup-manager=disabled"));
        assert_eq!(&args[6..], ["sh", "run", "--bundle", "/b x", "id"]);
        let runc = peer_command("runc", &["delete", "id"]);
        assert_eq!(runc.get_program(), "runc");
        assert_eq!(runc.get_args().count(), 2);
    }
}
