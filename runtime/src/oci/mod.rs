//! The OCI runtime contract on the host: bundles, the state document,
//! hooks, the network namespace, and the spec the guest agent receives.

pub mod bundle;
pub mod cpuset;
pub mod guest_spec;
pub mod hooks;
pub mod namespaces;
pub mod netns;
pub mod state;
