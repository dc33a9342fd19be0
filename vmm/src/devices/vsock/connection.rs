//! One guest <-> host stream: the virtio-vsock connection state machine and
//! its credit-based flow control, over a non-blocking Unix stream.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError};
use vmm_sys_util::epoll::EventSet;

use super::packet::{Header, Op, HEADER_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// The receive buffer we advertise to the guest (`buf_alloc`) and so the most
/// guest data one connection ever holds while the host peer is slow.
pub(crate) const CONN_BUF_SIZE: u32 = 128 * 1024;

/// The largest payload of one packet, in either direction.
pub(crate) const MAX_PKT_DATA: u32 = 64 * 1024;

/// What the connection's owner must do after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep the connection.
    Keep,
    /// Drop it without telling the guest (it reset the connection itself).
    Close,
    /// Drop it and send the guest a RST.
    Reset,
}

/// The outcome of offering the connection an RX buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RxFill {
    /// A packet of this many bytes (header included) was written.
    Packet(u32),
    /// Nothing to send after all; the buffer is untouched.
    Nothing,
    /// The host side failed: drop the connection and reset the guest's.
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent (or queued), waiting for the guest's RESPONSE.
    Connecting,
    /// Data may flow.
    Established,
}

/// A connection between a guest port and a host Unix stream.
pub(crate) struct Connection {
    stream: UnixStream,
    guest_cid: u64,
    /// Our end's port (the host side of the vsock address pair).
    local_port: u32,
    /// The guest's port.
    peer_port: u32,
    state: State,

    // Host -> guest: how much the guest can take (its credit).
    guest_buf_alloc: u32,
    guest_fwd_cnt: Wrapping<u32>,
    to_guest_cnt: Wrapping<u32>,

    // Guest -> host: our buffer for data the host peer has not taken yet.
    to_host: VecDeque<u8>,
    from_guest_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,

    /// The host peer may have data for us (epoll said so; cleared on EAGAIN).
    host_readable: bool,
    /// The host peer closed its end; epoll will only ever report HUP again.
    host_hup: bool,
    /// The host peer sent end-of-file; SHUTDOWN(SEND) goes to the guest.
    host_eof: bool,
    host_write_shut: bool,
    guest_shut_send: bool,
    guest_shut_rcv: bool,

    send_request: bool,
    send_response: bool,
    send_credit_update: bool,
}

impl Connection {
    fn new(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        state: State,
    ) -> Self {
        Connection {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state,
            guest_buf_alloc: 0,
            guest_fwd_cnt: Wrapping(0),
            to_guest_cnt: Wrapping(0),
            to_host: VecDeque::new(),
            from_guest_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            host_readable: false,
            host_hup: false,
            host_eof: false,
            host_write_shut: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            send_request: false,
            send_response: false,
            send_credit_update: false,
        }
    }

    /// A connection the host peer asked for with `CONNECT <peer_port>`.
    pub(crate) fn host_initiated(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
    ) -> Self {
        let mut conn = Self::new(stream, guest_cid, local_port, peer_port, State::Connecting);
        conn.send_request = true;
        conn
    }

    /// A connection the guest asked for with `request`, already connected on the host.
    pub(crate) fn guest_initiated(stream: UnixStream, guest_cid: u64, request: &Header) -> Self {
        let mut conn = Self::new(
            stream,
            guest_cid,
            request.dst_port,
            request.src_port,
            State::Established,
        );
        conn.update_guest_credit(request);
        conn.send_response = true;
        conn
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub(crate) fn host_hup(&self) -> bool {
        self.host_hup
    }

    /// How many more bytes the guest said it can take.
    fn guest_credit(&self) -> u32 {
        let in_flight = (self.to_guest_cnt - self.guest_fwd_cnt).0;
        self.guest_buf_alloc.saturating_sub(in_flight)
    }

    fn update_guest_credit(&mut self, hdr: &Header) {
        self.guest_buf_alloc = hdr.buf_alloc;
        self.guest_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    fn can_read_host(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.guest_credit() > 0
    }

    /// Whether the connection has a packet for the guest.
    pub(crate) fn wants_rx(&self) -> bool {
        self.send_request || self.send_response || self.send_credit_update || self.can_read_host()
    }

    /// The host-side events worth waiting for now. Reading stops while the
    /// guest has no credit, so a stalled guest reader only stalls its own peer.
    pub(crate) fn interest(&self) -> EventSet {
        let mut events = EventSet::empty();
        if self.state == State::Established
            && !self.host_readable
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.guest_credit() > 0
        {
            events |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            events |= EventSet::OUT;
        }
        events
    }

    /// Both directions are finished: the guest sent everything (and the host
    /// peer got it) and nothing more will flow towards the guest.
    pub(crate) fn finished(&self) -> bool {
        self.state == State::Established
            && self.guest_shut_send
            && self.to_host.is_empty()
            && (self.host_eof || self.guest_shut_rcv)
    }

    /// A header from us to the guest's end of this connection.
    pub(crate) fn header(&self, op: Op) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op.raw(),
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Handles a packet the guest sent on this connection.
    pub(crate) fn on_guest_packet(&mut self, op: Op, hdr: &Header, data: Option<&[u8]>) -> Verdict {
        self.update_guest_credit(hdr);
        match op {
            Op::Rst => Verdict::Close,
            Op::Request => Verdict::Reset,
            Op::Response => self.on_response(),
            Op::Rw => match data {
                Some(data) if self.state == State::Established && !self.guest_shut_send => {
                    self.forward_to_host(data)
                }
                None if hdr.len == 0 && self.state == State::Established => Verdict::Keep,
                _ => Verdict::Reset,
            },
            Op::CreditUpdate => Verdict::Keep,
            Op::CreditRequest => {
                self.send_credit_update = true;
                Verdict::Keep
            }
            Op::Shutdown => {
                if self.state != State::Established {
                    return Verdict::Reset;
                }
                self.guest_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.guest_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                self.flush_to_host()
            }
        }
    }

    fn on_response(&mut self) -> Verdict {
        if self.state != State::Connecting {
            return Verdict::Reset;
        }
        self.state = State::Established;
        // The stream is fresh and the host peer is waiting for this line, so
        // the socket buffer has room for it; anything else means it is gone.
        let line = format!("OK {}\n", self.local_port);
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => Verdict::Keep,
            _ => Verdict::Reset,
        }
    }

    /// Sends guest data to the host peer, buffering what it cannot take yet.
    fn forward_to_host(&mut self, data: &[u8]) -> Verdict {
        let len = data.len();
        if len == 0 {
            return Verdict::Keep;
        }
        // A guest that ignores our buf_alloc gets reset, not more memory.
        if self.to_host.len().saturating_add(len) > CONN_BUF_SIZE as usize {
            return Verdict::Reset;
        }
        let mut written = 0;
        if self.to_host.is_empty() && !self.host_write_shut {
            loop {
                match self.stream.write(data) {
                    Ok(n) => written = n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => return Verdict::Reset,
                }
                break;
            }
        }
        self.to_host.extend(data.get(written..).unwrap_or_default());
        self.from_guest_cnt += Wrapping(len as u32);
        self.fwd_cnt += Wrapping(written as u32);
        self.note_forwarded();
        Verdict::Keep
    }

    /// Writes buffered guest data to the host peer, as much as it takes.
    fn flush_to_host(&mut self) -> Verdict {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Verdict::Reset,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Verdict::Reset,
            }
        }
        if self.to_host.is_empty() && self.guest_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        self.note_forwarded();
        Verdict::Keep
    }

    /// Schedules a CREDIT_UPDATE once the guest believes our buffer is at
    /// least half full and a quarter of it has been freed since it last heard.
    fn note_forwarded(&mut self) {
        let believed_used = (self.from_guest_cnt - self.last_fwd_cnt_sent).0;
        let freed = (self.fwd_cnt - self.last_fwd_cnt_sent).0;
        if believed_used >= CONN_BUF_SIZE / 2 && freed >= CONN_BUF_SIZE / 4 {
            self.send_credit_update = true;
        }
    }

    /// Handles readiness of the host stream.
    pub(crate) fn on_host_event(&mut self, events: EventSet) -> Verdict {
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.host_hup = true;
            // Nobody will read what the guest sent or answer the request.
            if self.state == State::Connecting || !self.to_host.is_empty() {
                return Verdict::Reset;
            }
            // What the peer wrote before leaving is still readable.
            self.host_readable = true;
        }
        if events.contains(EventSet::IN) {
            self.host_readable = true;
        }
        if events.contains(EventSet::OUT) {
            return self.flush_to_host();
        }
        Verdict::Keep
    }

    /// Writes the connection's next packet for the guest into `pkt`.
    pub(crate) fn fill_rx<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> RxFill {
        let mut hdr = if self.send_request {
            self.send_request = false;
            self.header(Op::Request)
        } else if self.send_response {
            self.send_response = false;
            self.header(Op::Response)
        } else if let Some(fill) = self.read_host_into(pkt) {
            match fill {
                Ok(hdr) => hdr,
                Err(()) => return RxFill::Reset,
            }
        } else if self.send_credit_update {
            self.header(Op::CreditUpdate)
        } else {
            return RxFill::Nothing;
        };
        // Every packet carries our fwd_cnt, so it is also a credit update.
        hdr.fwd_cnt = self.fwd_cnt.0;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.send_credit_update = false;
        hdr.write(pkt);
        RxFill::Packet(HEADER_LEN.saturating_add(hdr.len))
    }

    /// Reads host data straight into the packet's data buffer. `None` when
    /// there is nothing to read now; `Err` when the host stream failed.
    fn read_host_into<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
    ) -> Option<Result<Header, ()>> {
        if !self.can_read_host() {
            return None;
        }
        let room = pkt.data_slice().map_or(0, |d| d.len());
        let max = room
            .min(self.guest_credit() as usize)
            .min(MAX_PKT_DATA as usize);
        if max == 0 {
            return None;
        }
        let mut buf = pkt.data_slice()?.subslice(0, max).ok()?;
        loop {
            return match self.stream.read_volatile(&mut buf) {
                Ok(0) => {
                    self.host_eof = true;
                    let mut hdr = self.header(Op::Shutdown);
                    hdr.flags = SHUTDOWN_SEND;
                    Some(Ok(hdr))
                }
                Ok(n) => {
                    self.to_guest_cnt += Wrapping(n as u32);
                    let mut hdr = self.header(Op::Rw);
                    hdr.len = n as u32;
                    Some(Ok(hdr))
                }
                Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::Interrupted => {
                    continue
                }
                Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    None
                }
                Err(_) => Some(Err(())),
            };
        }
    }
}
