//! The OCI runtime contract on the host: bundles, the state document,
//! hooks, and the spec the guest agent receives.

pub mod bundle;
pub mod guest_spec;
pub mod hooks;
pub mod state;
