//! The i8042 PS/2 controller at ports 0x60 (data) and 0x64 (status and
//! command), with nothing plugged into its keyboard and mouse ports.
//!
//! Its one job on this machine is the reset line: Linux's `reboot=k` waits
//! for the input buffer to be empty, writes 0xfe to port 0x64, and the VM
//! ends with [`ExitReason::I8042Reset`]. But Linux's i8042 driver also
//! probes the controller at boot, polling the status register for every
//! command with a 0.5 s timeout; a controller that answers 0 to every read
//! (what vm-superio's `I8042Device` does) makes each of those polls time
//! out ("Can't read CTR while initializing i8042"), which takes seconds
//! under nested virtualization. So this is a small but correct controller
//! for what that probe does:
//!
//! - status register: OBF when the output buffer holds a byte, IBF never
//!   (every write is handled before the guest can read the status again),
//!   SYS (self-test passed), CMD/DATA (last write was a command), keyboard
//!   not inhibited, AUXDATA and TIMEOUT describing the byte in the buffer;
//! - controller RAM with the command byte (CTR) at 0: read 0x20..=0x3f,
//!   write 0x60..=0x7f;
//! - self-test 0xaa → 0x55, interface tests 0xab/0xa9 → 0x00, disable and
//!   enable keyboard/aux 0xad/0xae/0xa7/0xa8 (the CTR bits the driver
//!   reads back), output port 0xd0/0xd1, and 0xd2/0xd3 which put a byte in
//!   the output buffer as if from the keyboard/mouse (0xd3 is the "aux
//!   loopback" the driver uses to find the mouse port and to test IRQ 12);
//! - the ports have no device: a byte sent to the keyboard (data port) or
//!   mouse (0xd4) is answered at once with 0xfe and TIMEOUT, as a real
//!   controller does after its transmit timeout, so atkbd and psmouse give
//!   up immediately instead of waiting out their own timeouts;
//! - reset: 0xfe, or any pulse command 0xf0..=0xff with bit 0 clear, or
//!   writing the output port with bit 0 clear.
//!
//! A byte from a port (keyboard or mouse side) raises IRQ 1 or IRQ 12 when
//! the CTR enables that interrupt, once, when it reaches the head of the
//! buffer. Answers to controller commands raise none: Linux polls for
//! them, and an edge for a byte the polling code already took would only
//! be a spurious interrupt.

use std::collections::VecDeque;
use std::sync::Arc;

use tracing::warn;
use vm_superio::Trigger;

use super::bus::BusDevice;
use super::legacy::IrqTrigger;
use super::lifecycle::{Control, ExitReason};

/// Ports 0x60..=0x64 (0x61-0x63 belong to others and read as open bus).
pub const I8042_PORT_COUNT: u64 = 5;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const STATUS_OBF: u8 = 0x01;
const STATUS_IBF: u8 = 0x02;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
/// Set: the keyboard is not inhibited by the key lock.
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUXDATA: u8 = 0x20;
const STATUS_TIMEOUT: u8 = 0x40;

const CTR_KBDINT: u8 = 0x01;
const CTR_AUXINT: u8 = 0x02;
const CTR_SYS: u8 = 0x04;
const CTR_KBDDIS: u8 = 0x10;
const CTR_AUXDIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;
/// What PC firmware leaves: translated keyboard with its interrupt, mouse
/// port disabled, system flag set.
const CTR_DEFAULT: u8 = CTR_XLATE | CTR_AUXDIS | CTR_SYS | CTR_KBDINT;

/// Output port bit 0: the CPU reset line, active low.
const OUTPUT_RESET: u8 = 0x01;
/// Output port bit 1: the A20 gate.
const OUTPUT_A20: u8 = 0x02;

const CMD_READ_RAM_FIRST: u8 = 0x20;
const CMD_READ_RAM_LAST: u8 = 0x3f;
const CMD_WRITE_RAM_FIRST: u8 = 0x60;
const CMD_WRITE_RAM_LAST: u8 = 0x7f;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT: u8 = 0xd0;
const CMD_WRITE_OUTPUT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_PULSE_FIRST: u8 = 0xf0;

const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
/// What a port with no device answers (the PS/2 "resend").
const NO_DEVICE: u8 = 0xfe;

/// Real controllers hold one byte; Linux's flush reads at most 16.
const OUTPUT_CAPACITY: usize = 16;

/// Where a byte in the output buffer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Controller,
    Keyboard,
    Aux,
}

#[derive(Clone, Copy, Debug)]
struct Output {
    byte: u8,
    source: Source,
    timeout: bool,
}

/// The controller; its reset ends the VM through a [`Control`].
pub struct I8042 {
    ram: [u8; 32],
    output_port: u8,
    out: VecDeque<Output>,
    /// The head of `out` has raised its interrupt.
    head_signalled: bool,
    /// The command waiting for its parameter on the data port.
    pending: Option<u8>,
    last_was_command: bool,
    /// What the data port returns when the buffer is empty: the last byte.
    last_read: u8,
    control: Arc<Control>,
    kbd_irq: IrqTrigger,
    aux_irq: IrqTrigger,
}

impl I8042 {
    /// A controller in its power-on state whose reset ends the VM through
    /// `control`, raising keyboard and mouse interrupts through the two
    /// triggers (irqfds on IRQ 1 and 12).
    pub fn new(control: Arc<Control>, kbd_irq: IrqTrigger, aux_irq: IrqTrigger) -> Self {
        let mut ram = [0; 32];
        ram[0] = CTR_DEFAULT;
        Self {
            ram,
            output_port: OUTPUT_RESET | OUTPUT_A20,
            out: VecDeque::new(),
            head_signalled: false,
            pending: None,
            last_was_command: false,
            last_read: 0,
            control,
            kbd_irq,
            aux_irq,
        }
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYS | STATUS_UNLOCKED;
        if self.last_was_command {
            status |= STATUS_CMD;
        }
        if let Some(head) = self.out.front() {
            status |= STATUS_OBF;
            if head.source == Source::Aux {
                status |= STATUS_AUXDATA;
            }
            if head.timeout {
                status |= STATUS_TIMEOUT;
            }
        }
        // IBF stays clear: a write is fully handled when the vCPU resumes.
        status & !STATUS_IBF
    }

    fn push(&mut self, byte: u8, source: Source, timeout: bool) {
        if self.out.len() >= OUTPUT_CAPACITY {
            // A guest that never reads loses the newest bytes, as a real
            // controller (one byte deep) would.
            return;
        }
        self.out.push_back(Output {
            byte,
            source,
            timeout,
        });
        self.signal_head();
    }

    /// Raises the interrupt for the byte at the head, once.
    fn signal_head(&mut self) {
        let Some(head) = self.out.front() else {
            return;
        };
        if self.head_signalled {
            return;
        }
        self.head_signalled = true;
        let trigger = match head.source {
            Source::Keyboard if self.ctr() & CTR_KBDINT != 0 => &self.kbd_irq,
            Source::Aux if self.ctr() & CTR_AUXINT != 0 => &self.aux_irq,
            _ => return,
        };
        if let Err(e) = trigger.trigger() {
            warn!("i8042 interrupt: {e}");
        }
    }

    fn read_data(&mut self) -> u8 {
        if let Some(head) = self.out.pop_front() {
            self.last_read = head.byte;
            self.head_signalled = false;
            self.signal_head();
        }
        self.last_read
    }

    fn reset(&self) {
        self.control.request_exit(ExitReason::I8042Reset);
    }

    fn command(&mut self, cmd: u8) {
        self.pending = None;
        match cmd {
            CMD_READ_RAM_FIRST..=CMD_READ_RAM_LAST => {
                let byte = self.ram[usize::from(cmd - CMD_READ_RAM_FIRST)];
                self.push(byte, Source::Controller, false);
            }
            CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST
            | CMD_WRITE_OUTPUT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.ram[0] |= CTR_AUXDIS,
            CMD_AUX_ENABLE => self.ram[0] &= !CTR_AUXDIS,
            CMD_KBD_DISABLE => self.ram[0] |= CTR_KBDDIS,
            CMD_KBD_ENABLE => self.ram[0] &= !CTR_KBDDIS,
            CMD_AUX_TEST | CMD_KBD_TEST => self.push(INTERFACE_OK, Source::Controller, false),
            CMD_SELF_TEST => self.push(SELF_TEST_OK, Source::Controller, false),
            CMD_READ_OUTPUT => self.push(self.output_port, Source::Controller, false),
            // 0xf0..=0xff pulse the output port lines whose bit is clear;
            // bit 0 is the CPU reset line (0xfe is the usual reset). Other
            // lines pulse to no effect here.
            CMD_PULSE_FIRST..=0xff if cmd & OUTPUT_RESET == 0 => self.reset(),
            // Anything else (other pulses, password, diagnostics, vendor
            // commands) is ignored, as controllers without them do.
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        match self.pending.take() {
            Some(cmd @ CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST) => {
                self.ram[usize::from(cmd - CMD_WRITE_RAM_FIRST)] = byte;
            }
            Some(CMD_WRITE_OUTPUT) => {
                self.output_port = byte;
                if byte & OUTPUT_RESET == 0 {
                    self.reset();
                }
            }
            Some(CMD_WRITE_KBD_BUFFER) => self.push(byte, Source::Keyboard, false),
            Some(CMD_WRITE_AUX_BUFFER) => self.push(byte, Source::Aux, false),
            // Bytes for the mouse, or (no command) for the keyboard: no
            // device answers.
            Some(CMD_WRITE_AUX) => self.push(NO_DEVICE, Source::Aux, true),
            _ => self.push(NO_DEVICE, Source::Keyboard, true),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (DATA, [byte]) => *byte = self.read_data(),
            (COMMAND, [byte]) => *byte = self.status(),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (DATA, [byte]) => {
                self.last_was_command = false;
                self.data(*byte);
            }
            (COMMAND, [byte]) => {
                self.last_was_command = true;
                self.command(*byte);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    struct Rig {
        dev: I8042,
        control: Arc<Control>,
        kbd: EventFd,
        aux: EventFd,
    }

    fn rig() -> Rig {
        let control = Arc::new(Control::new(0));
        let kbd = EventFd::new(EFD_NONBLOCK).unwrap();
        let aux = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = I8042::new(
            control.clone(),
            IrqTrigger(kbd.try_clone().unwrap()),
            IrqTrigger(aux.try_clone().unwrap()),
        );
        Rig {
            dev,
            control,
            kbd,
            aux,
        }
    }

    /// Interrupt edges raised since the last call.
    fn edges(fd: &EventFd) -> u64 {
        fd.read().unwrap_or(0)
    }

    impl Rig {
        fn status(&mut self) -> u8 {
            let mut b = [0];
            self.dev.read(COMMAND, &mut b);
            b[0]
        }
        fn data(&mut self) -> u8 {
            let mut b = [0];
            self.dev.read(DATA, &mut b);
            b[0]
        }
        fn cmd(&mut self, cmd: u8) {
            self.dev.write(COMMAND, &[cmd]);
        }
        fn put(&mut self, byte: u8) {
            self.dev.write(DATA, &[byte]);
        }
        /// Linux's `i8042_command`: wait for IBF clear, write the command
        /// and its parameter, then read `replies` bytes, each only after
        /// OBF is set (a timeout here is the bug this device fixes).
        fn command(&mut self, cmd: u8, param: Option<u8>, replies: usize) -> Vec<u8> {
            assert_eq!(self.status() & STATUS_IBF, 0, "IBF before {cmd:#x}");
            self.cmd(cmd);
            if let Some(p) = param {
                assert_eq!(self.status() & STATUS_IBF, 0, "IBF before parameter");
                self.put(p);
            }
            (0..replies)
                .map(|_| {
                    assert_ne!(self.status() & STATUS_OBF, 0, "no reply to {cmd:#x}");
                    self.data()
                })
                .collect()
        }
    }

    #[test]
    fn status_is_empty_and_ready_at_power_on() {
        let mut r = rig();
        let s = r.status();
        assert_eq!(s & (STATUS_OBF | STATUS_IBF), 0);
        assert_ne!(s & STATUS_SYS, 0);
        assert_ne!(s & STATUS_UNLOCKED, 0, "no key lock warning");
    }

    #[test]
    fn linux_probe_sequence_gets_every_answer_at_once() {
        let mut r = rig();
        // i8042_controller_check: flush finds nothing.
        assert_eq!(r.status() & STATUS_OBF, 0);
        // Self-test.
        assert_eq!(r.command(CMD_SELF_TEST, None, 1), [SELF_TEST_OK]);
        // i8042_controller_init: two equal CTR reads, then a write back.
        let ctr = r.command(0x20, None, 1)[0];
        assert_eq!(ctr, CTR_DEFAULT);
        assert_eq!(r.command(0x20, None, 1), [ctr]);
        let new_ctr = (ctr | CTR_KBDDIS) & !CTR_KBDINT;
        r.command(0x60, Some(new_ctr), 0);
        assert_eq!(r.command(0x20, None, 1), [new_ctr]);
        assert_eq!(r.status() & STATUS_CMD, STATUS_CMD);
        // i8042_check_aux: loopback comes back as mouse data.
        r.cmd(CMD_WRITE_AUX_BUFFER);
        r.put(0x5a);
        assert_eq!(
            r.status() & (STATUS_OBF | STATUS_AUXDATA),
            STATUS_OBF | STATUS_AUXDATA
        );
        assert_eq!(r.data(), 0x5a);
        assert_eq!(r.command(CMD_AUX_TEST, None, 1), [INTERFACE_OK]);
        assert_eq!(r.command(CMD_KBD_TEST, None, 1), [INTERFACE_OK]);
        // Toggling the aux port shows in the CTR it reads back.
        r.command(CMD_AUX_DISABLE, None, 0);
        assert_ne!(r.command(0x20, None, 1)[0] & CTR_AUXDIS, 0);
        r.command(CMD_AUX_ENABLE, None, 0);
        assert_eq!(r.command(0x20, None, 1)[0] & CTR_AUXDIS, 0);
        r.command(CMD_KBD_ENABLE, None, 0);
        assert_eq!(r.command(0x20, None, 1)[0] & CTR_KBDDIS, 0);
        r.command(CMD_KBD_DISABLE, None, 0);
        assert_ne!(r.command(0x20, None, 1)[0] & CTR_KBDDIS, 0);
        assert_eq!(r.status() & STATUS_OBF, 0, "nothing left over");
        assert_eq!(r.control.exit_reason(), None);
    }

    #[test]
    fn aux_loopback_raises_irq12_only_when_enabled() {
        let mut r = rig();
        r.command(0x60, Some(CTR_DEFAULT & !CTR_AUXINT), 0);
        r.command(CMD_WRITE_AUX_BUFFER, Some(0xa5), 0);
        assert_eq!(edges(&r.aux), 0);
        assert_eq!(r.data(), 0xa5);
        r.command(0x60, Some(CTR_DEFAULT | CTR_AUXINT), 0);
        r.command(CMD_WRITE_AUX_BUFFER, Some(0xa5), 0);
        assert_eq!(edges(&r.aux), 1);
        assert_eq!(edges(&r.kbd), 0);
        assert_eq!(r.data(), 0xa5);
    }

    #[test]
    fn each_device_byte_interrupts_when_it_reaches_the_head() {
        let mut r = rig();
        r.command(0x60, Some(CTR_KBDINT | CTR_AUXINT), 0);
        r.command(CMD_WRITE_KBD_BUFFER, Some(1), 0);
        r.command(CMD_WRITE_AUX_BUFFER, Some(2), 0);
        assert_eq!((edges(&r.kbd), edges(&r.aux)), (1, 0));
        assert_eq!(r.status() & STATUS_AUXDATA, 0);
        assert_eq!(r.data(), 1);
        assert_eq!((edges(&r.kbd), edges(&r.aux)), (0, 1));
        assert_ne!(r.status() & STATUS_AUXDATA, 0);
        assert_eq!(r.data(), 2);
        // Command answers raise nothing; an empty buffer repeats the last byte.
        r.command(CMD_SELF_TEST, None, 1);
        assert_eq!((edges(&r.kbd), edges(&r.aux)), (0, 0));
        assert_eq!(r.data(), SELF_TEST_OK);
    }

    #[test]
    fn bytes_for_absent_devices_are_refused_at_once() {
        let mut r = rig();
        r.command(0x60, Some(CTR_KBDINT | CTR_AUXINT), 0);
        // atkbd's GETID: no keyboard.
        r.put(0xf2);
        assert_eq!(
            r.status() & (STATUS_OBF | STATUS_TIMEOUT | STATUS_AUXDATA),
            STATUS_OBF | STATUS_TIMEOUT
        );
        assert_eq!(r.data(), NO_DEVICE);
        assert_eq!(edges(&r.kbd), 1);
        // psmouse's GETID through 0xd4: no mouse.
        r.command(CMD_WRITE_AUX, Some(0xf2), 0);
        assert_eq!(
            r.status() & (STATUS_OBF | STATUS_TIMEOUT | STATUS_AUXDATA),
            STATUS_OBF | STATUS_TIMEOUT | STATUS_AUXDATA
        );
        assert_eq!(r.data(), NO_DEVICE);
        assert_eq!(edges(&r.aux), 1);
        assert_eq!(r.status() & (STATUS_OBF | STATUS_TIMEOUT), 0);
    }

    #[test]
    fn output_buffer_is_bounded() {
        let mut r = rig();
        for _ in 0..100 {
            r.cmd(CMD_SELF_TEST);
        }
        let mut n = 0;
        while r.status() & STATUS_OBF != 0 {
            r.data();
            n += 1;
        }
        assert_eq!(n, OUTPUT_CAPACITY);
    }

    #[test]
    fn reboot_k_ends_the_vm_with_i8042_reset() {
        let mut r = rig();
        // Linux's kb_wait: IBF must read clear before the reset command.
        assert_eq!(r.status() & STATUS_IBF, 0);
        r.cmd(0xfe);
        assert_eq!(r.control.exit_reason(), Some(ExitReason::I8042Reset));
    }

    #[test]
    fn only_pulses_of_the_reset_line_reset() {
        let mut r = rig();
        r.cmd(0xff); // pulses nothing
        r.cmd(0xfd); // bit 0 set: not the reset line
        r.command(CMD_WRITE_OUTPUT, Some(OUTPUT_RESET | OUTPUT_A20), 0);
        assert_eq!(r.command(CMD_READ_OUTPUT, None, 1), [0x03]);
        assert_eq!(r.control.exit_reason(), None);
        r.command(CMD_WRITE_OUTPUT, Some(OUTPUT_A20), 0);
        assert_eq!(r.control.exit_reason(), Some(ExitReason::I8042Reset));
        let mut r = rig();
        r.cmd(0xf0);
        assert_eq!(r.control.exit_reason(), Some(ExitReason::I8042Reset));
    }

    #[test]
    fn other_ports_and_widths_read_as_open_bus() {
        let mut r = rig();
        let mut b = [0];
        r.dev.read(1, &mut b);
        assert_eq!(b, [0xff]);
        let mut w = [0; 2];
        r.dev.read(DATA, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        r.dev.write(COMMAND, &[0xfe, 0x00]);
        assert_eq!(r.control.exit_reason(), None);
    }
}
