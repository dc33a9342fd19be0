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

/// The kernel command-line word `<AGENT_LOG_ENV>=<level>` sets the agent's
/// log level. The kernel hands a `key=value` word it does not know (and
/// whose key has no dot) to init as an environment variable; the host
/// cannot use init's arguments (after `--`), since the builtin VMM's
/// `virtio_mmio.device=` words come last on the line.
pub const AGENT_LOG_ENV: &str = "husk_agent_log";

/// The vsock port on the host (CID 2) that relays the guest's DNS queries
/// to the loopback nameservers of the container's network namespace.
///
/// Per connection: one header line `udp <ip>\n` or `tcp <ip>\n` (at most
/// 64 bytes), then DNS-over-TCP framing both ways (2-byte big-endian length,
/// then the message).
pub const DNS_RELAY_VSOCK_PORT: u32 = 1025;

/// The vsock port on the host (CID 2) the agent connects to once it
/// listens, to say the guest is ready: it writes [`READY_LINE`] and closes.
/// The host listens there before the VM starts, so it reacts at once
/// instead of polling the agent's port while the guest boots.
pub const READY_VSOCK_PORT: u32 = 1026;

/// What the agent writes on its [`READY_VSOCK_PORT`] connection.
pub const READY_LINE: &str = "READY\n";

/// Upper bound on one `ReadStdout`/`ReadStderr` reply, well under ttrpc's
/// 4 MiB message limit.
pub const MAX_READ_CHUNK: u32 = 1 << 20;

pub use ttrpc;
