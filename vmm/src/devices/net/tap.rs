//! The host side of a guest NIC: a Linux tap device with virtio-net headers.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::Error;

/// Size of the virtio-net header in front of every frame on the tap: the
/// `virtio_net_hdr_v1` layout (with `num_buffers`), which is what a
/// `VIRTIO_F_VERSION_1` driver uses whether or not it negotiated mergeable
/// receive buffers, so frames pass between guest and tap unconverted.
pub const VNET_HDR_LEN: usize = 12;

/// `IFNAMSIZ`: interface names are at most 15 bytes plus the NUL.
const IFNAMSIZ: usize = 16;

/// `struct ifreq` as `TUNSETIFF` reads and writes it: the name, then the
/// flags at the start of the union (40 bytes in all on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A tap device opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: each read
/// returns one Ethernet frame after a [`VNET_HDR_LEN`]-byte virtio-net
/// header, each write takes one in the same form.
///
/// The tap is not persistent: the interface goes away with the last file
/// descriptor, so it cannot outlive the VM even when the process is killed.
/// The descriptor is non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates (or attaches to) the tap `name` in the calling thread's
    /// network namespace. `name` may be a kernel template such as
    /// `"husktap%d"`; [`name`](Self::name) then says which one was made.
    pub fn open(name: &str) -> Result<Tap, Error> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
            return Err(Error::TapName(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| Error::Tap("open /dev/net/tun", e))?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req`
        // is laid out as, and `req` outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(Error::Tap("TUNSETIFF", io::Error::last_os_error()));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if rc < 0 {
            return Err(Error::Tap("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        // The kernel wrote the final name (the template filled in) back.
        let name = CStr::from_bytes_until_nul(&req.name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| name.to_owned());
        let tap = Tap { file, name };
        // No offloads until the guest says which it can take.
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// The interface name the kernel gave the tap.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another handle on the same tap (same queue, same non-blocking file).
    pub fn try_clone(&self) -> Result<Tap, Error> {
        Ok(Tap {
            file: self
                .file
                .try_clone()
                .map_err(|e| Error::Tap("dup tap fd", e))?,
            name: self.name.clone(),
        })
    }

    /// Sets which offloads the kernel may use in frames it hands to us
    /// (`TUN_F_*`): partial checksums and the GSO types the guest accepts.
    pub fn set_offload(&self, flags: u32) -> Result<(), Error> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(Error::Tap("TUNSETOFFLOAD", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Reads one frame (header included) into `buf`; `WouldBlock` when
    /// none is queued.
    pub(crate) fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame gathered from `iovs`.
    ///
    /// # Safety
    ///
    /// Every iovec must describe memory valid for reads for the whole call.
    pub(crate) unsafe fn write_frame(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        // `iovs` is bounded far below IOV_MAX by the caller.
        let n = libc::writev(
            self.file.as_raw_fd(),
            iovs.as_ptr(),
            iovs.len() as libc::c_int,
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
