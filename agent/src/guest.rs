//! Facts about the guest and settings of the guest as a whole: details,
//! clock, hostname, DNS, entropy.

use std::path::Path;

use husk_protocol::agent::GuestDetailsResponse;

use crate::error::{AgentError, Result};

/// The agent's version, the kernel's release, memory, CPUs and the boot's
/// stages so far.
pub fn details(is_init: bool) -> Result<GuestDetailsResponse> {
    let uname = nix::sys::utsname::uname().map_err(|e| AgentError::errno("uname", e))?;
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| AgentError::io("reading /proc/meminfo", e))?;
    Ok(GuestDetailsResponse {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: uname.release().to_string_lossy().into_owned(),
        mem_total_bytes: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0) * 1024,
        mem_available_bytes: meminfo_kib(&meminfo, "MemAvailable").unwrap_or(0) * 1024,
        online_cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        init: is_init,
        boot: protobuf::MessageField::some(
            crate::boot_stages::TIMELINE.report(crate::boot_stages::now_ns()),
        ),
        ..Default::default()
    })
}

fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Sets the wall clock.
pub fn set_date_time(sec: i64, usec: i64) -> Result<()> {
    if sec < 0 || !(0..1_000_000).contains(&usec) {
        return Err(AgentError::InvalidArgument(format!(
            "invalid time {sec}s {usec}us"
        )));
    }
    let time = nix::sys::time::TimeSpec::new(sec, usec * 1000);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, time)
        .map_err(|e| AgentError::errno("setting the clock", e))
}

/// Sets the guest's hostname.
pub fn set_hostname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || name.contains('\0') {
        return Err(AgentError::InvalidArgument(format!(
            "invalid hostname {name:?}"
        )));
    }
    nix::unistd::sethostname(name).map_err(|e| AgentError::errno("setting the hostname", e))
}

/// Most entropy bytes one request may add: 64 are what the host sends, the
/// bound keeps a hostile or broken host from making the agent copy much.
pub const MAX_ENTROPY_BYTES: usize = 512;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])` (linux/random.h).
const RNDADDENTROPY: u32 = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)` (linux/random.h, Linux 4.17+).
const RNDRESEEDCRNG: u32 = 0x5207;

/// Mixes `bytes` into the kernel's entropy pool, crediting them in full,
/// and makes the kernel reseed its CRNG from the pool now rather than at
/// its next periodic reseed: a guest restored from a snapshot must stop
/// producing the template's random numbers before any container runs.
/// Needs CAP_SYS_ADMIN (the agent is the guest's root). Empty is a no-op.
pub fn add_entropy(bytes: &[u8]) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    if bytes.len() > MAX_ENTROPY_BYTES {
        return Err(AgentError::InvalidArgument(format!(
            "{} entropy bytes, at most {MAX_ENTROPY_BYTES} are accepted",
            bytes.len()
        )));
    }
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; },
    // built in u32 words so the buffer is aligned for the kernel's reads.
    let mut info = vec![0u32; 2 + bytes.len().div_ceil(4)];
    let len = bytes.len() as u32; // at most MAX_ENTROPY_BYTES
    info[0] = len * 8;
    info[1] = len;
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(word);
    }
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| AgentError::io("opening /dev/urandom", e))?;
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is open; `info` is a complete rand_pool_info of
    // `buf_size` bytes that outlives the call, which only reads it.
    let added = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if added < 0 {
        return Err(AgentError::errno(
            "adding entropy (RNDADDENTROPY)",
            nix::errno::Errno::last(),
        ));
    }
    // SAFETY: the fd is open; the request takes no argument.
    let reseeded = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG as _) };
    if reseeded < 0 {
        return Err(AgentError::errno(
            "reseeding the CRNG (RNDRESEEDCRNG)",
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}

/// Writes the guest's resolv.conf.
pub fn set_dns(resolv_conf: &Path, nameservers: &[String]) -> Result<()> {
    let mut text = String::new();
    for server in nameservers {
        let addr: std::net::IpAddr = server
            .parse()
            .map_err(|_| AgentError::InvalidArgument(format!("invalid nameserver {server:?}")))?;
        text.push_str(&format!("nameserver {addr}\n"));
    }
    std::fs::write(resolv_conf, text)
        .map_err(|e| AgentError::io(format!("writing {}", resolv_conf.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo() {
        let text = "MemTotal:       16384 kB\nMemFree: 1 kB\nMemAvailable:   8192 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal"), Some(16384));
        assert_eq!(meminfo_kib(text, "MemAvailable"), Some(8192));
        assert_eq!(meminfo_kib(text, "Swap"), None);
    }

    #[test]
    fn refuses_bad_time_and_names() {
        assert!(set_date_time(-1, 0).is_err());
        assert!(set_date_time(0, 1_000_000).is_err());
        assert!(set_hostname("").is_err());
        assert!(set_hostname(&"h".repeat(65)).is_err());
    }

    #[test]
    fn too_much_entropy_is_refused_before_touching_the_pool() {
        let err = add_entropy(&[0u8; MAX_ENTROPY_BYTES + 1]).unwrap_err();
        assert!(matches!(err, AgentError::InvalidArgument(_)), "{err}");
        add_entropy(&[]).expect("nothing to add is fine anywhere");
    }

    #[test]
    fn dns_must_be_addresses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("resolv.conf");
        set_dns(&path, &["10.0.0.1".into(), "::1".into()]).expect("dns");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "nameserver 10.0.0.1\nnameserver ::1\n"
        );
        assert!(set_dns(&path, &["evil\nsearch x".into()]).is_err());
    }
}
