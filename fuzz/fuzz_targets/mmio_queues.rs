//! The virtio-mmio register file and the queues behind it, as a hostile
//! driver programs them: any register read or write of any width at any
//! offset (status dance out of order, features, queue selection, sizes and
//! ring addresses, QueueNotify, config space), descriptors and ring
//! indexes scribbled into guest memory, and kicks that make the device walk
//! whatever chains the driver left.
//!
//! The device behind the transport is the real vsock or virtio-fs core. The
//! builtin VMM serves it from a worker thread; here a wrapper plays that
//! worker synchronously after every access (the same calls: `process_tx`
//! and `process_rx` for vsock, `process_queue` for fs), so a crash replays
//! exactly. The worker threads themselves are covered by the unit tests.

#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use husk_fuzz::{capped, guest_memory, RawDesc};
use husk_vmm::devices::fs::{FsConfig, FsDevice, CONFIG_SPACE_LEN, MAX_QUEUE_SIZE};
use husk_vmm::devices::vsock::{VsockDevice, RX_QUEUE, TX_QUEUE, VIRTIO_ID_VSOCK};
use husk_vmm::test_support::write_descriptor;
use husk_vmm::virtio::{
    read_config_bytes, ActivateError, Activation, ActiveQueue, MmioTransport, VirtioDevice,
    VirtioMemory, QUEUE_NOTIFY_OFFSET,
};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 1 << 20;
const MAX_OPS: usize = 96;
const WINDOW: u64 = 0x200;
/// Where the harness's own queue layouts live: queue `i` at `i * QUEUE_STRIDE`.
const QUEUE_STRIDE: u64 = 0x8000;
const VIRTIO_ID_FS: u32 = 26;

// Status bits and registers the macro operations use (virtio 1.2, 4.2.2).
const STATUS: u64 = 0x70;
const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;

/// The device core behind the transport, served synchronously.
enum Core {
    Vsock(VsockDevice),
    Fs(FsDevice),
}

/// What the transport handed over at activation; the harness serves it.
#[derive(Default)]
struct Active {
    queues: Vec<ActiveQueue>,
}

struct SyncDevice {
    core: Arc<Mutex<Core>>,
    active: Arc<Mutex<Active>>,
    sizes: Vec<u16>,
}

impl VirtioDevice for SyncDevice {
    fn device_type(&self) -> u32 {
        match &*self.core.lock().unwrap() {
            Core::Vsock(_) => VIRTIO_ID_VSOCK,
            Core::Fs(_) => VIRTIO_ID_FS,
        }
    }

    fn features(&self) -> u64 {
        match &*self.core.lock().unwrap() {
            Core::Vsock(_) => 0,
            Core::Fs(fs) => fs.features(),
        }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        match &*self.core.lock().unwrap() {
            Core::Vsock(v) => read_config_bytes(&v.config_space(), offset, data),
            Core::Fs(fs) => {
                let space: [u8; CONFIG_SPACE_LEN] = fs.config_space();
                read_config_bytes(&space, offset, data)
            }
        }
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        // The same queue requirements as VsockMmioDevice and FsMmioDevice.
        let queues = match &*self.core.lock().unwrap() {
            Core::Vsock(_) => Vec::from(activation.take_queues([RX_QUEUE, TX_QUEUE])?),
            Core::Fs(_) => {
                if !activation.queues.iter().any(|q| q.index >= 1) {
                    return Err(ActivateError::MissingQueue(1));
                }
                activation.apply_event_idx();
                std::mem::take(&mut activation.queues)
            }
        };
        self.active.lock().unwrap().queues = queues;
        Ok(())
    }

    fn reset(&mut self) {
        self.active.lock().unwrap().queues.clear();
        if let Core::Vsock(v) = &mut *self.core.lock().unwrap() {
            v.reset();
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Width {
    One,
    Two,
    Four,
    Eight,
}

impl Width {
    fn bytes(&self) -> usize {
        match self {
            Width::One => 1,
            Width::Two => 2,
            Width::Four => 4,
            Width::Eight => 8,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A read anywhere in the window (registers and config space).
    Read { offset: u16, width: Width },
    /// A write anywhere in the window.
    Write {
        offset: u16,
        width: Width,
        value: u64,
    },
    /// A 32-bit write to a register offset (a multiple of 4 below 0x100).
    Reg { index: u8, value: u32 },
    /// The Linux driver's status dance up to FEATURES_OK, offering `features`.
    Negotiate { features: u64 },
    /// Programs queue `queue` with the harness's layout and `size`, ready.
    SetupQueue { queue: u8, size: u16 },
    /// DRIVER_OK on top of the current status.
    DriverOk,
    /// Descriptors into queue `queue`'s table from slot `slot`, `head`
    /// made available (the queue's current size taken as 256).
    Post {
        queue: u8,
        slot: u8,
        descs: Vec<RawDesc>,
        head: u16,
        data: Vec<u8>,
    },
    /// Any bytes anywhere in the first 64 KiB (rings, tables).
    Scribble { at: u16, bytes: Vec<u8> },
    /// QueueNotify for `queue`.
    Notify { queue: u32 },
    /// vsock: a host client connects; both: the worker runs host events.
    HostEvent,
}

#[derive(Arbitrary, Debug)]
struct Input {
    fs: bool,
    ops: Vec<Op>,
}

struct Harness {
    mem: GuestMemoryMmap,
    transport: MmioTransport,
    core: Arc<Mutex<Core>>,
    active: Arc<Mutex<Active>>,
    avail_idx: Vec<u16>,
    uds: Option<std::path::PathBuf>,
    clients: Vec<std::os::unix::net::UnixStream>,
}

impl Harness {
    fn read(&mut self, offset: u64, width: usize) {
        let mut data = [0u8; 8];
        self.transport.read(offset, &mut data[..width]);
    }

    fn write(&mut self, offset: u64, value: u64, width: usize) {
        let bytes = value.to_le_bytes();
        self.transport.write(offset, &bytes[..width]);
    }

    fn reg(&mut self, offset: u64, value: u32) {
        self.write(offset, u64::from(value), 4);
    }

    fn status(&mut self) -> u32 {
        self.transport.status()
    }

    /// Plays the device worker: serves every queue whose notifier fired.
    fn serve(&mut self, host_event: bool) {
        let mut active = self.active.lock().unwrap();
        let mut core = self.core.lock().unwrap();
        match &mut *core {
            Core::Vsock(dev) => {
                let mut kicked = false;
                for q in &active.queues {
                    kicked |= q.notifier.read().is_ok();
                }
                if !(kicked || host_event) || active.queues.len() != 2 {
                    return;
                }
                if host_event {
                    dev.process_host_events();
                }
                let (rx, tx) = active.queues.split_at_mut(1);
                dev.process_tx(&self.mem, &mut tx[0].queue);
                dev.process_rx(&self.mem, &mut rx[0].queue);
            }
            Core::Fs(fs) => {
                for q in &mut active.queues {
                    if q.notifier.read().is_ok() {
                        // An error leaves the queue dead until reset, as in the worker;
                        // here the next kick simply finds it broken again.
                        let _ = fs.process_queue(&mut q.queue, &self.mem);
                    }
                }
            }
        }
    }

    fn run(&mut self, op: Op) {
        let host_event = matches!(op, Op::HostEvent);
        match op {
            Op::Read { offset, width } => {
                self.read(u64::from(offset) % WINDOW, width.bytes());
            }
            Op::Write {
                offset,
                width,
                value,
            } => self.write(u64::from(offset) % WINDOW, value, width.bytes()),
            Op::Reg { index, value } => self.reg(u64::from(index % 64) * 4, value),
            Op::Negotiate { features } => {
                self.reg(STATUS, 0);
                self.reg(STATUS, ACKNOWLEDGE);
                self.reg(STATUS, ACKNOWLEDGE | DRIVER);
                self.reg(0x24, 0);
                self.reg(0x20, features as u32);
                self.reg(0x24, 1);
                self.reg(0x20, (features >> 32) as u32 | 1); // VIRTIO_F_VERSION_1
                self.reg(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
                self.avail_idx.iter_mut().for_each(|i| *i = 0);
            }
            Op::SetupQueue { queue, size } => {
                let q = u64::from(queue % 17);
                let base = q * QUEUE_STRIDE;
                let size = if size == 0 { 256 } else { u32::from(size) };
                self.reg(0x30, q as u32);
                self.reg(0x38, size);
                self.reg(0x80, base as u32);
                self.reg(0x84, 0);
                self.reg(0x90, (base + 0x4000) as u32);
                self.reg(0x94, 0);
                self.reg(0xa0, (base + 0x6000) as u32);
                self.reg(0xa4, 0);
                self.reg(0x44, 1);
            }
            Op::DriverOk => {
                let status = self.status();
                self.reg(STATUS, status | DRIVER_OK);
            }
            Op::Post {
                queue,
                slot,
                descs,
                head,
                data,
            } => {
                let q = usize::from(queue % 17);
                let base = q as u64 * QUEUE_STRIDE;
                self.mem
                    .write_slice(capped(&data, 4096), GuestAddress(husk_fuzz::BUF_START))
                    .expect("in RAM");
                for (i, d) in descs.iter().take(16).enumerate() {
                    let slot = (u16::from(slot) + i as u16) % 256;
                    write_descriptor(&self.mem, base, slot, d.resolve(MEM_SIZE));
                }
                let idx = &mut self.avail_idx[q];
                let ring = base + 0x4000 + 4 + 2 * u64::from(*idx % 256);
                self.mem
                    .write_obj(head, GuestAddress(ring))
                    .expect("in RAM");
                *idx = idx.wrapping_add(1);
                self.mem
                    .write_obj(*idx, GuestAddress(base + 0x4000 + 2))
                    .expect("in RAM");
            }
            Op::Scribble { at, bytes } => {
                let at = u64::from(at);
                let bytes = capped(&bytes, 256);
                let end = (at + bytes.len() as u64).min(0x1_0000);
                let _ = self
                    .mem
                    .write_slice(&bytes[..(end - at) as usize], GuestAddress(at));
            }
            Op::Notify { queue } => self.reg(QUEUE_NOTIFY_OFFSET, queue),
            Op::HostEvent => {
                if let Some(uds) = &self.uds {
                    if self.clients.len() < 8 {
                        if let Ok(mut c) = std::os::unix::net::UnixStream::connect(uds) {
                            use std::io::Write;
                            let _ = c.write_all(b"CONNECT 1024\n");
                            self.clients.push(c);
                        }
                    }
                }
            }
        }
        self.serve(host_event);
    }
}

fn harness(fs: bool, dir: &std::path::Path) -> Harness {
    let mem = guest_memory(MEM_SIZE);
    let (core, sizes, uds) = if fs {
        let share = dir.join("share");
        std::fs::create_dir(&share).expect("share");
        std::fs::write(share.join("f"), b"file").expect("file");
        let mut config = FsConfig::new(&share, "fuzz");
        config.request_queues = 2;
        let dev = FsDevice::new(config).expect("fs device");
        let sizes = vec![MAX_QUEUE_SIZE; dev.num_queues()];
        (Core::Fs(dev), sizes, None)
    } else {
        let uds = dir.join("vsock.sock");
        let dev = VsockDevice::new(3, &uds).expect("vsock device");
        (Core::Vsock(dev), vec![256; 3], Some(uds))
    };
    let core = Arc::new(Mutex::new(core));
    let active = Arc::new(Mutex::new(Active::default()));
    let device = SyncDevice {
        core: core.clone(),
        active: active.clone(),
        sizes,
    };
    let transport =
        MmioTransport::new(Box::new(device), VirtioMemory::new(mem.clone())).expect("transport");
    Harness {
        mem,
        transport,
        core,
        active,
        avail_idx: vec![0; 17],
        uds,
        clients: Vec::new(),
    }
}

fuzz_target!(|input: Input| {
    let dir = tempfile::tempdir().expect("tempdir");
    // The fs core confines its serving thread (chroot) as the VMM's worker
    // does: a thread of its own, not libFuzzer's.
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut h = harness(input.fs, dir.path());
            for op in input.ops.into_iter().take(MAX_OPS) {
                h.run(op);
            }
            // A reset always brings the transport back to its initial state.
            h.reg(STATUS, 0);
            assert_eq!(h.status(), 0, "status after reset");
            assert!(
                h.active.lock().unwrap().queues.is_empty(),
                "queues after reset"
            );
        });
    });
});
