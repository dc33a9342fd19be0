//! The KVM machine: guest memory, vCPUs, Linux boot and legacy devices.
