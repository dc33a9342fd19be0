//! What a snapshot is tied to on the host: the CPU model and the kernel
//! (its KVM). Restoring on another CPU could hand the guest features the
//! CPU lacks; another KVM may save and load state differently.

use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// The host properties a snapshot must be restored under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIdentity {
    /// CPUID vendor string (leaf 0).
    pub cpu_vendor: String,
    /// CPUID leaf 1 EAX: family, model, stepping.
    pub cpu_signature: u32,
    /// CPUID brand string (leaves 0x8000_0002..4), trimmed.
    pub cpu_brand: String,
    /// The host kernel release (`uname -r`): its KVM saves and loads state.
    pub kernel_release: String,
}

impl HostIdentity {
    /// This host's identity.
    pub fn detect() -> Self {
        let leaf0 = cpuid(0);
        let vendor: Vec<u8> = [leaf0[1], leaf0[3], leaf0[2]]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        let brand = if cpuid(0x8000_0000)[0] >= 0x8000_0004 {
            let bytes: Vec<u8> = (0x8000_0002..=0x8000_0004u32)
                .flat_map(cpuid)
                .flat_map(u32::to_le_bytes)
                .collect();
            String::from_utf8_lossy(&bytes)
                .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_owned()
        } else {
            String::new()
        };
        Self {
            cpu_vendor: String::from_utf8_lossy(&vendor).into_owned(),
            cpu_signature: cpuid(1)[0],
            cpu_brand: brand,
            kernel_release: kernel_release(),
        }
    }

    /// Refuses a snapshot made under `saved` when this host differs.
    pub fn check_against(&self, saved: &HostIdentity) -> Result<(), SnapshotError> {
        let differs = |what, saved: String, here: String| {
            if saved == here {
                Ok(())
            } else {
                Err(SnapshotError::Host { what, saved, here })
            }
        };
        differs(
            "CPU vendor",
            saved.cpu_vendor.clone(),
            self.cpu_vendor.clone(),
        )?;
        differs(
            "CPU signature",
            format!("{:#x}", saved.cpu_signature),
            format!("{:#x}", self.cpu_signature),
        )?;
        differs("CPU model", saved.cpu_brand.clone(), self.cpu_brand.clone())?;
        differs(
            "host kernel",
            saved.kernel_release.clone(),
            self.kernel_release.clone(),
        )
    }
}

fn cpuid(leaf: u32) -> [u32; 4] {
    // SAFETY: CPUID exists on every x86_64 CPU (safe from Rust 1.87 on).
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid(leaf) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_host_passes_and_each_difference_is_named() {
        let here = HostIdentity::detect();
        assert!(!here.cpu_vendor.is_empty());
        here.check_against(&here.clone()).unwrap();
        let mut other = here.clone();
        other.cpu_signature ^= 0x10;
        let err = here.check_against(&other).unwrap_err().to_string();
        assert!(err.contains("CPU signature"), "{err}");
        let mut other = here.clone();
        other.kernel_release = "0.0.1-other".into();
        let err = here.check_against(&other).unwrap_err().to_string();
        assert!(
            err.contains("host kernel") && err.contains("0.0.1-other"),
            "{err}"
        );
    }
}
