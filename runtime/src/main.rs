//! `husk`: the runc-compatible OCI runtime CLI.
//!
//! Errors end the process with status 1 and one line on stderr, and (with
//! `--log`) an `error` entry in the log file, where containerd looks.

use clap::Parser;
use husk_runtime::cli::{self, Cli};
use husk_runtime::logging;

fn main() {
    // runc answers `--version` / `-v` among the global flags.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if cli::asks_for_version(&args) {
        println!("{}", cli::version_text());
        return;
    }
    let cli = Cli::parse();
    let level = if cli.global.debug {
        "debug".to_owned()
    } else {
        // A configuration error is reported by the verb that needs it.
        cli.global
            .load_config()
            .map(|c| c.log_level)
            .unwrap_or_else(|_| "warn".into())
    };
    if let Err(e) = logging::init(cli.global.log.as_deref(), cli.global.log_format, &level) {
        eprintln!("husk: log file: {e}");
        std::process::exit(1);
    }
    let logs_to_file = cli.global.log.is_some();
    match cli::run(cli) {
        Ok(status) => std::process::exit(status),
        Err(e) => {
            let message = logging::error_line(&e);
            if logs_to_file {
                tracing::error!("{message}");
            }
            eprintln!("husk: {message}");
            std::process::exit(1);
        }
    }
}
