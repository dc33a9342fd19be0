//! virtio-fs backend: fuse-backend-rs passthrough confined to the sandbox share.
