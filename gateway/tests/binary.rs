//! The `warren-gateway` binary as a process: it refuses a public address without tokens and a configuration
//! naming what the contracts lack, and serves the README's example (on the in-memory bus).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn gateway(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren-gateway"));
    command.args(args).env("RABBITMQ_URL", "memory://").env_remove("WARREN_GATEWAY_TOKENS").stdin(Stdio::null());
    command
}

/// Runs to its end within 30 s; (exit code, stderr).
fn run(args: &[&str]) -> (i32, String) {
    let mut child = gateway(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("warren-gateway {args:?} ran past 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_public_address_needs_tokens_or_an_explicit_flag() {
    let (code, said) = run(&["--listen", "0.0.0.0:0", "--event", "UserRegistered"]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("refusing to listen on 0.0.0.0:0") && said.contains("--allow-public-without-auth"), "{said}");
    // The catalog, the dead-letter queues and the metrics are reachable too.
    let (code, said) = run(&["--listen", "0.0.0.0:0", "--event", "UserRegistered", "--token", "publish=p"]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("no bearer tokens (docs)") && said.contains("--token docs=…"), "{said}");
}

#[test]
fn names_the_contracts_lack_stop_it_with_the_closest() {
    let (code, said) = run(&["--listen", "127.0.0.1:0", "--event", "UserRegisterd"]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("did you mean gametrade.v1.UserRegistered?"), "{said}");
    let (code, said) = run(&["--token", "admin=x"]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("the part before '=' is not a group") && !said.contains("admin"), "{said}");
    let (code, said) = run(&["--listen", "127.0.0.1:0", "--ws-flush-interval", "2s"]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("--ws-flush-interval: websocket.flush_interval 2s is over the limit of 1s"), "{said}");
}

/// The headers' deadline the README example runs with here (the default, 75 s, is for proxies in front).
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_serves() {
    let config = std::env::temp_dir().join(format!("warren-gateway-binary-{}.toml", std::process::id()));
    std::fs::write(&config, format!("header_timeout_ms = {}\n", HEADER_TIMEOUT.as_millis())).unwrap();
    let mut child = gateway(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--event",
        "streaming.v1.*",
        "--service",
        "at.v1.IntSummator",
        "--stream",
        "gametrade.events=user.*",
        "--alias",
        "/messaging/user-notification=streaming.v1.UserNotification",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop_guard();
    let stderr = child.0.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line).await.expect("it starts within 30 s").unwrap();
    let base = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // Nobody subscribes on this private in-memory broker: the alias is reached and the event is unroutable.
    let alias = http
        .post(format!("{base}/messaging/user-notification"))
        .header("content-type", "application/json")
        .body(r#"{"userId": "7", "message": "your order is ready", "notificationType": "NOTIFICATION_TYPE_INFO"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(alias.status().as_u16(), 422);
    let openapi: serde_json::Value =
        serde_json::from_str(&http.get(format!("{base}/openapi.json")).send().await.unwrap().text().await.unwrap())
            .unwrap();
    assert!(openapi["paths"]["/rpc/at.v1.IntSummator/IntSum"].is_object());

    // A client that sends part of its headers and then nothing is closed at the headers' deadline.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let limit = HEADER_TIMEOUT + Duration::from_secs(10);
    tokio::time::timeout(limit, slow.read_to_end(&mut rest)).await.expect("closed by the deadline").unwrap_or(0);
    let took = started.elapsed();
    assert!(took + Duration::from_millis(200) >= HEADER_TIMEOUT, "closed after {took:?}");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"), "no answer to half a request");
    let _ = std::fs::remove_file(&config);
}

/// Kills the child when the test ends, however it ends.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

trait SpawnGuarded {
    fn kill_on_drop_guard(&mut self) -> Guard;
}

impl SpawnGuarded for Command {
    fn kill_on_drop_guard(&mut self) -> Guard {
        Guard(self.spawn().expect("warren-gateway runs"))
    }
}
