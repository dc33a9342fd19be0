//! `husk-agent`: PID 1 of the husk guest.
//!
//! It mounts the guest's base file systems ([`init`]), reaps every child
//! ([`reaper`]), and serves the agent API ([`service`]) over ttrpc, creating
//! OCI containers with youki's libcontainer ([`engine`]). It configures the
//! guest's network from the host's description ([`network`]) and relays DNS
//! queries for loopback nameservers to the host ([`dns_relay`]). It tells
//! the host when it is ready ([`ready`]) and times its boot ([`boot_stages`]).

pub mod boot_stages;
pub mod cgroups;
pub mod dns_relay;
pub mod engine;
pub mod error;
pub mod guest;
pub mod init;
pub mod late_seccomp;
pub mod listen;
pub mod network;
pub mod process;
pub mod propagation;
pub mod ready;
pub mod reaper;
pub mod sandbox;
pub mod service;
pub mod stdio;
pub mod storage;
pub mod switch_root;
pub mod validate;
