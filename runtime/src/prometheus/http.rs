//! The `/metrics` endpoint: just enough HTTP/1.1 for a scraper, on tokio's `TcpListener`. One request per
//! connection (answered with `Connection: close`), a bounded request head and a read deadline, so a slow
//! or hostile client holds a connection for seconds at most.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::task::{JoinHandle, JoinSet};

use super::PrometheusLayer;

/// The `Content-Type` of `/metrics`: the OpenMetrics text format `prometheus_client` encodes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The largest request head (request line and headers) read; a larger one is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head, and then to take the answer.
const DEADLINE: Duration = Duration::from_secs(5);
/// Connections answered at once; more are closed unanswered until one ends.
const MAX_CONNECTIONS: usize = 64;

/// Serves `layer`'s metrics at `GET /metrics` on `addr` (`127.0.0.1:0` picks a free port), until the
/// returned endpoint is stopped or dropped. Any other path is answered 404, another method 405.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let metrics = warren::prometheus::PrometheusLayer::new();
/// let endpoint = warren::prometheus::serve("127.0.0.1:9464", &metrics).await?;
/// // … register `metrics` with the bus, run the service …
/// endpoint.stop().await;
/// # Ok(()) }
/// ```
pub async fn serve(addr: impl ToSocketAddrs, layer: &PrometheusLayer) -> io::Result<MetricsEndpoint> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(accept(listener, layer.clone()));
    Ok(MetricsEndpoint { local_addr, task })
}

/// A running `/metrics` endpoint ([`serve`]); it stops when dropped, or with [`stop`](Self::stop).
#[derive(Debug)]
pub struct MetricsEndpoint {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsEndpoint {
    /// The address it listens on (with the port chosen when `:0` was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and closes the connections being answered; returns once they are closed.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections until aborted; dropping `connections` then aborts those being answered.
async fn accept(listener: TcpListener, layer: PrometheusLayer) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) if connections.len() < MAX_CONNECTIONS => {
                connections.spawn(answer(stream, layer.clone()));
            }
            Ok(_) => tracing::warn!(MAX_CONNECTIONS, "metrics endpoint busy; a connection was closed unanswered"),
            Err(error) => {
                // Out of file descriptors, most likely: wait for some to be released instead of spinning.
                tracing::warn!(%error, "metrics endpoint could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request and answers it.
async fn answer(mut stream: TcpStream, layer: PrometheusLayer) {
    let response = match tokio::time::timeout(DEADLINE, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => respond(&head, &layer).await,
        Ok(Ok(None)) => response("431 Request Header Fields Too Large", "the request head is over 8 KiB\n", false),
        Ok(Err(_)) => return, // the client went away
        Err(_) => response("408 Request Timeout", "no complete request within 5 s\n", false),
    };
    let _ = tokio::time::timeout(DEADLINE, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

/// The request head, up to its blank line; `None` if it is over [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..read]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return Ok((end <= MAX_HEAD).then_some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

/// The answer to a request head.
async fn respond(head: &[u8], layer: &PrometheusLayer) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version), None) = (words.next(), words.next(), words.next(), words.next())
    else {
        return response("400 Bad Request", "expected `GET /metrics HTTP/1.1`\n", false);
    };
    if !version.starts_with("HTTP/1.") {
        return response("505 HTTP Version Not Supported", "HTTP/1.x only\n", false);
    }
    let path = target.split('?').next().unwrap_or_default();
    match (path, method) {
        ("/metrics", "GET" | "HEAD") => {
            layer.sample().await;
            let body = layer.encode();
            let mut answer = head_of("200 OK", CONTENT_TYPE, body.len());
            if method == "GET" {
                answer.extend_from_slice(body.as_bytes());
            }
            answer
        }
        ("/metrics", _) => response("405 Method Not Allowed", "GET /metrics\n", true),
        _ => response("404 Not Found", "metrics are at /metrics\n", false),
    }
}

fn head_of(status: &str, content_type: &str, length: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// A plain-text answer; `allow` adds `Allow: GET, HEAD` (for 405).
fn response(status: &str, body: &str, allow: bool) -> Vec<u8> {
    let mut answer = head_of(status, "text/plain; charset=utf-8", body.len());
    if allow {
        let at = answer.len() - 2;
        answer.splice(at..at, *b"Allow: GET, HEAD\r\n");
    }
    answer.extend_from_slice(body.as_bytes());
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn metrics_are_served_other_paths_are_not_found_and_a_stopped_endpoint_stops_listening() {
        let layer = PrometheusLayer::new();
        let endpoint = serve("127.0.0.1:0", &layer).await.unwrap();
        let addr = endpoint.local_addr();

        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")) && ok.ends_with("# EOF\n"), "{ok}");
        let missing = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n"), "{missing}");
        let posted = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(posted.starts_with("HTTP/1.1 405 ") && posted.contains("\r\nAllow: GET, HEAD\r\n"), "{posted}");
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let refused = exchange(addr, huge.as_bytes()).await;
        assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");

        endpoint.stop().await;
        assert!(TcpStream::connect(addr).await.is_err(), "nothing listens once stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_is_answered_408_after_the_deadline() {
        let layer = PrometheusLayer::new();
        let endpoint = serve("127.0.0.1:0", &layer).await.unwrap();
        let answer = exchange(endpoint.local_addr(), b"GET /metr").await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    }
}
