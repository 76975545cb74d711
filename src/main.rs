//! editd binary entry point: parse args, init telemetry, dispatch the subcommand.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = editd::config::Cli::parse();
    match cli.command {
        editd::config::Command::PrintOpenapi => Ok(()),
    }
}
