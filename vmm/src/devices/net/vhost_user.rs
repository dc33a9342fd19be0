//! The net device served to QEMU (`-netdev vhost-user` with
//! `-device virtio-net-device`) over vhost-user.
//!
//! QEMU's virtio-net keeps the configuration space (MAC from `mac=`, MTU from
//! `host_mtu=`), the link status and the control queue to itself and hands
//! this backend the one RX/TX queue pair. It offers the guest the features
//! both sides have, so the backend's feature set is the device core's.

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::device::{NetDevice, NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use super::relay::Relay;
use super::{Error, NetConfig, Tap};
use crate::seccomp::{self, ThreadKind};
use crate::vhost_user::{config_slice, is_live, serve, ExitEvent, ServeHandle, ServedBackend};

/// The `handle_event` token of the device's host event fd.
const HOST_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// Largest queue the frontend may configure (QEMU's virtio-net uses 256 by
/// default and allows up to 1024).
const QUEUE_SIZE: usize = 1024;

/// [`NetDevice`] as a `vhost-user-backend` backend.
pub struct NetBackend {
    device: NetDevice,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    exit: ExitEvent,
    /// Queues the guest broke stay stopped until the frontend resets.
    broken: [bool; NUM_QUEUES],
}

impl NetBackend {
    /// Wraps `device`.
    pub fn new(device: NetDevice) -> Result<Self, Error> {
        let exit = ExitEvent::new().map_err(Error::Event)?;
        Ok(NetBackend {
            device,
            mem: None,
            exit,
            broken: [false; NUM_QUEUES],
        })
    }

    /// Runs TX then RX on whatever is live, then signals the queues that changed.
    fn run(&mut self, vrings: &[VringRwLock]) -> io::Result<()> {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            self.device.pause_rx();
            return Ok(());
        };
        let (Some(rx), Some(tx)) = (vrings.get(RX_QUEUE), vrings.get(TX_QUEUE)) else {
            return Ok(());
        };
        if is_live(tx) && !self.broken[TX_QUEUE] {
            let result = {
                let mut state = tx.get_mut();
                self.device.process_tx(&*mem, state.get_queue_mut())
            };
            match result {
                Ok(true) => tx.signal_used_queue()?,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("virtio-net TX queue stopped: {e}");
                    self.broken[TX_QUEUE] = true;
                }
            }
        }
        if is_live(rx) && !self.broken[RX_QUEUE] {
            let result = {
                let mut state = rx.get_mut();
                self.device.process_rx(&*mem, state.get_queue_mut())
            };
            match result {
                Ok(true) => rx.signal_used_queue()?,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("virtio-net RX queue stopped: {e}");
                    self.broken[RX_QUEUE] = true;
                    self.device.pause_rx();
                }
            }
        } else {
            // Frames wait in the tap until the ring runs; the next kick
            // (QEMU kicks each ring as it starts it) resumes.
            self.device.pause_rx();
        }
        Ok(())
    }
}

impl VhostUserBackendMut for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        // QEMU starts vhost-user-net only with PROTOCOL_FEATURES.
        self.device.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        if let Err(e) = self.device.set_acked_features(features) {
            tracing::warn!("virtio-net: {e}");
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::empty()
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // The daemon sets EVENT_IDX on each vring's queue; the device honours it.
    }

    fn reset_device(&mut self) {
        self.device.reset();
        self.broken = [false; NUM_QUEUES];
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_slice(&self.device.config_space(), offset, size)
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit.pair()
    }

    fn handle_event(
        &mut self,
        _device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        seccomp::apply_once(ThreadKind::Net).map_err(io::Error::other)?;
        self.run(vrings)
    }
}

impl ServedBackend for Arc<RwLock<NetBackend>> {
    fn watched_fds(&self) -> Vec<(RawFd, EventSet, u16)> {
        match self.read() {
            Ok(b) => vec![(b.device.host_event_fd(), EventSet::IN, HOST_EVENT)],
            Err(_) => Vec::new(),
        }
    }
}

/// Serves a virtio-net device joined to `tap`, showing the guest `config`,
/// to QEMU on `vhost_socket`. Stopping or dropping the handle disconnects
/// QEMU, joins the threads and removes the sockets; the tap closes with the
/// backend.
///
/// The daemon itself listens on `<vhost_socket>.backend`, behind a relay on
/// `vhost_socket` that works around QEMU's early `SET_VRING_ENABLE` (see
/// `relay.rs`).
pub fn serve_net(vhost_socket: &Path, tap: Tap, config: NetConfig) -> Result<ServeHandle, Error> {
    let device = NetDevice::new(tap, config)?;
    let backend = Arc::new(RwLock::new(NetBackend::new(device)?));
    let mut inner = vhost_socket.as_os_str().to_owned();
    inner.push(".backend");
    let inner = PathBuf::from(inner);
    let handle = serve("net", backend, &inner)?;
    let relay = Relay::start(vhost_socket, inner).map_err(Error::Relay)?;
    Ok(handle.with_front(vhost_socket.to_owned(), Box::new(relay)))
}
