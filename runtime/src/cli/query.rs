//! `state`, `list`, `ps` and `events`.

use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Args, ValueEnum};
use husk_protocol::agent::*;
use serde_json::json;

use super::lifecycle::{block_on, connect};
use super::Global;
use crate::agent_client::{agent_message, ctx};
use crate::oci::state::{State, Status};

/// Output formats of `list` and `ps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
}

/// `list`'s flags.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: Format,
    /// Only the ids.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `ps`'s flags.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: Format,
    /// The container id.
    pub id: String,
    /// `ps` options (accepted; the listing comes from the guest).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

/// `events`' flags.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Print statistics once and exit.
    #[arg(long)]
    pub stats: bool,
    /// How often to print statistics while streaming (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s")]
    pub interval: String,
    /// The container id.
    pub id: String,
}

/// `husk state`.
pub fn state(g: &Global, id: &str) -> anyhow::Result<()> {
    let record = g.store().load(id)?;
    println!("{}", serde_json::to_string_pretty(&record.state())?);
    Ok(())
}

/// `husk list`.
pub fn list(g: &Global, args: ListArgs) -> anyhow::Result<()> {
    let store = g.store();
    let states: Vec<State> = store
        .ids()?
        .iter()
        .filter_map(|id| store.load(id).ok())
        .map(|r| r.state())
        .collect();
    if args.quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(());
    }
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&states)?),
        Format::Table => {
            let rows: Vec<[String; 6]> = states
                .iter()
                .map(|s| {
                    [
                        s.id.clone(),
                        s.pid.to_string(),
                        s.status.to_string(),
                        s.bundle.display().to_string(),
                        s.created.clone(),
                        s.owner.clone(),
                    ]
                })
                .collect();
            print_table(
                &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
                &rows,
            );
        }
    }
    Ok(())
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("   ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `husk ps`: the container's processes, by guest pid.
pub fn ps(g: &Global, args: PsArgs) -> anyhow::Result<()> {
    let record = g.store().load(&args.id)?;
    if record.current_status() == Status::Stopped {
        bail!("container {} is not running", args.id);
    }
    let pids = block_on(async {
        let agent = connect(&record).await?;
        agent
            .list_processes(
                ctx(),
                &ContainerRequest {
                    container_id: args.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map(|r| r.pids)
            .map_err(|e| anyhow!("listing processes: {}", agent_message(&e)))
    })??;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&pids)?),
        Format::Table => {
            println!("PID");
            for pid in pids {
                println!("{pid}");
            }
        }
    }
    Ok(())
}

/// `husk events`: statistics once (`--stats`), or a stream of statistics
/// every interval and OOM events as they happen, until the container stops.
pub fn events(g: &Global, args: EventsArgs) -> anyhow::Result<()> {
    let interval = parse_duration(&args.interval)?;
    let record = g.store().load(&args.id)?;
    if record.current_status() == Status::Stopped {
        bail!("container {} is not running", args.id);
    }
    let id = args.id.clone();
    block_on(async move {
        let agent = connect(&record).await?;
        let stats = |agent: husk_protocol::agent_ttrpc::AgentServiceClient, id: String| async move {
            agent
                .stats_container(
                    ctx(),
                    &ContainerRequest {
                        container_id: id.clone(),
                        ..Default::default()
                    },
                )
                .await
                .map(|s| stats_event(&id, &s))
                .map_err(|e| anyhow!("statistics: {}", agent_message(&e)))
        };
        if args.stats {
            println!("{}", stats(agent, id).await?);
            return Ok(());
        }
        let oom_agent = agent.clone();
        let oom_id = id.clone();
        tokio::spawn(async move {
            loop {
                match oom_agent
                    .get_oom_event(
                        husk_protocol::ttrpc::context::with_timeout(0),
                        &GetOOMEventRequest::default(),
                    )
                    .await
                {
                    Ok(event) if event.container_id == oom_id => {
                        println!("{}", json!({"type": "oom", "id": oom_id}));
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        loop {
            if record.current_status() == Status::Stopped {
                return Ok(());
            }
            match stats(agent.clone(), id.clone()).await {
                Ok(event) => println!("{event}"),
                Err(_) if record.current_status() == Status::Stopped => return Ok(()),
                Err(e) => return Err(e),
            }
            tokio::time::sleep(interval).await;
        }
    })?
}

/// A runc-shaped `stats` event.
fn stats_event(id: &str, s: &StatsContainerResponse) -> serde_json::Value {
    let cpu = s.cpu.as_ref().cloned().unwrap_or_default();
    let mem = s.memory.as_ref().cloned().unwrap_or_default();
    let pids = s.pids.as_ref().cloned().unwrap_or_default();
    let io = s.io.as_ref().cloned().unwrap_or_default();
    json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {
                "usage": {
                    "total": cpu.usage_usec.saturating_mul(1000),
                    "kernel": cpu.system_usec.saturating_mul(1000),
                    "user": cpu.user_usec.saturating_mul(1000),
                },
                "throttling": {
                    "periods": cpu.nr_periods,
                    "throttledPeriods": cpu.nr_throttled,
                    "throttledTime": cpu.throttled_usec.saturating_mul(1000),
                },
            },
            "memory": {
                "cache": mem.cache_bytes,
                "usage": {"usage": mem.usage_bytes, "max": mem.max_usage_bytes, "limit": mem.limit_bytes},
                "swap": {"usage": mem.swap_usage_bytes},
                "raw": {"oom_kill": mem.oom_kills},
            },
            "pids": {"current": pids.current, "limit": pids.limit},
            "blkio": {
                "ioServiceBytesRecursive": [
                    {"op": "Read", "value": io.read_bytes},
                    {"op": "Write", "value": io.write_bytes},
                ],
                "ioServicedRecursive": [
                    {"op": "Read", "value": io.read_ops},
                    {"op": "Write", "value": io.write_ops},
                ],
            },
        },
    })
}

/// `5s`, `500ms`, `1m`, or plain seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let bad = || anyhow!("invalid duration {text:?} (e.g. 5s, 500ms, 1m)");
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(bad());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        for bad in ["", "0s", "5x", "s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stats_events_have_runcs_shape() {
        let s = StatsContainerResponse {
            memory: Some(MemoryStats {
                usage_bytes: 42,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let e = stats_event("c", &s);
        assert_eq!(e["type"], "stats");
        assert_eq!(e["data"]["memory"]["usage"]["usage"], 42);
    }
}
