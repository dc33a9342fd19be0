//! Errors of the virtio-fs backend.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while setting up or serving the virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty, longer than the 36 bytes of the config space, or holds a NUL.
    #[error("invalid virtio-fs tag {0:?}: must be 1 to 36 bytes without NUL")]
    InvalidTag(String),
    /// The number of request queues or the queue size is out of range.
    #[error("invalid queue layout: {0}")]
    InvalidQueues(&'static str),
    /// The shared directory path cannot be handed to the passthrough file system.
    #[error("shared directory path {0:?} is not valid UTF-8")]
    NonUtf8Path(PathBuf),
    /// The shared directory cannot be opened.
    #[error("cannot open shared directory {path:?}: {source}")]
    OpenShare {
        /// The directory we tried to open.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// The passthrough file system could not be created or could not import its root.
    #[error("passthrough file system setup failed: {0}")]
    Passthrough(io::Error),
    /// The directory the passthrough file system imported is not the one we opened
    /// (the path was swapped between the two opens).
    #[error("shared directory {0:?} changed while the device was being set up")]
    ShareChanged(PathBuf),
    /// A helper thread could not be spawned or joined.
    #[error("cannot run helper thread: {0}")]
    Thread(io::Error),
    /// Confining the serving thread to the share (unshare + chroot) failed.
    #[error("cannot confine the serving thread to the share: {0}")]
    ThreadSandbox(io::Error),
    /// The calling thread is already confined to another share, so it must not serve this one.
    #[error("this thread is already confined to another share")]
    ThreadConfinedElsewhere,
    /// The guest broke the virtqueue (for example an available index that runs ahead by more
    /// than the queue size); the queue cannot be used until the device is reset.
    #[error("virtqueue is broken: {0}")]
    Queue(virtio_queue::Error),
    /// The vhost-user socket could not be set up or served.
    #[error("vhost-user: {0}")]
    VhostUser(#[from] crate::vhost_user::Error),
}
