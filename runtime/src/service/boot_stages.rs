//! The guest's side of the boot budget: the stages the agent timed on the
//! guest's clock (`GetGuestDetails`), logged beside the host's own stages.

use husk_protocol::agent::{BootStages, GuestDetailsRequest};
use husk_protocol::agent_ttrpc::AgentServiceClient;

use crate::agent_client::ctx;

/// The guest's stages that were reached, in boot order, each with its time
/// on the guest's clock (nanoseconds since kernel entry).
pub fn reached(boot: &BootStages) -> Vec<(&'static str, u64)> {
    [
        ("guest-init", boot.init_ns),
        ("guest-base-system", boot.base_system_ns),
        ("guest-listening", boot.listening_ns),
        ("guest-ready-sent", boot.ready_sent_ns),
        ("guest-sandbox-created", boot.sandbox_created_ns),
        ("guest-container-created", boot.container_created_ns),
        ("guest-container-started", boot.container_started_ns),
    ]
    .into_iter()
    .filter(|(_, at)| *at != 0)
    .collect()
}

/// Asks the agent for its boot stages and logs each (at info) as a
/// `guest_stage` with `guest_ms` (since kernel entry) and `ms` (since the
/// stage before). Costs one call, so callers make it only when info logs
/// are wanted; a failure is only logged.
pub async fn log(agent: &AgentServiceClient, sandbox: &str) {
    let details = match agent
        .get_guest_details(ctx(), &GuestDetailsRequest::new())
        .await
    {
        Ok(details) => details,
        Err(e) => {
            tracing::debug!(sandbox, "GetGuestDetails: {e}");
            return;
        }
    };
    let Some(boot) = details.boot.as_ref() else {
        return;
    };
    let mut previous = 0;
    for (stage, at) in reached(boot) {
        tracing::info!(
            guest_stage = stage,
            guest_ms = ns_to_ms(at),
            ms = ns_to_ms(at.saturating_sub(previous)),
            sandbox,
            "guest stage"
        );
        previous = at;
    }
}

/// Nanoseconds as milliseconds with two decimals.
fn ns_to_ms(ns: u64) -> f64 {
    (ns as f64 / 1e4).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_come_in_boot_order_without_the_unreached() {
        let boot = BootStages {
            init_ns: 300_000_000,
            listening_ns: 350_000_000,
            sandbox_created_ns: 500_000_000,
            ..Default::default()
        };
        assert_eq!(
            reached(&boot),
            [
                ("guest-init", 300_000_000),
                ("guest-listening", 350_000_000),
                ("guest-sandbox-created", 500_000_000)
            ]
        );
        assert_eq!(ns_to_ms(1_234_567), 1.23);
    }
}
