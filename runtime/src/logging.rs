//! Logs of the CLI and the sandbox processes, in runc's shapes.
//!
//! containerd's runc shim passes `--log FILE --log-format json` and, when a
//! command fails, reads the last `"level":"error"` line of that file for the
//! message it reports. So the JSON format is runc's: one object per line
//! with `level`, `msg` and `time`, plus the event's fields.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::path::Path;
use std::str::FromStr;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `time="..." level=error msg="..."`, like runc's text logs.
    #[default]
    Text,
    /// One JSON object per line, like runc's JSON logs.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("invalid log format {other:?} (want text or json)")),
        }
    }
}

/// Sends this process's logs at `level` and above to `file` (appended), or
/// to stderr when there is none. Call once, early.
pub fn init(file: Option<&Path>, format: LogFormat, level: &str) -> std::io::Result<()> {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(RuncFormat(format));
    let result = match file {
        Some(path) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            builder.with_writer(std::sync::Mutex::new(file)).try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
    Ok(())
}

/// Formats events as runc does.
struct RuncFormat(LogFormat);

impl<S, N> FormatEvent<S, N> for RuncFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = level_name(*event.metadata().level());
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let line = match self.0 {
            LogFormat::Json => {
                let mut object = serde_json::Map::new();
                object.insert("level".into(), level.into());
                object.insert("msg".into(), fields.message.into());
                object.insert("time".into(), time.into());
                for (key, value) in fields.others {
                    object.insert(key, value.into());
                }
                serde_json::Value::Object(object).to_string()
            }
            LogFormat::Text => {
                let mut line = format!("time={time:?} level={level} msg={:?}", fields.message);
                for (key, value) in fields.others {
                    let _ = write!(line, " {key}={value:?}");
                }
                line
            }
        };
        writeln!(writer, "{line}")
    }
}

/// `error` and its causes as the one line a failed command prints: each
/// cause after a colon, except where the message before already says it
/// (many errors name their cause in their own message), with all
/// whitespace (a guest console's newlines) folded into single spaces.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// An event's message and other fields, as text.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.others.push((field.name().to_owned(), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_names_each_cause_once_on_one_line() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such\nfile");
        let said_twice = crate::config::Error::Read {
            path: "/etc/husk.toml".into(),
            source: io,
        };
        let e = anyhow::Error::new(said_twice).context("loading");
        assert_eq!(
            error_line(&e),
            "loading: configuration /etc/husk.toml: no such file"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_line(&e), "outer: inner");
    }

    #[test]
    fn formats_parse_and_bad_ones_are_named() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert!("xml".parse::<LogFormat>().unwrap_err().contains("xml"));
    }
}
