//! The virtio-mmio transport of the builtin VMM.
