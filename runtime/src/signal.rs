//! Waiting for the signals that ask a service to stop.

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM, naming the signal.
pub async fn terminated() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await; // no handler could be installed: never fire
        }
    };
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        return tokio::select! { () = ctrl_c => "SIGINT", _ = term.recv() => "SIGTERM" };
    }
    ctrl_c.await;
    "SIGINT"
}
