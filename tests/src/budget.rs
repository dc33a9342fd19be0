//! The boot budget's arithmetic (`runtime/benches/boot_budget.rs`): the
//! stages of a `husk run` from its JSON log, host and guest, as intervals.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The host stages, in the order a `husk run` reaches them, with what the
/// interval ending there covers.
pub const HOST_STAGES: [(&str, &str); 11] = [
    ("cli", "husk exec'd, config loaded"),
    (
        "sandbox-process",
        "init proxy, hooks, sandbox process spawned",
    ),
    ("network", "the namespace's links wired to taps"),
    ("vm-started", "sandbox dir, ready socket, VMM spawned"),
    ("agent-ready", "guest boot until the agent says ready"),
    ("agent-answers", "agent connection"),
    ("sandbox-created", "guest network, CreateSandbox"),
    ("container-created", "rootfs share, CreateContainer"),
    ("created", "`create` returns (proxy attached)"),
    ("started", "`start`: StartContainer (process exec'd)"),
    ("exited", "/bin/true ran, exit reported"),
];
/// The guest stages, in boot order.
pub const GUEST_STAGES: [(&str, &str); 7] = [
    (
        "guest-init",
        "kernel entry → /init (kernel boot, initrd unpacked)",
    ),
    ("guest-base-system", "→ base file systems, cgroups"),
    ("guest-listening", "→ agent listening"),
    ("guest-ready-sent", "→ ready line sent to the host"),
    ("guest-sandbox-created", "→ CreateSandbox done"),
    ("guest-container-created", "→ CreateContainer done"),
    ("guest-container-started", "→ StartContainer done (exec'd)"),
];

/// One `husk run`: each logged host stage's interval, each guest stage's
/// interval, and the whole run.
#[derive(Default)]
pub struct Sample {
    /// Each host stage's interval (ending there).
    pub host: HashMap<String, Duration>,
    /// Each guest stage's interval on the guest's clock.
    pub guest: HashMap<String, Duration>,
    /// From the last host stage to `husk run` returning.
    pub tail: Duration,
    /// The whole run.
    pub total: Duration,
}

/// `NAME:KEY=VALUE,...` as a map with the name under `name`.
pub fn parse_variant(spec: &str) -> Result<HashMap<String, PathBuf>, String> {
    let (name, rest) = spec
        .split_once(':')
        .ok_or_else(|| format!("variant {spec:?}: expected NAME:KEY=VALUE,..."))?;
    let mut map = HashMap::from([("name".to_owned(), PathBuf::from(name.trim()))]);
    for pair in rest.split(',').filter(|p| !p.trim().is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("variant {name}: {pair:?} is not KEY=VALUE"))?;
        let key = key.trim();
        if !["husk", "kernel", "initrd", "params"].contains(&key) {
            return Err(format!("variant {name}: unknown key {key:?}"));
        }
        map.insert(key.to_owned(), PathBuf::from(value.trim()));
    }
    Ok(map)
}

/// The intervals of one run's log, `spawned` being the spawn of `husk run`.
pub fn sample(log: &str, spawned: SystemTime, total: Duration) -> Sample {
    let mut host_at: HashMap<String, Duration> = HashMap::new();
    let mut guest_at: HashMap<String, f64> = HashMap::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(stage), Some(time)) = (v["stage"].as_str(), v["time"].as_str()) {
            let Some(at) = chrono::DateTime::parse_from_rfc3339(time)
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
                .and_then(|n| u64::try_from(n).ok())
                .map(|n| UNIX_EPOCH + Duration::from_nanos(n))
            else {
                continue;
            };
            host_at
                .entry(stage.to_owned())
                .or_insert(at.duration_since(spawned).unwrap_or_default());
        }
        if let (Some(stage), Some(at)) = (
            v["guest_stage"].as_str(),
            v["guest_ms"].as_str().and_then(|s| s.parse::<f64>().ok()),
        ) {
            guest_at.entry(stage.to_owned()).or_insert(at);
        }
    }
    let mut out = Sample {
        total,
        ..Sample::default()
    };
    let mut previous = Duration::ZERO;
    for (stage, _) in HOST_STAGES {
        if let Some(&at) = host_at.get(stage) {
            out.host
                .insert(stage.to_owned(), at.saturating_sub(previous));
            previous = previous.max(at);
        }
    }
    out.tail = total.saturating_sub(previous);
    let mut previous = 0.0;
    for (stage, _) in GUEST_STAGES {
        if let Some(&at) = guest_at.get(stage) {
            let interval = (at - previous).max(0.0);
            out.guest
                .insert(stage.to_owned(), Duration::from_secs_f64(interval / 1e3));
            previous = at;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    #[test]
    fn a_log_becomes_host_and_guest_intervals() {
        let spawned = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let log = r#"{"level":"info","msg":"create","time":"2023-11-14T22:13:20.010Z","stage":"cli"}
{"level":"info","msg":"x","time":"2023-11-14T22:13:20.110Z","stage":"vm-started","ms":"1.0"}
not json
{"level":"info","msg":"guest stage","time":"2023-11-14T22:13:21Z","guest_stage":"guest-init","guest_ms":"300.5","ms":"300.5"}
{"level":"info","msg":"guest stage","time":"2023-11-14T22:13:21Z","guest_stage":"guest-listening","guest_ms":"350.5","ms":"50"}"#;
        let s = sample(log, spawned, Duration::from_millis(500));
        assert_eq!(s.host["cli"], Duration::from_millis(10));
        // Stages the run did not log are skipped: the next one takes their time.
        assert_eq!(s.host["vm-started"], Duration::from_millis(100));
        assert_eq!(s.tail, Duration::from_millis(390));
        assert!((ms(s.guest["guest-init"]) - 300.5).abs() < 0.01);
        assert!((ms(s.guest["guest-listening"]) - 50.0).abs() < 0.01);
    }

    #[test]
    fn variants_parse_and_unknown_keys_are_refused() {
        let v = parse_variant("before:husk=/a/husk,initrd=/a/initrd.img").unwrap();
        assert_eq!(v["name"], Path::new("before"));
        assert_eq!(v["husk"], Path::new("/a/husk"));
        assert!(parse_variant("x:color=red").is_err());
        assert!(parse_variant("nocolon").is_err());
    }
}
