//! virtio-vsock backend: hybrid vsock over Unix sockets (Firecracker protocol).
