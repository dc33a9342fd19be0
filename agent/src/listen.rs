//! Where the agent listens: `vsock:PORT` in the guest, `unix:PATH` in tests.

use std::path::PathBuf;
use std::str::FromStr;

/// A listening address given with `--listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A vsock port on any CID (the guest side).
    Vsock(u32),
    /// A Unix socket path (tests on the host).
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(port) = s.strip_prefix("vsock:") {
            let port = port
                .parse()
                .map_err(|_| format!("invalid vsock port {port:?}"))?;
            return Ok(ListenAddr::Vsock(port));
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("empty unix socket path".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        Err(format!(
            "invalid listen address {s:?}: expected vsock:PORT or unix:PATH"
        ))
    }
}

impl ListenAddr {
    /// The address in ttrpc's URL form.
    pub fn ttrpc_url(&self) -> String {
        match self {
            // u32::MAX is VMADDR_CID_ANY.
            ListenAddr::Vsock(port) => format!("vsock://{}:{port}", u32::MAX),
            ListenAddr::Unix(path) => format!("unix://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!("vsock:1024".parse(), Ok(ListenAddr::Vsock(1024)));
        assert_eq!(
            "unix:/run/a.sock".parse(),
            Ok(ListenAddr::Unix("/run/a.sock".into()))
        );
        for bad in ["vsock:x", "unix:", "tcp:1", "1024"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }
}
