//! editd binary entry point: parse args, init telemetry, dispatch the subcommand.

use anyhow::Context;
use clap::Parser;
use editd::config::{Cli, Command, ServeConfig};
use editd::engine::PipelineLoader;
use editd::pipeline::load::{load_pipeline, PipelineConfig};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log = cli.log;
    match cli.command {
        Command::Serve(args) => {
            init_tracing(&log);
            let cfg = ServeConfig::try_from(args)?;
            tokio::runtime::Runtime::new()?.block_on(serve(cfg))
        }
        Command::Edit(args) => {
            init_tracing(&log);
            editd::cli_edit::run(&args)?;
            Ok(())
        }
        Command::PrintOpenapi => {
            print!("{}", editd::api::openapi_json());
            Ok(())
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The production loader: builds the real pipeline on the engine thread.
fn pipeline_loader(cfg: &ServeConfig) -> PipelineLoader {
    let pc = PipelineConfig {
        model: cfg.model.clone(),
        device: cfg.device.clone(),
        dtype: cfg.dtype.clone(),
        offline: cfg.offline,
    };
    Box::new(move || load_pipeline(&pc))
}

async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let loader = pipeline_loader(&cfg);
    let server = editd::api::serve_with(cfg, loader)
        .await
        .context("starting the server")?;
    if let Some(key) = server.generated_api_key() {
        eprintln!("Generated API key (shown once; only its hash is stored): {key}");
    }
    println!("editd listening on http://{}", server.local_addr());
    shutdown_signal().await;
    server.shutdown();
    server.wait().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown signal received");
}
