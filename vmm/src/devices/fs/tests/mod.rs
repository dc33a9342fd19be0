//! Unit tests: a simulated guest (in-memory RAM + split virtqueue) sends real FUSE requests
//! to the device core.

mod harness;

mod escape;
mod hostile;
mod mmio;

mod ops;
