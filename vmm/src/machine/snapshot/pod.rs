//! KVM's state structures as plain bytes.
//!
//! The kvm-bindings structures are `#[repr(C)]` plain data (integers,
//! arrays of integers and unions of those): every bit pattern is a valid
//! value, so they are saved as their bytes and read back after checking
//! the length. The format version pins the layout (one kvm-bindings).

use super::SnapshotError;

/// Marker for a `#[repr(C)]` type of only integer fields (and arrays and
/// unions of them), for which any byte pattern of its size is a value.
///
/// # Safety
///
/// Implement only for such types: no references, bools, enums or padding
/// whose reading would be undefined.
pub unsafe trait Pod: Default {}

// SAFETY: each of these kvm-bindings types is #[repr(C)] and made of
// integers, integer arrays and unions of integer arrays only.
unsafe impl Pod for kvm_bindings::kvm_regs {}
unsafe impl Pod for kvm_bindings::kvm_sregs {}
unsafe impl Pod for kvm_bindings::kvm_fpu {}
unsafe impl Pod for kvm_bindings::kvm_xsave {}
unsafe impl Pod for kvm_bindings::kvm_xcrs {}
unsafe impl Pod for kvm_bindings::kvm_debugregs {}
unsafe impl Pod for kvm_bindings::kvm_lapic_state {}
unsafe impl Pod for kvm_bindings::kvm_mp_state {}
unsafe impl Pod for kvm_bindings::kvm_vcpu_events {}
unsafe impl Pod for kvm_bindings::kvm_cpuid_entry2 {}
unsafe impl Pod for kvm_bindings::kvm_irqchip {}
unsafe impl Pod for kvm_bindings::kvm_pit_state2 {}
unsafe impl Pod for kvm_bindings::kvm_clock_data {}

/// The bytes of `value`.
pub fn to_bytes<T: Pod>(value: &T) -> Vec<u8> {
    let size = std::mem::size_of::<T>();
    // SAFETY: `value` is a valid T of `size` bytes; Pod types have no
    // uninitialised padding that matters for a copy of their bytes.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size) }.to_vec()
}

/// A `T` from exactly `size_of::<T>()` bytes; `what` names it in the error.
pub fn from_bytes<T: Pod>(bytes: &[u8], what: &str) -> Result<T, SnapshotError> {
    let size = std::mem::size_of::<T>();
    if bytes.len() != size {
        return Err(SnapshotError::Malformed(format!(
            "{what} is {} bytes, expected {size}",
            bytes.len()
        )));
    }
    let mut value = T::default();
    // SAFETY: the lengths match and any byte pattern is a valid Pod value.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), size)
    };
    Ok(value)
}

/// Checks that `bytes` could be read as a `T` (the loader validates the
/// whole file before touching KVM).
pub fn check<T: Pod>(bytes: &[u8], what: &str) -> Result<(), SnapshotError> {
    from_bytes::<T>(bytes, what).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_regs;

    #[test]
    fn round_trips_and_refuses_wrong_lengths() {
        let regs = kvm_regs {
            rip: 0x1234,
            rax: 7,
            ..Default::default()
        };
        let bytes = to_bytes(&regs);
        let back: kvm_regs = from_bytes(&bytes, "regs").unwrap();
        assert_eq!((back.rip, back.rax), (0x1234, 7));
        let err = from_bytes::<kvm_regs>(&bytes[1..], "regs").unwrap_err();
        assert!(err.to_string().contains("regs is"), "{err}");
        assert!(from_bytes::<kvm_regs>(&[], "regs").is_err());
    }
}
