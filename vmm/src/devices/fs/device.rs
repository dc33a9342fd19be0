//! The transport-independent virtio-fs device: one hiprio queue plus request queues, each
//! carrying FUSE requests that `fuse-backend-rs`'s `Server` answers from the confined share.

use std::fs::File;
use std::io;
use std::num::Wrapping;
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use fuse_backend_rs::api::filesystem::{Context, FileSystem, ROOT_ID};
use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE};
use fuse_backend_rs::passthrough::{Config as PassthroughConfig, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemory;

use super::confined::ConfinedFs;
use super::sandbox::{self, RootId};
use super::FsError;

/// Length of the tag field in the virtio-fs config space.
pub const TAG_LEN: usize = 36;

/// Size of the virtio-fs config space: the tag, then `num_request_queues` (le32).
pub const CONFIG_SPACE_LEN: usize = TAG_LEN + 4;

/// Largest queue the device accepts (virtio split queues allow 32768; virtiofsd uses 1024).
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Most request queues the device offers.
pub const MAX_REQUEST_QUEUES: u16 = 16;

/// Most bytes the device reads from, or writes to, one descriptor chain.
///
/// The FUSE server refuses requests longer than `MAX_BUFFER_SIZE` plus a 4 KiB header and
/// offers the guest 1 MiB reads and writes; capping chains at the same size bounds every buffer
/// the server or the passthrough file system sizes from a guest-supplied length
/// (`READDIR`, `READ`, `IOCTL`).
pub const MAX_CHAIN_BYTES: u64 = MAX_BUFFER_SIZE as u64 + 0x1000;

/// Setup of one virtio-fs device.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Host directory served as the root of the guest's mount (`<sandbox>/shared/`).
    pub shared_dir: PathBuf,
    /// Mount tag the guest uses (`mount -t virtiofs <tag> ...`), 1 to 36 bytes.
    pub tag: String,
    /// Number of request queues (the hiprio queue comes on top).
    pub request_queues: u16,
    /// Confine serving threads with `unshare(CLONE_FS)` + `chroot` into the share before they
    /// process a queue. Only tests that must keep their own root turn this off.
    pub thread_sandbox: bool,
}

impl FsConfig {
    /// One request queue, serving threads sandboxed.
    pub fn new(shared_dir: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        FsConfig {
            shared_dir: shared_dir.into(),
            tag: tag.into(),
            request_queues: 1,
            thread_sandbox: true,
        }
    }

    fn validate(&self) -> Result<(), FsError> {
        let tag = self.tag.as_bytes();
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains(&0) {
            return Err(FsError::InvalidTag(self.tag.clone()));
        }
        if self.request_queues == 0 || self.request_queues > MAX_REQUEST_QUEUES {
            return Err(FsError::InvalidQueues("1 to 16 request queues"));
        }
        Ok(())
    }
}

/// The virtio-fs device core, shared by every transport.
///
/// A transport owns the queues and guest memory; it calls [`FsDevice::process_queue`] when
/// the guest kicks a queue and signals the guest when that returns `true`. `process_queue`
/// takes `&self`, so several threads may serve different queues at once.
pub struct FsDevice {
    server: Server<ConfinedFs>,
    root: File,
    root_id: RootId,
    config: FsConfig,
}

impl std::fmt::Debug for FsDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsDevice")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl FsDevice {
    /// Opens the share and sets up the passthrough file system for it.
    pub fn new(config: FsConfig) -> Result<Self, FsError> {
        config.validate()?;
        let root = open_root(&config.shared_dir)?;
        let root_id = RootId::of(&root).map_err(|source| FsError::OpenShare {
            path: config.shared_dir.clone(),
            source,
        })?;
        let fs = import_passthrough(&config.shared_dir)?;

        // PassthroughFs opened the share by path on its own; make sure it is the directory we
        // hold (and chroot the serving threads into), not something swapped in meanwhile.
        let (st, _) = fs
            .getattr(&Context::new(), ROOT_ID, None)
            .map_err(FsError::Passthrough)?;
        if !root_id.matches(st.st_dev, st.st_ino) {
            return Err(FsError::ShareChanged(config.shared_dir.clone()));
        }

        Ok(FsDevice {
            server: Server::new(ConfinedFs::new(fs)),
            root,
            root_id,
            config,
        })
    }

    /// The configuration the device was built from.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// Number of virtqueues: the hiprio queue (index 0) plus the request queues.
    pub fn num_queues(&self) -> usize {
        1 + usize::from(self.config.request_queues)
    }

    /// Virtio feature bits the device offers.
    pub fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC
    }

    /// The virtio-fs config space: NUL-padded tag, then `num_request_queues` (le32).
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut space = [0u8; CONFIG_SPACE_LEN];
        let tag = self.config.tag.as_bytes();
        // `validate` bounds the tag to TAG_LEN bytes.
        space[..tag.len()].copy_from_slice(tag);
        space[TAG_LEN..].copy_from_slice(&u32::from(self.config.request_queues).to_le_bytes());
        space
    }

    /// Confines the calling thread to the share (see `sandbox.rs`); a no-op when the config
    /// turned the thread sandbox off. Called by [`FsDevice::process_queue`]; a transport may
    /// call it earlier to fail at start rather than at the first request.
    pub fn enter_thread_sandbox(&self) -> Result<(), FsError> {
        if self.config.thread_sandbox {
            sandbox::confine_current_thread(&self.root, self.root_id)?;
        }
        Ok(())
    }

    /// Answers every request the guest made available on `queue`.
    ///
    /// Returns whether the guest must be notified (used buffers were added and, with
    /// `EVENT_IDX`, the guest asked to hear about them). A malformed chain is returned to the
    /// guest unanswered (used length 0); an `Err` means the queue itself is unusable until the
    /// device is reset.
    pub fn process_queue<G: GuestMemory>(
        &self,
        queue: &mut Queue,
        mem: &G,
    ) -> Result<bool, FsError> {
        self.enter_thread_sandbox()?;
        let mut used_any = false;
        loop {
            queue.disable_notification(mem).map_err(FsError::Queue)?;
            check_avail_index(queue, mem)?;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let len = self.handle_chain(mem, chain);
                queue.add_used(mem, head, len).map_err(FsError::Queue)?;
                used_any = true;
            }
            if !queue.enable_notification(mem).map_err(FsError::Queue)? {
                break;
            }
        }
        if !used_any {
            return Ok(false);
        }
        queue.needs_notification(mem).map_err(FsError::Queue)
    }

    /// Serves one request; returns the number of bytes written into the chain.
    fn handle_chain<G: GuestMemory>(&self, mem: &G, chain: DescriptorChain<&G>) -> u32 {
        let (readable, writable) = chain_lengths(&chain);
        if readable > MAX_CHAIN_BYTES || writable > MAX_CHAIN_BYTES {
            tracing::debug!(readable, writable, "virtio-fs: oversized chain dropped");
            return 0;
        }
        let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("virtio-fs: bad readable descriptors: {e}");
                return 0;
            }
        };
        let writer = match VirtioFsWriter::new(mem, chain) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!("virtio-fs: bad writable descriptors: {e}");
                return 0;
            }
        };
        // A panic inside the FUSE server must not take the serving thread (and with it the
        // device) down; the request is dropped like any other malformed one.
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.server
                .handle_message(reader, writer.into(), None, None)
        }));
        match result {
            Ok(Ok(written)) => u32::try_from(written).unwrap_or(0).min(writable as u32),
            Ok(Err(e)) => {
                tracing::debug!("virtio-fs: request dropped: {e}");
                0
            }
            Err(_) => {
                tracing::error!("virtio-fs: FUSE server panicked; request dropped");
                0
            }
        }
    }
}

/// Refuses an available index that claims more new entries than the queue holds: the queue
/// iterator would yield nothing while notifications keep reporting work, spinning forever.
fn check_avail_index<G: GuestMemory>(queue: &Queue, mem: &G) -> Result<(), FsError> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(FsError::Queue)?;
    let pending = (avail - Wrapping(queue.next_avail())).0;
    if pending > queue.size() {
        return Err(FsError::Queue(virtio_queue::Error::InvalidAvailRingIndex));
    }
    Ok(())
}

/// Total (device-readable, device-writable) bytes of a chain, saturating.
///
/// The chain iterator itself stops at loops (a chain is never longer than the queue) and at
/// 4 GiB in total, so this walk is bounded.
fn chain_lengths<G: GuestMemory>(chain: &DescriptorChain<&G>) -> (u64, u64) {
    chain.clone().fold((0u64, 0u64), |(r, w), desc| {
        let len = u64::from(desc.len());
        if desc.is_write_only() {
            (r, w.saturating_add(len))
        } else {
            (r.saturating_add(len), w)
        }
    })
}

fn open_root(path: &Path) -> Result<File, FsError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| FsError::OpenShare {
            path: path.to_owned(),
            source,
        })
}

/// Builds and imports the passthrough file system on a helper thread.
///
/// `PassthroughFs::import` sets the umask to 0; on a thread with its own file system context
/// that change stays on the helper instead of reaching the whole process.
fn import_passthrough(shared_dir: &Path) -> Result<PassthroughFs, FsError> {
    let root_dir = shared_dir
        .to_str()
        .ok_or_else(|| FsError::NonUtf8Path(shared_dir.to_owned()))?
        .to_owned();
    let cfg = PassthroughConfig {
        root_dir,
        do_import: true,
        xattr: false,
        ..Default::default()
    };
    let worker = std::thread::Builder::new()
        .name("husk-fs-import".into())
        .spawn(move || -> Result<PassthroughFs, FsError> {
            sandbox::unshare_fs_context().map_err(FsError::ThreadSandbox)?;
            let fs = PassthroughFs::new(cfg).map_err(FsError::Passthrough)?;
            fs.import().map_err(FsError::Passthrough)?;
            Ok(fs)
        })
        .map_err(FsError::Thread)?;
    worker
        .join()
        .map_err(|_| FsError::Thread(io::Error::other("import thread panicked")))?
}
