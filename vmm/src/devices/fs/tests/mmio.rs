//! The virtio-mmio face: activation starts a sandboxed worker that answers kicks with
//! interrupts; reset joins it.

use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{EntryOut, InitIn, Opcode};
use fuse_backend_rs::api::filesystem::ROOT_ID;
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::harness::{message, Reply};
use crate::devices::fs::{FsConfig, FsDevice, FsMmioDevice, CONFIG_SPACE_LEN};
use crate::test_support::InterruptRecorder;
use crate::virtio::{ActivateError, Activation, ActiveQueue, InterruptKind, VirtioDevice};

const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const REQ: u64 = 0x10_0000;
const REPLY: u64 = 0x20_0000;
const QSIZE: u16 = 16;

fn request_queue() -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    q
}

/// Publishes request `n` (0-based) as a two-descriptor chain at indices 0 and 1.
fn publish(mem: &GuestMemoryMmap, n: u16, request: &[u8]) {
    mem.write_slice(request, GuestAddress(REQ)).unwrap();
    let descs: [(u64, u32, u16, u16); 2] = [(REQ, request.len() as u32, 1, 1), (REPLY, 4096, 2, 0)];
    for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
        let at = DESC + 16 * i as u64;
        mem.write_obj(*addr, GuestAddress(at)).unwrap();
        mem.write_obj(*len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(*flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(*next, GuestAddress(at + 14)).unwrap();
    }
    mem.write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * u64::from(n % QSIZE)))
        .unwrap();
    mem.write_obj(n + 1, GuestAddress(AVAIL + 2)).unwrap();
}

fn reply(mem: &GuestMemoryMmap, n: u16) -> Reply {
    let len: u32 = mem
        .read_obj(GuestAddress(USED + 8 + 8 * u64::from(n % QSIZE)))
        .unwrap();
    let mut bytes = vec![0u8; len as usize];
    mem.read_slice(&mut bytes, GuestAddress(REPLY)).unwrap();
    Reply::parse(&bytes).expect("a reply")
}

#[test]
fn activated_device_answers_kicks_and_reset_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"12345").unwrap();
    let mut dev = FsMmioDevice::new(FsDevice::new(FsConfig::new(dir.path(), "husk")).unwrap());
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    let mut config = [0xffu8; CONFIG_SPACE_LEN + 4];
    dev.read_config(0, &mut config);
    assert_eq!(&config[..5], b"husk\0");
    assert_eq!(
        &config[CONFIG_SPACE_LEN..],
        &[0, 0, 0, 0],
        "beyond the config reads 0"
    );
    dev.read_config(u64::MAX, &mut config[..2]);
    assert_eq!(&config[..2], &[0, 0]);

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let notifier = EventFd::new(0).unwrap();
    let kick = notifier.try_clone().unwrap();
    let (interrupts, rx) = InterruptRecorder::new();
    let features = dev.features();
    // Activation and reset run where the builtin VMM runs them: on a thread
    // under the vCPU filter; the worker runs under its own.
    crate::seccomp::on_vcpu_thread(|| {
        dev.activate(Activation {
            mem: GuestMemoryAtomic::new(mem.clone()),
            acked_features: features,
            queues: vec![ActiveQueue {
                index: 1,
                queue: request_queue(),
                notifier,
            }],
            interrupt: Arc::new(interrupts),
        })
    })
    .unwrap();

    let init = InitIn {
        major: 7,
        minor: 31,
        ..Default::default()
    };
    publish(
        &mem,
        0,
        &message(Opcode::Init as u32, 1, 0, &[init.as_slice()]),
    );
    kick.write(1).unwrap();
    let kind = rx.recv_timeout(Duration::from_secs(5)).expect("interrupt");
    assert_eq!(kind, InterruptKind::Queue(1));
    assert_eq!(reply(&mem, 0).error, 0);

    publish(
        &mem,
        1,
        &message(Opcode::Lookup as u32, 2, ROOT_ID, &[b"f\0"]),
    );
    kick.write(1).unwrap();
    // With EVENT_IDX acked and `used_event` left at 0 the driver asked for no second
    // interrupt; wait for the used ring instead.
    for _ in 0..500 {
        if mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(reply(&mem, 1).obj::<EntryOut>().unwrap().attr.size, 5);

    crate::seccomp::on_vcpu_thread(|| dev.reset());
    // After reset the worker is gone: a kick gets no answer.
    publish(
        &mem,
        2,
        &message(Opcode::Lookup as u32, 3, ROOT_ID, &[b"f\0"]),
    );
    kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 2);
}

#[test]
fn activation_without_a_request_queue_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = FsMmioDevice::new(FsDevice::new(FsConfig::new(dir.path(), "husk")).unwrap());
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (interrupts, _rx) = InterruptRecorder::new();
    let err = dev
        .activate(Activation {
            mem: GuestMemoryAtomic::new(mem),
            acked_features: 0,
            queues: vec![ActiveQueue {
                index: 0,
                queue: request_queue(),
                notifier: EventFd::new(0).unwrap(),
            }],
            interrupt: Arc::new(interrupts),
        })
        .unwrap_err();
    assert!(matches!(err, ActivateError::MissingQueue(1)));
}
