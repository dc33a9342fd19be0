//! The virtio-mmio transport of the builtin VMM.
//!
//! [`VirtioDevice`] is the seam between a transport-independent device
//! backend (vsock, fs, later block and net) and the transport that carries it.
//! [`MmioTransport`] is the virtio 1.x MMIO register file (version 2, "modern")
//! that the machine maps into guest physical memory; it owns the queue
//! configuration written by the driver and hands the device ready
//! `virtio_queue::Queue`s once the driver sets `DRIVER_OK`.

mod device;
mod mmio;
mod worker;

pub use device::{
    read_config_bytes, ActivateError, Activation, ActiveQueue, InterruptKind, VirtioDevice,
    VirtioInterrupt, VirtioMemory,
};
pub use mmio::{
    MmioInterrupt, MmioTransport, QueueSnapshot, TransportState, CONFIG_SNAPSHOT_LEN, MMIO_MAGIC,
    MMIO_VERSION, QUEUE_NOTIFY_OFFSET,
};
pub use worker::{notify_queue, wait_readable, Worker};
