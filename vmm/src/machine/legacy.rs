//! The 16550 serial console (vm-superio's UART), and the irqfd trigger
//! legacy devices raise their interrupts with.

use std::io::{self, Write};

use tracing::warn;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// Raises an interrupt by writing an eventfd registered as an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// COM1: a 16550 UART whose output goes to the console sink.
pub struct SerialDevice(Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>);

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self(Serial::new(IrqTrigger(irq), out))
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.0.read(offset),
            (_, data) => data.fill(0xff),
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.0.write(offset, *byte) {
                warn!("serial console: {e:?}");
            }
        }
    }
}
