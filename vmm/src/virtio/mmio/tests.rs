use std::sync::{Arc, Mutex};

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueOwnedT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::ActivateError;

const TEST_DEVICE_TYPE: u32 = 42;
const TEST_FEATURE: u64 = 1 << 3;
const QUEUE_MAX: u16 = 16;

/// What the test device saw, shared with the test.
#[derive(Default)]
struct Seen {
    activated_features: Option<u64>,
    queues: Vec<ActiveQueue>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
}

struct TestDevice {
    seen: Arc<Mutex<Seen>>,
    config: [u8; 8],
    refuse: bool,
}

impl VirtioDevice for TestDevice {
    fn device_type(&self) -> u32 {
        TEST_DEVICE_TYPE
    }
    fn features(&self) -> u64 {
        TEST_FEATURE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX, QUEUE_MAX]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .saturating_add(i);
            *b = self.config.get(at).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.seen
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.refuse {
            return Err(ActivateError::MissingQueue(1));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.activated_features = Some(activation.acked_features);
        seen.queues = activation.queues;
        seen.interrupt = Some(activation.interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        let mut seen = self.seen.lock().unwrap();
        seen.resets += 1;
        seen.queues.clear();
    }
}

struct Fixture {
    mem: GuestMemoryMmap,
    transport: MmioTransport,
    seen: Arc<Mutex<Seen>>,
}

fn fixture_with(refuse: bool) -> Fixture {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let device = TestDevice {
        seen: seen.clone(),
        config: [1, 2, 3, 4, 5, 6, 7, 8],
        refuse,
    };
    let transport = MmioTransport::new(Box::new(device), VirtioMemory::new(mem.clone())).unwrap();
    Fixture {
        mem,
        transport,
        seen,
    }
}

fn fixture() -> Fixture {
    fixture_with(false)
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport, driver_features: u64) {
    wr(t, STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    wr(
        t,
        STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    wr(t, DRIVER_FEATURES_SEL, 0);
    wr(t, DRIVER_FEATURES, driver_features as u32);
    wr(t, DRIVER_FEATURES_SEL, 1);
    wr(t, DRIVER_FEATURES, (driver_features >> 32) as u32);
    wr(
        t,
        STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
}

const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const NEGOTIATED: u32 =
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;

fn setup_queue(t: &mut MmioTransport, index: u32, q: &MockSplitQueue<GuestMemoryMmap>) {
    wr(t, QUEUE_SEL, index);
    wr(t, QUEUE_NUM, u32::from(QUEUE_MAX));
    let desc = q.desc_table_addr().0;
    let avail = q.avail_addr().0;
    let used = q.used_addr().0;
    wr(t, QUEUE_DESC_LOW, desc as u32);
    wr(t, QUEUE_DESC_HIGH, (desc >> 32) as u32);
    wr(t, QUEUE_DRIVER_LOW, avail as u32);
    wr(t, QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
    wr(t, QUEUE_DEVICE_LOW, used as u32);
    wr(t, QUEUE_DEVICE_HIGH, (used >> 32) as u32);
    wr(t, QUEUE_READY, 1);
}

#[test]
fn identity_registers() {
    let mut f = fixture();
    assert_eq!(rd(&mut f.transport, MAGIC), 0x7472_6976);
    assert_eq!(rd(&mut f.transport, VERSION), 2);
    assert_eq!(rd(&mut f.transport, DEVICE_ID), TEST_DEVICE_TYPE);
    assert_eq!(rd(&mut f.transport, VENDOR), VENDOR_ID);
    // No shared memory regions.
    assert_eq!(rd(&mut f.transport, SHM_LEN_LOW), u32::MAX);
}

#[test]
fn device_features_by_selector_include_version_1() {
    let mut f = fixture();
    wr(&mut f.transport, DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&mut f.transport, DEVICE_FEATURES), TEST_FEATURE as u32);
    wr(&mut f.transport, DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut f.transport, DEVICE_FEATURES), 1);
    wr(&mut f.transport, DEVICE_FEATURES_SEL, 2);
    assert_eq!(rd(&mut f.transport, DEVICE_FEATURES), 0);
}

#[test]
fn features_ok_when_driver_acks_a_subset() {
    let mut f = fixture();
    negotiate(&mut f.transport, VERSION_1 | TEST_FEATURE);
    assert_eq!(rd(&mut f.transport, STATUS), NEGOTIATED);
}

#[test]
fn features_ok_refused_for_unoffered_feature() {
    let mut f = fixture();
    negotiate(&mut f.transport, VERSION_1 | (1 << 5));
    assert_eq!(
        rd(&mut f.transport, STATUS),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
}

#[test]
fn features_ok_refused_without_version_1() {
    let mut f = fixture();
    negotiate(&mut f.transport, TEST_FEATURE);
    assert_eq!(
        rd(&mut f.transport, STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
}

#[test]
fn status_bits_cannot_be_cleared_without_reset() {
    let mut f = fixture();
    negotiate(&mut f.transport, VERSION_1);
    wr(&mut f.transport, STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    assert_eq!(rd(&mut f.transport, STATUS), NEGOTIATED);
}

#[test]
fn queue_registers_ignored_before_features_ok() {
    let mut f = fixture();
    wr(&mut f.transport, QUEUE_SEL, 0);
    wr(&mut f.transport, QUEUE_READY, 1);
    assert_eq!(rd(&mut f.transport, QUEUE_READY), 0);
    assert_eq!(rd(&mut f.transport, QUEUE_NUM_MAX), u32::from(QUEUE_MAX));
    // A queue that does not exist reports size 0.
    wr(&mut f.transport, QUEUE_SEL, 7);
    assert_eq!(rd(&mut f.transport, QUEUE_NUM_MAX), 0);
}

#[test]
fn driver_ok_activates_with_ready_queues_then_notify_and_used_interrupt() {
    let mut f = fixture();
    let q0 = MockSplitQueue::create(&f.mem, GuestAddress(0x1000), QUEUE_MAX);
    negotiate(&mut f.transport, VERSION_1 | TEST_FEATURE);
    setup_queue(&mut f.transport, 0, &q0);
    assert_eq!(rd(&mut f.transport, QUEUE_READY), 1);
    wr(
        &mut f.transport,
        STATUS,
        NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_eq!(
        rd(&mut f.transport, STATUS),
        NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK
    );

    let mut seen = f.seen.lock().unwrap();
    assert_eq!(seen.activated_features, Some(VERSION_1 | TEST_FEATURE));
    // Queue 1 was never made ready, so only queue 0 is handed over.
    assert_eq!(seen.queues.len(), 1);
    let active = seen.queues.pop().unwrap();
    let interrupt = seen.interrupt.take().unwrap();
    drop(seen);
    assert_eq!(active.index, 0);
    assert_eq!(active.queue.size(), QUEUE_MAX);
    assert_eq!(active.queue.desc_table(), q0.desc_table_addr().0);
    assert_eq!(active.queue.used_ring(), q0.used_addr().0);

    // The driver makes a buffer available and notifies queue 0.
    let mut q0 = q0;
    q0.add_chain(1).unwrap();
    assert!(active.notifier.read().is_err(), "no notification yet");
    wr(&mut f.transport, QUEUE_NOTIFY_OFFSET, 0);
    assert_eq!(active.notifier.read().unwrap(), 1);

    // The device consumes it and signals the used ring.
    let mut queue = active.queue;
    let chain = queue.iter(&f.mem).unwrap().next().unwrap();
    let head = chain.head_index();
    queue.add_used(&f.mem, head, 0).unwrap();
    interrupt.notify(InterruptKind::Queue(0)).unwrap();
    let used_idx: u16 = f.mem.read_obj(q0.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(used_idx, 1);
    assert_eq!(f.transport.interrupt().irq_eventfd().read().unwrap(), 1);
    assert_eq!(
        rd(&mut f.transport, INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    wr(&mut f.transport, INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(rd(&mut f.transport, INTERRUPT_STATUS), 0);
}

#[test]
fn notify_of_unknown_queue_is_ignored() {
    let mut f = fixture();
    negotiate(&mut f.transport, VERSION_1);
    wr(
        &mut f.transport,
        STATUS,
        NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    wr(&mut f.transport, QUEUE_NOTIFY_OFFSET, 99);
    for (_, fd) in f.transport.queue_notifiers() {
        assert!(fd.read().is_err());
    }
}

#[test]
fn config_change_interrupt_bumps_generation() {
    let f = fixture();
    let mut t = f.transport;
    let before = rd(&mut t, CONFIG_GENERATION);
    t.interrupt().notify(InterruptKind::Config).unwrap();
    assert_eq!(rd(&mut t, CONFIG_GENERATION), before.wrapping_add(1));
    assert_eq!(rd(&mut t, INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
}

#[test]
fn invalid_ready_queue_sets_needs_reset_and_does_not_activate() {
    let mut f = fixture();
    negotiate(&mut f.transport, VERSION_1);
    wr(&mut f.transport, QUEUE_SEL, 0);
    wr(&mut f.transport, QUEUE_NUM, u32::from(QUEUE_MAX));
    // Rings outside guest memory.
    wr(&mut f.transport, QUEUE_DESC_HIGH, 0x10);
    wr(&mut f.transport, QUEUE_READY, 1);
    wr(
        &mut f.transport,
        STATUS,
        NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_ne!(
        rd(&mut f.transport, STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    assert!(f.seen.lock().unwrap().activated_features.is_none());
}

#[test]
fn device_refusing_activation_sets_needs_reset() {
    let mut f = fixture_with(true);
    negotiate(&mut f.transport, VERSION_1);
    wr(
        &mut f.transport,
        STATUS,
        NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_ne!(
        rd(&mut f.transport, STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
}

#[test]
fn driver_ok_without_features_ok_is_refused() {
    let mut f = fixture();
    wr(&mut f.transport, STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    wr(
        &mut f.transport,
        STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_eq!(rd(&mut f.transport, STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE);
    assert!(f.seen.lock().unwrap().activated_features.is_none());
}

#[test]
fn writing_zero_status_resets_device_and_queues() {
    let mut f = fixture();
    let q0 = MockSplitQueue::create(&f.mem, GuestAddress(0x1000), QUEUE_MAX);
    negotiate(&mut f.transport, VERSION_1);
    setup_queue(&mut f.transport, 0, &q0);
    wr(
        &mut f.transport,
        STATUS,
        NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    f.transport
        .interrupt()
        .notify(InterruptKind::Queue(0))
        .unwrap();

    wr(&mut f.transport, STATUS, 0);
    assert_eq!(rd(&mut f.transport, STATUS), 0);
    assert_eq!(rd(&mut f.transport, INTERRUPT_STATUS), 0);
    assert_eq!(f.seen.lock().unwrap().resets, 1);
    // The queue must be set up again after a reset.
    negotiate(&mut f.transport, VERSION_1);
    wr(&mut f.transport, QUEUE_SEL, 0);
    assert_eq!(rd(&mut f.transport, QUEUE_READY), 0);
}

#[test]
fn config_space_passes_through_with_offset() {
    let mut f = fixture();
    let mut two = [0u8; 2];
    f.transport.read(CONFIG_OFFSET + 2, &mut two);
    assert_eq!(two, [3, 4]);
    let mut past_end = [0xffu8; 4];
    f.transport.read(CONFIG_OFFSET + 6, &mut past_end);
    assert_eq!(past_end, [7, 8, 0, 0]);
    f.transport.write(CONFIG_OFFSET + 1, &[9]);
    assert_eq!(f.seen.lock().unwrap().config_writes, vec![(1, vec![9])]);
}

#[test]
fn narrow_register_access_is_ignored() {
    let mut f = fixture();
    let mut one = [0xaau8; 1];
    f.transport.read(MAGIC, &mut one);
    assert_eq!(one, [0]);
    f.transport.write(STATUS, &[1]);
    assert_eq!(rd(&mut f.transport, STATUS), 0);
}

/// A running device with queue 0 set up, two buffers used and a third
/// made available but not yet taken.
fn running_with_one_pending(f: &mut Fixture) -> MockSplitQueue<'_, GuestMemoryMmap> {
    let mut q0 = MockSplitQueue::create(&f.mem, GuestAddress(0x1000), QUEUE_MAX);
    negotiate(&mut f.transport, VERSION_1 | TEST_FEATURE);
    setup_queue(&mut f.transport, 0, &q0);
    wr(
        &mut f.transport,
        STATUS,
        NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    let active = f.seen.lock().unwrap().queues.pop().unwrap();
    let mut queue = active.queue;
    for _ in 0..2 {
        q0.add_chain(1).unwrap();
        let head = queue.iter(&f.mem).unwrap().next().unwrap().head_index();
        queue.add_used(&f.mem, head, 0).unwrap();
    }
    q0.add_chain(1).unwrap();
    q0
}

#[test]
fn quiesced_transport_saves_queue_positions_from_the_used_ring() {
    let mut f = fixture();
    let _q0 = running_with_one_pending(&mut f);
    f.transport.quiesce();
    assert_eq!(f.seen.lock().unwrap().resets, 1, "the device was stopped");
    let state = f.transport.save_state();
    assert_eq!(state.device_type, TEST_DEVICE_TYPE);
    assert_eq!(state.status, NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(state.driver_features, VERSION_1 | TEST_FEATURE);
    assert_eq!(&state.config[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
    let q = state.queues[0];
    assert!(q.ready);
    assert_eq!((q.size, q.next_avail, q.next_used), (QUEUE_MAX, 2, 2));
    assert!(!state.queues[1].ready);
    state.validate().unwrap();

    // Resuming starts the same device again where it stopped.
    f.transport.resume_device().unwrap();
    let active = f.seen.lock().unwrap().queues.remove(0);
    assert_eq!(active.notifier.read().unwrap(), 1, "kicked once");
    let mut queue = active.queue;
    assert_eq!(queue.next_avail(), 2);
    assert_eq!(queue.iter(&f.mem).unwrap().count(), 1, "the pending buffer");
}

#[test]
fn restored_transport_starts_its_new_device_at_the_saved_positions() {
    let mut f = fixture();
    let _q0 = running_with_one_pending(&mut f);
    f.transport.quiesce();
    let state = f.transport.save_state();

    // A new backend on the same guest memory, as after a restore.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let device = TestDevice {
        seen: seen.clone(),
        config: [1, 2, 3, 4, 5, 6, 7, 8],
        refuse: false,
    };
    let mut restored =
        MmioTransport::new(Box::new(device), VirtioMemory::new(f.mem.clone())).unwrap();
    restored.restore_state(&state).unwrap();
    assert_eq!(
        rd(&mut restored, STATUS),
        NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK
    );
    wr(&mut restored, QUEUE_SEL, 0);
    assert_eq!(rd(&mut restored, QUEUE_READY), 1);
    let mut seen = seen.lock().unwrap();
    assert_eq!(seen.activated_features, Some(VERSION_1 | TEST_FEATURE));
    let active = seen.queues.remove(0);
    assert_eq!(active.notifier.read().unwrap(), 1, "kicked once");
    let mut queue = active.queue;
    assert_eq!((queue.next_avail(), queue.next_used()), (2, 2));
    assert_eq!(queue.iter(&f.mem).unwrap().count(), 1, "the pending buffer");
}

#[test]
fn restore_onto_another_device_or_bad_state_is_refused() {
    let mut f = fixture();
    let _q0 = running_with_one_pending(&mut f);
    f.transport.quiesce();
    let state = f.transport.save_state();
    let onto = |config: [u8; 8], state: &TransportState| {
        let device = TestDevice {
            seen: Arc::new(Mutex::new(Seen::default())),
            config,
            refuse: false,
        };
        let mut t = MmioTransport::new(Box::new(device), VirtioMemory::new(f.mem.clone())).unwrap();
        t.restore_state(state).map(|()| t)
    };
    let err = onto([9; 8], &state).err().unwrap();
    assert!(err.contains("configuration space"), "{err}");
    let mut other = state.clone();
    other.device_type = 19;
    assert!(onto([1, 2, 3, 4, 5, 6, 7, 8], &other)
        .err()
        .unwrap()
        .contains("device type 19"));
    let mut other = state.clone();
    other.device_features |= 1 << 5;
    assert!(onto([1, 2, 3, 4, 5, 6, 7, 8], &other)
        .err()
        .unwrap()
        .contains("features"));
    let mut other = state.clone();
    other.queues.pop();
    assert!(onto([1, 2, 3, 4, 5, 6, 7, 8], &other)
        .err()
        .unwrap()
        .contains("1 queues saved"));
    let mut other = state.clone();
    other.queues[0].size = 3;
    assert!(onto([1, 2, 3, 4, 5, 6, 7, 8], &other)
        .err()
        .unwrap()
        .contains("invalid queue"));
    let mut other = state;
    other.queues[0].max_size = 8;
    other.queues[0].size = 8;
    assert!(onto([1, 2, 3, 4, 5, 6, 7, 8], &other)
        .err()
        .unwrap()
        .contains("maximum size 8"));
}
