//! A blocking rtnetlink channel to the kernel: one request at a time, each
//! waiting for its acknowledgement or its whole dump.
//!
//! The socket belongs to the network namespace of the thread that opens it,
//! which is what lets host tests configure a namespace of their own.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{AgentError, Result};

/// An open rtnetlink socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket connected to the kernel.
    pub fn open() -> Result<Netlink> {
        let socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| AgentError::io("opening rtnetlink", e))?;
        // Port 0 is the kernel.
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| AgentError::io("connecting rtnetlink", e))?;
        Ok(Netlink { socket, seq: 0 })
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| AgentError::io("sending to rtnetlink", e))?;
        Ok(self.seq)
    }

    /// Receives the next datagram and splits it into messages of request
    /// `seq` (stale replies to earlier requests are dropped).
    fn receive(&self, seq: u32) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let (buf, _) = self
            .socket
            .recv_from_full()
            .map_err(|e| AgentError::io("receiving from rtnetlink", e))?;
        let mut messages = Vec::new();
        let mut offset = 0;
        while offset < buf.len() {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                .map_err(|e| {
                    AgentError::io(
                        "decoding an rtnetlink reply",
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                    )
                })?;
            let len = message.header.length as usize;
            if len == 0 {
                break;
            }
            // Messages are 4-byte aligned in a datagram.
            offset += (len + 3) & !3;
            if message.header.sequence_number == seq {
                messages.push(message);
            }
        }
        Ok(messages)
    }

    /// Sends a request that changes something and waits for its ack.
    /// `what` names the change in the error ("renaming eth1 to eth0").
    pub fn execute(&mut self, what: &str, message: RouteNetlinkMessage, flags: u16) -> Result<()> {
        let seq = self.send(message, flags | NLM_F_ACK)?;
        loop {
            for reply in self.receive(seq)? {
                if let NetlinkPayload::Error(err) = reply.payload {
                    return match err.code {
                        None => Ok(()),
                        Some(_) => Err(AgentError::io(what, err.to_io())),
                    };
                }
            }
        }
    }

    /// Sends a dump request and gathers every reply until the end of the dump.
    pub fn dump(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(message, NLM_F_DUMP)?;
        let mut out = Vec::new();
        loop {
            for reply in self.receive(seq)? {
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(err) if err.code.is_some() => {
                        return Err(AgentError::io(what, err.to_io()))
                    }
                    _ => {}
                }
            }
        }
    }
}
