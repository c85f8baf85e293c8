//! `scan-api`: serve the API (default), `seed` synthetic reports, or `import` Trivy files.
//!
//! Run with: `cargo run --release -p scan-api` (SQLite file in the working directory; the cache
//! in Redis at 127.0.0.1:6379 if it answers, in process if not: see `cache_setup`).
//! `scan-api --help` lists every flag and environment variable.

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use scan_api::cache_setup::{self, Purpose};
use scan_api::config::{Cli, Command, Serve, redact};
use scan_api::store::Store;
use scan_api::{AppState, ingest};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    // Before the cache is built: it takes its metrics handles from the recorder then.
    tiercache_axum::metrics::install()?;
    // The cache first: its settings are checked before the database file is created.
    let purpose = match cli.command {
        None | Some(Command::Serve(_)) => Purpose::Serve,
        Some(Command::Seed(_) | Command::Import(_)) => Purpose::Batch,
    };
    let cache = cache_setup::build_cache(&cli.common, purpose).await?;
    let store = Store::connect(&cli.common.database_url)
        .await
        .with_context(|| format!("opening the database {}", redact(&cli.common.database_url)))?;
    tracing::info!(backend = ?store.backend(), "database ready");
    let command = match cli.command {
        Some(command) => command,
        None => Command::Serve(Serve::from_env()?),
    };
    match command {
        Command::Serve(serve) => {
            let alerts = serve.alerts.config();
            alerts.validate()?;
            let listener = tokio::net::TcpListener::bind(serve.bind)
                .await
                .with_context(|| format!("binding {}", serve.bind))?;
            tracing::info!(addr = %listener.local_addr()?, "scan-api listening");
            let state = AppState {
                store: store.clone(),
                cache,
                body_limit: serve.body_limit,
                cache_max_body: serve.cache_max_body,
            };
            scan_api::run(
                listener,
                scan_api::app_with_alerts(state, serve.admin_token, alerts),
                shutdown_signal(),
            )
            .await?;
            store.close().await;
            tracing::info!("scan-api stopped");
        }
        Command::Seed(seed) => {
            let bar = progress_bar(seed.count);
            let n = ingest::seed(
                &store,
                &cache,
                seed.seed,
                seed.start,
                seed.count,
                &|done, _| bar.set_position(done),
            )
            .await?;
            bar.finish_with_message(format!("stored {n} synthetic reports"));
        }
        Command::Import(import) => {
            let bar = progress_bar(import.files.len() as u64);
            let n = ingest::import(&store, &cache, &import.files, &|done, _| {
                bar.set_position(done)
            })
            .await?;
            bar.finish_with_message(format!("imported {n} reports"));
        }
    }
    Ok(())
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
