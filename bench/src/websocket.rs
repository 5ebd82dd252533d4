//! G2 and G3: the gateway's WebSocket fan-out. The gateway runs as its own process (`warren-gateway`, built
//! beside this binary), so its resident memory is its own; this process opens the clients, subscribes each to
//! `gametrade.events` / `user.*`, publishes `UserRegistered` events at a steady rate through a bus, and times
//! each event from just before its publish to its arrival at each client. G3 is the same with some clients
//! that never read (a 4 KiB receive buffer, so that their backlog reaches the gateway soon): the gateway must
//! close them as slow while the others keep their rate and latency.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::measure::percentiles;
use crate::workloads::event;

/// What one fan-out run asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FanOut {
    /// Clients that read.
    pub(crate) readers: usize,
    /// Clients that never read.
    pub(crate) stalled: usize,
    /// Events published a second.
    pub(crate) rate: u64,
    /// For how long.
    pub(crate) seconds: u64,
}

/// What it measured.
#[derive(Debug)]
pub(crate) struct FanOutResult {
    /// Events published (all confirmed).
    pub(crate) published: u64,
    /// Deliveries to the reading clients, and how many there should have been.
    pub(crate) delivered: u64,
    pub(crate) expected: u64,
    /// Deliveries a second, from the first publish to the last delivery.
    pub(crate) rate: f64,
    /// Publish → client latency: p50, p99, p99.9.
    pub(crate) latency: [Duration; 3],
    /// The gateway's largest resident set seen, in MiB.
    pub(crate) gateway_rss_mib: f64,
    /// Stalled clients the gateway closed as slow.
    pub(crate) closed_slow: usize,
    /// Reading clients the gateway closed (there should be none).
    pub(crate) readers_closed: usize,
}

/// The gateway process; killed when dropped.
struct Gateway {
    child: Child,
    address: String,
    _config: TempFile,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts `warren-gateway` on a free loopback port, streaming `gametrade.events` / `user.*`, on the broker at
/// `url`; waits (30 s at most) until it answers `/ready`.
async fn start_gateway(url: &str, connections: usize) -> Result<Gateway, String> {
    let binary = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("warren-gateway");
    if !binary.exists() {
        return Err(format!(
            "no gateway binary at {}: build it with `cargo build --release -p warren-gateway` (cargo xtask bench does)",
            binary.display()
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?;
    let address = port.to_string();
    let config = TempFile(std::env::temp_dir().join(format!("warren-bench-gateway-{}.toml", std::process::id())));
    std::fs::write(
        &config.0,
        format!(
            "[[streams]]\nexchange = \"gametrade.events\"\npatterns = [\"user.*\"]\n\n\
             [websocket]\nmax_connections = {}\nbuffer = 256\n",
            connections + 16
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new(&binary)
        .args(["--listen", &address, "--url", url, "--config"])
        .arg(&config.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let gateway = Gateway { child, address, _config: config };
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let ready = client.get(format!("http://{}/ready", gateway.address)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(gateway);
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the gateway did not answer /ready within 30 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway's resident set in MiB, from `/proc/<pid>/status`.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A client connected to the gateway and subscribed to `user.*`; with a tiny receive buffer when `stalled`.
async fn client(address: &str, stalled: bool) -> Result<Socket, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if stalled {
        socket.set_recv_buffer_size(4096).map_err(|e| e.to_string())?;
    }
    let stream = socket.connect(address.parse().map_err(|e| format!("{e}"))?).await.map_err(|e| e.to_string())?;
    // An 8 KiB read buffer rather than tungstenite's 128 KiB, which it zero-fills before every read: with a
    // thousand clients that memset was a third of this process's CPU. A read still takes whatever arrived, up
    // to 8 KiB: some twenty frames.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(format!("ws://{address}/ws"), stream, Some(config))
        .await
        .map_err(|e| format!("upgrading: {e}"))?;
    let subscribe = r#"{"subscribe": {"exchange": "gametrade.events", "pattern": "user.*"}}"#;
    ws.send(Message::text(subscribe)).await.map_err(|e| e.to_string())?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.contains("\"subscribed\"") => return Ok(ws),
            Ok(Some(Ok(Message::Text(text)))) if text.contains("\"error\"") => return Err(text.to_string()),
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("no subscription confirmed: {other:?}")),
        }
    }
}

/// The sequence number in a delivered event's frame: its `userId` (a JSON string in the proto3 mapping) less
/// one, as events carry `seq + 1` (the mapping leaves out a zero).
fn sequence(frame: &str) -> Option<u64> {
    let rest = frame.split_once("\"userId\":\"")?.1;
    rest[..rest.find('"')?].parse::<u64>().ok()?.checked_sub(1)
}

/// What the clients' thread reports: each reading client's latencies, and how many were closed.
type Received = Result<(Vec<Duration>, usize), String>;

/// Connects the clients (`run.readers` reading, `run.stalled` never reading), says so on `connected`, reads
/// until each reader has its events or the run's deadline passes, reports on `done`, and keeps the stalled
/// clients open until `release`.
async fn clients(
    address: String,
    run: FanOut,
    epoch: Instant,
    sent: Arc<Vec<AtomicU64>>,
    connected: tokio::sync::oneshot::Sender<Result<(), String>>,
    done: tokio::sync::oneshot::Sender<Received>,
    release: tokio::sync::oneshot::Receiver<()>,
) {
    let total = run.rate * run.seconds;
    let mut readers = Vec::with_capacity(run.readers);
    let mut stalled = Vec::with_capacity(run.stalled);
    let connecting = async {
        for i in 0..run.readers {
            readers.push(client(&address, false).await.map_err(|e| format!("client {i}: {e}"))?);
        }
        for i in 0..run.stalled {
            stalled.push(client(&address, true).await.map_err(|e| format!("stalled client {i}: {e}"))?);
        }
        Ok::<(), String>(())
    };
    if let Err(error) = connecting.await {
        let _ = connected.send(Err(error));
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(run.seconds + 15);
    let mut tasks = tokio::task::JoinSet::new();
    for mut socket in readers {
        let sent = Arc::clone(&sent);
        tasks.spawn(async move {
            let mut latencies: Vec<Duration> = Vec::with_capacity(total as usize);
            // One deadline for the whole run, not a timer per frame.
            let read = async {
                while (latencies.len() as u64) < total {
                    match socket.next().await {
                        Some(Ok(Message::Text(text))) => {
                            let arrived = epoch.elapsed();
                            if let Some(seq) = sequence(&text) {
                                let at = sent.get(seq as usize).map_or(u64::MAX, |at| at.load(Ordering::Relaxed));
                                if at != u64::MAX {
                                    latencies.push(arrived.saturating_sub(Duration::from_nanos(at)));
                                }
                            }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return true,
                        Some(Ok(_)) => {}
                    }
                }
                false
            };
            let closed = tokio::time::timeout_at(deadline.into(), read).await.unwrap_or(false);
            let _ = socket.close(None).await;
            (latencies, closed)
        });
    }
    let _ = connected.send(Ok(()));
    let mut all = Vec::new();
    let mut readers_closed = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((latencies, closed)) => {
                readers_closed += usize::from(closed);
                all.extend(latencies);
            }
            Err(error) => {
                let _ = done.send(Err(format!("a client's task: {error}")));
                return;
            }
        }
    }
    let _ = done.send(Ok((all, readers_closed)));
    let _ = release.await;
    drop(stalled);
}

/// Runs one fan-out on the broker at `url` (a private vhost).
pub(crate) async fn fan_out(url: &str, run: FanOut) -> Result<FanOutResult, String> {
    let gateway = start_gateway(url, run.readers + run.stalled).await?;
    let pid = gateway.child.id();
    let total = run.rate * run.seconds;
    let epoch = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(u64::MAX)).collect());
    // The clients run on a single-threaded runtime on a thread of their own: no work-stealing and waking
    // between threads for a thousand sockets, and the publisher below does not share their scheduler.
    let (connected, connected_rx) = tokio::sync::oneshot::channel();
    let (done, done_rx) = tokio::sync::oneshot::channel();
    let (release, release_rx) = tokio::sync::oneshot::channel();
    let reading = std::thread::spawn({
        let (address, sent) = (gateway.address.clone(), Arc::clone(&sent));
        move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(clients(address, run, epoch, sent, connected, done, release_rx)),
            Err(error) => drop(connected.send(Err(format!("the clients' runtime: {error}")))),
        }
    });
    connected_rx.await.map_err(|_| "the clients' thread ended".to_owned())??;
    // The gateway's memory, sampled through the run.
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn({
        let peak = Arc::clone(&peak);
        async move {
            loop {
                peak.fetch_max(rss_mib(pid).to_bits(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    // Publish at a steady rate, up to 64 confirms in flight.
    let bus =
        warren::Bus::with_config(warren::BusConfig::new(url).map_err(|e| e.to_string())?.service_name("warren-bench"))
            .await
            .map_err(|e| format!("start RabbitMQ: {e}"))?;
    let started = Instant::now();
    let publishing = futures_util::stream::iter(0..total)
        .map(|seq| {
            let (bus, sent) = (&bus, &sent);
            async move {
                let due = started + Duration::from_secs_f64(seq as f64 / run.rate as f64);
                tokio::time::sleep_until(due.into()).await;
                sent[seq as usize].store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                bus.publish(&event(100, seq + 1)).await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let published = publishing.iter().filter(|outcome| outcome.is_ok()).count() as u64;
    if let Some(Err(error)) = publishing.into_iter().find(Result::is_err) {
        return Err(format!("a publish failed: {error}"));
    }

    let (mut all, readers_closed) = done_rx.await.map_err(|_| "the clients' thread ended".to_owned())??;
    let finished = started.elapsed();
    sampler.abort();
    // The gateway's own count of clients it closed as slow (`/ready`'s `websocket.slow_disconnects`): a stalled
    // client cannot see its close frame, which waits behind everything it did not read.
    let ready = reqwest::Client::new().get(format!("http://{}/ready", gateway.address)).send().await;
    let text = match ready {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(error) => return Err(format!("asking the gateway's /ready: {error}")),
    };
    let closed_slow = text
        .split_once("\"slow_disconnects\":")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .ok_or_else(|| format!("no slow_disconnects in /ready: {text}"))?;
    let _ = release.send(());
    let _ = reading.join();
    let _ = bus.close().await;
    if all.is_empty() {
        return Err(format!("no client received any of the {published} events"));
    }
    let delivered = all.len() as u64;
    Ok(FanOutResult {
        published,
        delivered,
        expected: published * run.readers as u64,
        rate: delivered as f64 / finished.as_secs_f64(),
        latency: percentiles(&mut all),
        gateway_rss_mib: f64::from_bits(peak.load(Ordering::Relaxed)),
        closed_slow,
        readers_closed,
    })
}
