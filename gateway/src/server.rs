//! [`serve`]: the router on a listener, as `axum::serve` with graceful shutdown does it, plus what that
//! leaves out: a deadline for each request's headers, so that a client trickling them (a slow-loris) does not
//! hold a connection and its task for ever ([`crate::GatewayConfig::header_timeout_ms`]).

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and tells each connection to
/// close after the request it is answering; returns once they all have. As `axum::serve(listener,
/// app).with_graceful_shutdown(shutdown)`, with HTTP/1 (as the gateway's axum is built), WebSocket upgrades,
/// `TCP_NODELAY` on every connection (a WebSocket write is not held back waiting for the client's delayed
/// acknowledgement of the one before), and `header_timeout`: a connection that has not sent a request's whole
/// headers that long after it opened, or after the response before, is closed (give it
/// [`GatewayConfig::header_timeout`](crate::GatewayConfig::header_timeout)).
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let header_timeout = warren_gateway::GatewayConfig::new().header_timeout();
/// warren_gateway::serve(listener, app, header_timeout, async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (closing, _) = tokio::sync::watch::channel(());
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of file descriptors, say: wait for some to be freed rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let mut stop = closing.subscribe();
        connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let mut connection = pin!(builder.serve_connection(TokioIo::new(tcp), service).with_upgrades());
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "connection ended");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    closing.send_replace(());
    while connections.join_next().await.is_some() {}
    Ok(())
}
