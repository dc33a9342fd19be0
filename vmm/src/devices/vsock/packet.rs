//! The virtio-vsock packet header: field values of the spec and an owned copy
//! of the header that the rest of the device works with.
//!
//! RX buffers are parsed by `virtio-vsock`'s `VsockPacket`; TX chains are
//! parsed in `device.rs` because Linux spreads one payload over several
//! descriptors, which `VsockPacket` does not accept.

use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;

/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type this device carries.
pub(crate) const TYPE_STREAM: u16 = 1;

/// `VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE`: the sender will receive no more data.
pub(crate) const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_F_SEND`: the sender will send no more data.
pub(crate) const SHUTDOWN_SEND: u32 = 2;

/// The size of the header in guest memory.
pub(crate) const HEADER_LEN: u32 = virtio_vsock::packet::PKT_HEADER_SIZE as u32;

/// Packet operations (`VIRTIO_VSOCK_OP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Request,
    Response,
    Rst,
    Shutdown,
    Rw,
    CreditUpdate,
    CreditRequest,
}

impl Op {
    pub(crate) fn from_raw(op: u16) -> Option<Self> {
        Some(match op {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }

    pub(crate) fn raw(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }
}

/// An owned copy of a packet header (host byte order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// Parses a raw little-endian header (for chains `VsockPacket` refused).
    pub(crate) fn from_bytes(b: &[u8; HEADER_LEN as usize]) -> Self {
        let u64_at = |o: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(b.get(o..o + 8).unwrap_or(&[0; 8]));
            u64::from_le_bytes(v)
        };
        let u32_at = |o: usize| {
            let mut v = [0u8; 4];
            v.copy_from_slice(b.get(o..o + 4).unwrap_or(&[0; 4]));
            u32::from_le_bytes(v)
        };
        let u16_at = |o: usize| {
            let mut v = [0u8; 2];
            v.copy_from_slice(b.get(o..o + 2).unwrap_or(&[0; 2]));
            u16::from_le_bytes(v)
        };
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Writes every field into the packet's header in guest memory.
    pub(crate) fn write<B: BitmapSlice>(&self, pkt: &mut VsockPacket<'_, B>) {
        pkt.set_src_cid(self.src_cid)
            .set_dst_cid(self.dst_cid)
            .set_src_port(self.src_port)
            .set_dst_port(self.dst_port)
            .set_len(self.len)
            .set_type(self.type_)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_buf_alloc(self.buf_alloc)
            .set_fwd_cnt(self.fwd_cnt);
    }
}
