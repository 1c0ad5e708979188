//! What every long-running `hedge` command shares: the runtime, logging, and the
//! shutdown signal.

use crate::Failure;

/// A current-thread tokio runtime. On purpose: a child's parent-death signal is tied to
/// the forking thread, which must be the one that lives as long as the daemon.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Structured logs on stderr (systemd-friendly, no colours); `HEDGE_LOG` sets the filter.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEDGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Resolves on SIGTERM or SIGINT (never, if the handlers cannot be installed).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
