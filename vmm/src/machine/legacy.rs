//! The 16550 serial console (vm-superio's UART), and the irqfd trigger
//! legacy devices raise their interrupts with.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use tracing::warn;
use vm_superio::serial::{NoEvents, SerialState as UartState};
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

/// The UART's registers and unread input, as saved in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// DLL, DLH, IER, IIR, LCR, LSR, MCR, MSR, SCR in that order.
    pub registers: [u8; 9],
    /// Received bytes the guest has not read.
    pub in_buffer: Vec<u8>,
}

/// The UART's receive FIFO size (vm-superio's).
const FIFO_SIZE: usize = 64;

impl SerialState {
    /// Checks the FIFO fits (the state comes from a file).
    pub fn validate(&self) -> Result<(), String> {
        if self.in_buffer.len() > FIFO_SIZE {
            return Err(format!(
                "serial input of {} bytes, the FIFO holds {FIFO_SIZE}",
                self.in_buffer.len()
            ));
        }
        Ok(())
    }
}

impl SerialDevice {
    /// The UART's state.
    pub fn state(&self) -> SerialState {
        let s = self.0.state();
        SerialState {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// Replaces the UART by one in `state`, keeping its interrupt and output.
    pub fn restore(&mut self, state: &SerialState) -> Result<(), String> {
        state.validate()?;
        let [dll, dlh, ier, iir, lcr, lsr, mcr, msr, scr] = state.registers;
        let uart = UartState {
            baud_divisor_low: dll,
            baud_divisor_high: dlh,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: state.in_buffer.clone(),
        };
        // Swap a placeholder in to take the trigger and writer out.
        let placeholder = Serial::new(
            IrqTrigger(EventFd::new(0).map_err(|e| e.to_string())?),
            Box::new(io::sink()) as Box<dyn Write + Send>,
        );
        let old = std::mem::replace(&mut self.0, placeholder);
        let trigger = IrqTrigger(
            old.interrupt_evt()
                .0
                .try_clone()
                .map_err(|e| e.to_string())?,
        );
        let out = old.into_writer();
        self.0 = Serial::from_state(&uart, trigger, NoEvents, out)
            .map_err(|e| format!("serial state: {e:?}"))?;
        Ok(())
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
