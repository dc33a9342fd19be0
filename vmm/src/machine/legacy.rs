//! Legacy PC devices: the 16550 serial console and the i8042 reset line.

use std::convert::Infallible;
use std::io::{self, Write};
use std::sync::Arc;

use tracing::warn;
use vm_superio::serial::NoEvents;
use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use super::lifecycle::{Control, ExitReason};

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

/// Ends the VM with [`ExitReason::I8042Reset`] when the guest pulses the
/// reset line.
pub struct ResetTrigger(pub Arc<Control>);

impl Trigger for ResetTrigger {
    type E = Infallible;
    fn trigger(&self) -> Result<(), Infallible> {
        self.0.request_exit(ExitReason::I8042Reset);
        Ok(())
    }
}

/// The i8042 keyboard controller, mapped at ports 0x60..=0x64; only the
/// CPU reset command (0xfe to port 0x64) does anything.
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    /// A controller whose reset ends the VM through `control`.
    pub fn new(control: Arc<Control>) -> Self {
        Self(I8042Device::new(ResetTrigger(control)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.0.read(offset),
            (_, data) => data.fill(0xff),
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            // The reset trigger cannot fail.
            let _ = self.0.write(offset, *byte);
        }
    }
}
