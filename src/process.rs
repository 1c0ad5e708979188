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

/// Tunes glibc's allocator for a small daemon that lives for months: one arena for
/// every thread (sled's I/O threads and tokio's blocking threads would otherwise each
/// get their own heap, resident pages included) and a fixed 128 KiB mmap threshold
/// (glibc otherwise raises it after each large free, up to 32 MiB, and large buffers
/// then stay in the heap for good). Call it first thing, before any thread exists.
/// Other C libraries: nothing to tune.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::libc::{mallopt, M_ARENA_MAX, M_MMAP_THRESHOLD};
        #[allow(unsafe_code)]
        // SAFETY: mallopt only sets allocator parameters (under glibc's own arena
        // lock); both values are in range, and a refusal (return 0) leaves the
        // defaults, which are correct, only larger.
        unsafe {
            mallopt(M_ARENA_MAX, 1);
            mallopt(M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
}

/// For the short-lived client commands: a closed stdout (`hedge node status | head -3`)
/// ends the process quietly, as it does any Unix filter, instead of `println!` panicking
/// on EPIPE. Daemons (`node run`, `master run`, the sandbox) keep Rust's default
/// (SIGPIPE ignored): they write to sockets and must outlive a vanished peer.
pub fn die_quietly_on_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    #[allow(unsafe_code)]
    // SAFETY: SIG_DFL installs no handler, so no code runs in signal context; called
    // before any thread is started.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Structured logs on stderr (systemd-friendly, no colours); `HEDGE_LOG` sets the filter.
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = log_filter(std::env::var("HEDGE_LOG").ok().as_deref());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(filter)
        .init();
}

/// The log filter `HEDGE_LOG` asks for: a default level and/or `target=level`
/// directives, comma-separated (`debug`, `info,hedge_runtime::daemon=trace`); `info`
/// when unset or not understood. `Targets` rather than `EnvFilter`: the same directives
/// without span and field filters, and without a regex engine in every binary.
fn log_filter(spec: Option<&str>) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    spec.and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
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

#[cfg(test)]
mod tests {
    use super::log_filter;
    use tracing::Level;

    #[test]
    fn hedge_log_sets_a_default_level_and_per_target_levels() {
        let f = log_filter(Some("warn,hedge_runtime::daemon=trace"));
        assert!(f.would_enable("hedge_runtime::daemon::link", &Level::TRACE));
        assert!(f.would_enable("hedge_master::run", &Level::WARN));
        assert!(!f.would_enable("hedge_master::run", &Level::INFO));
        let debug = log_filter(Some("debug"));
        assert!(debug.would_enable("anything", &Level::DEBUG));
        assert!(!debug.would_enable("anything", &Level::TRACE));
    }

    #[test]
    fn unset_or_not_understood_is_info() {
        for spec in [None, Some("a=b=c"), Some("hedge=loud")] {
            let f = log_filter(spec);
            assert!(f.would_enable("hedge", &Level::INFO), "{spec:?}");
            assert!(!f.would_enable("hedge", &Level::DEBUG), "{spec:?}");
        }
    }
}
