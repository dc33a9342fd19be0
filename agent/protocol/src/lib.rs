//! The husk agent API, shared by the host runtime (client) and `husk-agent`
//! (server).
//!
//! Generated at build time from `proto/agent.proto`: [`agent`] holds the
//! messages, [`agent_ttrpc`] the async ttrpc client and service trait.

/// Protobuf messages of the agent API.
#[allow(
    clippy::all,
    missing_docs,
    unused,
    non_camel_case_types,
    non_upper_case_globals
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// The ttrpc `AgentService`: client and server bindings.
#[allow(
    clippy::all,
    missing_docs,
    unused,
    non_camel_case_types,
    non_upper_case_globals
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// The vsock port the agent listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The vsock port on the host (CID 2) that relays the guest's DNS queries
/// to the loopback nameservers of the container's network namespace.
///
/// Per connection: one header line `udp <ip>\n` or `tcp <ip>\n` (at most
/// 64 bytes), then DNS-over-TCP framing both ways (2-byte big-endian length,
/// then the message).
pub const DNS_RELAY_VSOCK_PORT: u32 = 1025;

/// Upper bound on one `ReadStdout`/`ReadStderr` reply, well under ttrpc's
/// 4 MiB message limit.
pub const MAX_READ_CHUNK: u32 = 1 << 20;

pub use ttrpc;
