//! meshd: the Weft router daemon. See `meshd --help`.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use weft_router::config::{LogFormat, MeshdArgs};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = MeshdArgs::parse();
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let cfg = match args.daemon_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    match weft_router::daemon::run(cfg, rx).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
