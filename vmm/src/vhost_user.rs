//! Serving husk device backends to QEMU over vhost-user.
