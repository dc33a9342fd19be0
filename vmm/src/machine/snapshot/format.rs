//! The state file: a fixed header, then the machine state as JSON.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "HUSKSNAP"
//!      8     4  format version (u32 LE)
//!     12     8  body length in bytes (u64 LE)
//!     20     4  CRC-32 of the body (u32 LE)
//!     24     n  body: MachineState as JSON
//! ```
//!
//! The file is input: the loader checks the header, the exact length, the
//! checksum, then every count and size in the body, before any of it
//! reaches KVM or a device. Then it checks the snapshot fits this host,
//! this husk build and what the caller asked for.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cpu::VcpuState;
use super::host::HostIdentity;
use super::irqchip::VmState;
use super::SnapshotError;
use crate::machine::layout::MAX_VIRTIO_DEVICES;
use crate::machine::legacy::SerialState;
use crate::machine::memory::{MAX_MEMORY_MIB, MIN_MEMORY_MIB};
use crate::machine::mptable::MAX_VCPUS;
use crate::machine::regs::EntryPoint;
use crate::virtio::TransportState;

/// The first bytes of every state file.
pub const MAGIC: [u8; 8] = *b"HUSKSNAP";
/// The state file layout this build writes and reads; bumped on any change
/// of the body's fields or of the kvm-bindings structures saved as bytes.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
/// Bodies are a few hundred KiB at most (the XSAVE area is 4 KiB per vCPU).
const MAX_BODY_LEN: u64 = 16 << 20;

/// Where the kernel was loaded (kept so the restored VM reports it too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// Entry address.
    pub entry: u64,
    /// Whether the entry was PVH (32-bit) rather than the 64-bit protocol.
    pub pvh: bool,
    /// First byte after the kernel.
    pub kernel_end: u64,
    /// Guest address and size of the initrd.
    pub initrd: Option<(u64, u64)>,
}

impl BootState {
    /// The entry point as the machine models it.
    pub fn entry_point(&self) -> EntryPoint {
        if self.pvh {
            EntryPoint::Pvh32(self.entry)
        } else {
            EntryPoint::Linux64(self.entry)
        }
    }
}

/// Everything saved about a paused machine except its RAM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    /// The husk version that wrote it (`CARGO_PKG_VERSION`).
    pub husk_version: String,
    /// The host it was made on.
    pub host: HostIdentity,
    /// What the caller made it from (kernel, initrd, vCPUs, memory...):
    /// opaque here, compared on load.
    pub key: String,
    /// vCPU count.
    pub vcpus: u32,
    /// Guest RAM in MiB; the memory file has exactly this size.
    pub memory_mib: u64,
    /// Where the kernel was loaded.
    pub boot: BootState,
    /// Interrupt controllers, PIT, kvmclock.
    pub vm: VmState,
    /// One entry per vCPU, by index.
    pub cpus: Vec<VcpuState>,
    /// The COM1 UART.
    pub serial: SerialState,
    /// One virtio-mmio transport per device, by index.
    pub transports: Vec<TransportState>,
}

impl MachineState {
    /// Checks every count and size (the file is input).
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let malformed = |what: String| Err(SnapshotError::Malformed(what));
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return malformed(format!("{} vCPUs", self.vcpus));
        }
        if self.cpus.len() != self.vcpus as usize {
            return malformed(format!(
                "{} vCPU states for {} vCPUs",
                self.cpus.len(),
                self.vcpus
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return malformed(format!("{} MiB of guest memory", self.memory_mib));
        }
        if self.transports.len() > MAX_VIRTIO_DEVICES {
            return malformed(format!("{} virtio devices", self.transports.len()));
        }
        self.vm.validate()?;
        for (index, cpu) in self.cpus.iter().enumerate() {
            cpu.validate()
                .map_err(|e| SnapshotError::Malformed(format!("vCPU {index}: {e}")))?;
        }
        for (index, transport) in self.transports.iter().enumerate() {
            transport.validate().map_err(|what| {
                SnapshotError::Malformed(format!("virtio device {index}: {what}"))
            })?;
        }
        self.serial.validate().map_err(SnapshotError::Malformed)
    }

    /// Refuses a snapshot from another husk build or host, or for another
    /// key than `expected_key`.
    pub fn check_compatible(
        &self,
        expected_key: &str,
        host: &HostIdentity,
    ) -> Result<(), SnapshotError> {
        let here = env!("CARGO_PKG_VERSION");
        if self.husk_version != here {
            return Err(SnapshotError::HuskVersion {
                found: self.husk_version.clone(),
                expected: here.into(),
            });
        }
        host.check_against(&self.host)?;
        if self.key != expected_key {
            return Err(SnapshotError::Key {
                saved: self.key.clone(),
                expected: expected_key.into(),
            });
        }
        Ok(())
    }

    /// The state file's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let body = serde_json::to_vec(self)
            .map_err(|e| SnapshotError::Malformed(format!("cannot encode: {e}")))?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parses and validates a state file read from `path`.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self, SnapshotError> {
        let length = |expected: u64| SnapshotError::Length {
            path: path.to_owned(),
            expected,
            found: bytes.len() as u64,
        };
        let Some(header) = bytes.get(..HEADER_LEN) else {
            if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] == MAGIC {
                return Err(length(HEADER_LEN as u64));
            }
            return Err(SnapshotError::NotASnapshot(path.to_owned()));
        };
        if header[..8] != MAGIC {
            return Err(SnapshotError::NotASnapshot(path.to_owned()));
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(SnapshotError::FormatVersion {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[12..20]);
        let body_len = u64::from_le_bytes(len);
        if body_len > MAX_BODY_LEN {
            return Err(SnapshotError::Malformed(format!(
                "body of {body_len} bytes announced, at most {MAX_BODY_LEN} accepted"
            )));
        }
        let total = HEADER_LEN as u64 + body_len;
        if bytes.len() as u64 != total {
            return Err(length(total));
        }
        let body = &bytes[HEADER_LEN..];
        if crc32fast::hash(body) != u32_at(20) {
            return Err(SnapshotError::Checksum(path.to_owned()));
        }
        let state: Self =
            serde_json::from_slice(body).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        state.validate()?;
        Ok(state)
    }

    /// Reads and validates the state file at `path`.
    pub fn read(path: &Path) -> Result<Self, SnapshotError> {
        let file = std::fs::File::open(path).map_err(SnapshotError::io(path))?;
        let len = file.metadata().map_err(SnapshotError::io(path))?.len();
        if len > MAX_BODY_LEN + HEADER_LEN as u64 {
            return Err(SnapshotError::Malformed(format!(
                "state file of {len} bytes is larger than any snapshot"
            )));
        }
        let bytes = std::fs::read(path).map_err(SnapshotError::io(path))?;
        Self::decode(&bytes, path)
    }

    /// Writes the state file at `path` atomically (a temporary file renamed
    /// over it once synced).
    pub fn write(&self, path: &Path) -> Result<(), SnapshotError> {
        use std::io::Write;
        let tmp = super::temp_path(path);
        let bytes = self.encode()?;
        let mut file = std::fs::File::create(&tmp).map_err(SnapshotError::io(&tmp))?;
        file.write_all(&bytes).map_err(SnapshotError::io(&tmp))?;
        file.sync_all().map_err(SnapshotError::io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(SnapshotError::io(path))
    }
}

#[cfg(test)]
mod tests;
