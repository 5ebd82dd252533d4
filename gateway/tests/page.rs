//! `GET /` in a real headless browser (Chromium from the OS packages, installed by the test when missing),
//! over RabbitMQ: the page shows the catalog and tails `gametrade.events` `user.*` through `/ws` while the
//! test publishes; the DOM Chromium dumps holds a message published during the test, and a screenshot is
//! written as an artifact (`target/tmp/gateway-page.png`). With tokens, the page passes its `?access_token=`
//! on, and without it shows the refusals. Also `GET /dlq`, the depths the page shows.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::Next;
use support::Server;
use warren_gateway::GatewayConfig;
use warren_reflect::Catalog;
use warren_tests::Harness;

/// The longest one browser run may take.
const BROWSER_DEADLINE: Duration = Duration::from_secs(30);

fn config() -> GatewayConfig {
    GatewayConfig::from_toml(
        r#"
        events = ["UserRegistered"]
        tasks = ["BackgroundTask"]
        [[streams]]
        exchange = "gametrade.events"
        patterns = ["user.*"]
        "#,
        "test",
    )
    .unwrap()
}

/// `chromium`, installed from the OS packages when it is not on `PATH`; a failed install fails the test.
fn chromium() -> &'static str {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        let present = Command::new("chromium").arg("--version").output().is_ok_and(|o| o.status.success());
        if present {
            return;
        }
        eprintln!("chromium is not on PATH: installing it with apt-get (the page test needs a real browser)");
        for args in [&["update"][..], &["install", "-y", "--no-install-recommends", "chromium"][..]] {
            let output = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output()
                .unwrap_or_else(|e| panic!("the page test needs Chromium: cannot run apt-get {}: {e}", args[0]));
            assert!(
                output.status.success(),
                "the page test needs Chromium: `apt-get {}` failed (install the `chromium` package by hand):\n{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let installed = Command::new("chromium").arg("--version").output();
        assert!(
            installed.as_ref().is_ok_and(|o| o.status.success()),
            "the page test needs Chromium: apt-get installed `chromium` but it does not run: {installed:?}"
        );
    });
    "chromium"
}

/// Runs headless Chromium on `url` with `extra` flags, killing it after [`BROWSER_DEADLINE`]; returns what
/// it printed on stdout.
fn browse(url: &str, extra: &[String]) -> String {
    let browser = chromium();
    let scratch = std::env::temp_dir().join(format!("warren-page-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&scratch).unwrap();
    let stdout_path = scratch.join("stdout");
    let stderr_path = scratch.join("stderr");
    let mut child = Command::new(browser)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", scratch.join("profile").display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BROWSER_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {BROWSER_DEADLINE:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status}); stderr:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&scratch);
    stdout
}

fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    u64::from(nanos) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Publishes `UserRegistered` with `username` every 100 ms until `stop` (at most `limit`), through the
/// gateway: unroutable (422) until the page's subscription binds its queue, then accepted (and counted).
fn publish_in_background(
    base: String,
    username: &str,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> tokio::task::JoinHandle<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let url = format!("{base}/events/UserRegistered");
    let body = serde_json::json!({ "userId": "7", "username": username, "email": "page@example.com" }).to_string();
    tokio::spawn(async move {
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
            let sent = http.post(&url).header("content-type", "application/json").body(body.clone()).send().await;
            if let Ok(response) = sent {
                match response.status().as_u16() {
                    202 => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    422 => {} // no queue bound yet: the page has not subscribed
                    other => panic!("publishing answered {other}: {}", response.text().await.unwrap_or_default()),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The gateway on `127.0.0.1:0`, with one addition for the browser: each `GET /dlq` is answered only once
/// five more events were accepted (at most `hold` later).
///
/// Why: `--dump-dom` and `--screenshot` run on virtual time (`--virtual-time-budget`), which skips ahead
/// whenever nothing is loading, so the page's timers would be done long before a message crossed the
/// WebSocket. Virtual time waits for fetches in flight, and the page fetches `dlq` as it loads: holding that
/// answer until events were routed to the page's queue (they are unroutable before it subscribes) lets the
/// messages arrive in real time before the DOM is dumped.
async fn serve(
    h: &Harness,
    config: GatewayConfig,
    accepted: Arc<AtomicU64>,
    hold: Duration,
) -> (String, tokio::task::JoinHandle<()>) {
    let catalog = Arc::new(Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap());
    let holding = axum::middleware::from_fn(move |request: Request, next: Next| {
        let accepted = accepted.clone();
        async move {
            if request.uri().path() == "/dlq" {
                let wanted = accepted.load(Ordering::Relaxed) + 5;
                let deadline = Instant::now() + hold;
                while accepted.load(Ordering::Relaxed) < wanted && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            next.run(request).await
        }
    });
    let app = warren_gateway::router(h.bus("gateway").await, catalog, config).layer(holding);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), task)
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000)
}

/// Opens `/{query}` in headless Chromium (with `extra` flags) while events with a unique username are
/// published; returns the dumped DOM and the username.
async fn open_while_publishing(
    h: &Harness,
    config: GatewayConfig,
    query: &str,
    extra: Vec<String>,
) -> (String, String) {
    tokio::task::spawn_blocking(chromium).await.unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let (base, server) = serve(h, config, accepted.clone(), Duration::from_secs(15)).await;
    let username = format!("page-{}", unique());
    let stop = Arc::new(AtomicBool::new(false));
    let publisher =
        publish_in_background(base.clone(), &username, accepted.clone(), stop.clone(), Duration::from_secs(60));
    let url = format!("{base}/{query}");
    let mut flags = vec!["--virtual-time-budget=3000".to_owned(), "--dump-dom".to_owned()];
    flags.extend(extra);
    let dom = tokio::task::spawn_blocking(move || browse(&url, &flags)).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    assert!(accepted.load(Ordering::Relaxed) > 0, "events were routable once the page subscribed");
    server.abort();
    (dom, username)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_catalog_and_tails_a_stream_in_a_real_browser() {
    let h = Harness::rabbitmq().await;
    let server = Server::start(h.bus("plain").await, config()).await;
    let page = server.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"), "{}", page.header("content-type"));
    assert!(page.text.contains("<title>Warren gateway</title>"));
    assert!(!page.text.contains("innerHTML"), "data goes into the DOM as text only");

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gateway-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let extra = vec!["--window-size=1200,900".to_owned(), format!("--screenshot={}", screenshot.display())];
    let (dom, username) = open_while_publishing(&h, config(), "?exchange=gametrade.events&pattern=user.*", extra).await;
    assert!(dom.contains("gametrade.v1.UserRegistered"), "the catalog is shown:\n{dom}");
    assert!(dom.contains("gametrade.tasks.dlq"), "the dead-letter queue is shown:\n{dom}");
    assert!(dom.contains("tailing gametrade.events user.*"), "the tail subscribed:\n{dom}");
    assert!(dom.contains(&username), "a message published during the test is in the tail:\n{dom}");
    assert!(dom.contains("user.registered"), "with its routing key:\n{dom}");
    assert!(is_png(&screenshot), "a PNG screenshot at {}", screenshot.display());
    eprintln!("screenshot: {}", screenshot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_passes_its_access_token_on() {
    let h = Harness::rabbitmq().await;
    let mut guarded = config();
    guarded.tokens.add(warren_gateway::Group::Docs, "t0k");
    guarded.tokens.add(warren_gateway::Group::Stream, "t0k");
    let query = "?access_token=t0k&exchange=gametrade.events&pattern=user.*";
    let (dom, username) = open_while_publishing(&h, guarded.clone(), query, Vec::new()).await;
    assert!(dom.contains("gametrade.v1.UserRegistered"), "the catalog read with the token:\n{dom}");
    assert!(dom.contains("gametrade.tasks.dlq"), "the dead-letter queues read with the token:\n{dom}");
    assert!(dom.contains(&username), "the tail connected with the token:\n{dom}");

    // Without it the page says what was refused, and tails nothing. (Nothing is routable: no publishing.)
    let (base, server) = serve(&h, guarded, Arc::new(AtomicU64::new(0)), Duration::from_secs(2)).await;
    let url = format!("{base}/?exchange=gametrade.events&pattern=user.*");
    let flags = vec!["--virtual-time-budget=3000".to_owned(), "--dump-dom".to_owned()];
    let dom = tokio::task::spawn_blocking(move || browse(&url, &flags)).await.unwrap();
    assert!(dom.contains("catalog: 401"), "the refusal is shown:\n{dom}");
    assert!(dom.contains("closed ("), "the socket was refused:\n{dom}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_answers_the_depth_of_each_exposed_tasks_dead_letter_queue() {
    let h = Harness::rabbitmq().await;
    let server = Server::start(h.bus("gateway").await, config()).await;
    let body = server.get("/dlq").await.json();
    let rows = body["dead_letter_queues"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "only the exposed task's: {body}");
    assert_eq!(rows[0]["queue"], "gametrade.tasks.dlq");
    assert_eq!(rows[0]["work_queue"], "gametrade.tasks");
    assert_eq!(rows[0]["tasks"], serde_json::json!(["gametrade.v1.BackgroundTask"]));
    assert!(rows[0]["depth"].is_null(), "not declared yet in a fresh vhost: {body}");
    // Enqueueing declares the work queue and its dead-letter queue, empty.
    let enqueued = server.post("/tasks/BackgroundTask", r#"{"taskId": "1", "description": "x"}"#).await;
    assert_eq!(enqueued.status, 202, "{}", enqueued.text);
    let body = server.get("/dlq").await.json();
    assert_eq!(body["dead_letter_queues"][0]["depth"], 0, "{body}");

    // With a docs token, /dlq needs it, as /catalog does.
    let mut config = config();
    config.tokens.add(warren_gateway::Group::Docs, "d0cs");
    let guarded = Server::start(h.bus("guarded").await, config).await;
    guarded.get("/dlq").await.problem(401);
    let allowed = support::Answer::of(guarded.http.get(guarded.url("/dlq")).bearer_auth("d0cs")).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text);
    assert_eq!(guarded.get("/").await.status, 200, "the page itself holds no data and needs no token");
}
