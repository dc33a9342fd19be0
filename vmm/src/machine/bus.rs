//! PIO and MMIO dispatch: guest accesses that exit to the VMM are routed to
//! the device whose range contains the address.

use std::sync::{Arc, Mutex};

use tracing::trace;

use crate::virtio::MmioTransport;

/// A device reachable through port or memory-mapped I/O.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset` within the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset` within the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data)
    }
}

/// A shared device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Non-overlapping address ranges mapped to devices.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    /// Maps `[base, base + len)` to `device`; false if it overlaps a range
    /// already mapped or is empty.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> bool {
        let Some(end) = base.checked_add(len).filter(|_| len > 0) else {
            return false;
        };
        if self.ranges.iter().any(|(b, l, _)| base < b + l && *b < end) {
            return false;
        }
        self.ranges.push((base, len, device));
        true
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        self.ranges
            .iter()
            .find(|(b, l, _)| addr >= *b && addr - b < *l)
            .map(|(b, _, d)| (addr - b, d))
    }

    /// Routes a read; unclaimed addresses read as all ones, like open bus.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((offset, dev)) => lock(dev).read(offset, data),
            None => {
                trace!(addr, "read from unclaimed address");
                data.fill(0xff);
            }
        }
    }

    /// Routes a write; writes to unclaimed addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr) {
            Some((offset, dev)) => lock(dev).write(offset, data),
            None => trace!(addr, "write to unclaimed address"),
        }
    }
}

/// A device whose lock was poisoned by a panicking vCPU is still usable:
/// its registers are plain data.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlap() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::default();
        assert!(bus.insert(0x3f8, 8, dev.clone()));
        assert!(!bus.insert(0x3ff, 1, dev.clone()));
        assert!(!bus.insert(0x100, 0, dev.clone()));
        bus.write(0x3f9, &[7]);
        let mut data = [0u8; 1];
        bus.read(0x3fa, &mut data);
        assert_eq!(data, [2]);
        bus.read(0x400, &mut data);
        assert_eq!(data, [0xff]);
        assert_eq!(dev.lock().unwrap().0, vec![(1, vec![7])]);
    }
}
