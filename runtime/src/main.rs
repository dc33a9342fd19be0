//! `husk`: the host side of husk.

use clap::Parser;

/// husk: a microVM container runtime.
#[derive(Parser)]
#[command(name = "husk", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
