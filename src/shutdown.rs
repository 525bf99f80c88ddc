//! Turns SIGTERM and Ctrl-C into the cancellation every loop of the service watches.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the service");
                let _ = tokio::signal::ctrl_c().await;
                trigger.cancel();
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: draining in-flight work"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received: draining in-flight work"),
        }
        trigger.cancel();
    });
    token
}
