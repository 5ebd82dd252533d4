//! A gateway served on `127.0.0.1:0` for one test, and an HTTP client with deadlines.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use warren::Bus;
use warren_gateway::GatewayConfig;
use warren_reflect::Catalog;

pub const ADA: &str = r#"{"userId": "7", "username": "ada", "email": "ada@example.com"}"#;

/// A gateway serving one test; stops when dropped.
pub struct Server {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start(bus: Bus, config: GatewayConfig) -> Server {
        let catalog = Arc::new(Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap());
        config.check(&catalog).expect("the test's configuration names real contracts");
        let app = warren_gateway::router(bus, catalog, config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        Server { base: format!("http://{addr}"), addr, http, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, json: &str) -> Answer {
        let request = self.http.post(self.url(path)).header("content-type", "application/json").body(json.to_owned());
        Answer::of(request).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        Answer::of(self.http.get(self.url(path))).await
    }

    /// Stops serving (open WebSockets are left to end by themselves).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub async fn of(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("the body reads");
        Answer { status, headers, text }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or_default()
    }

    /// Asserts a problem-details answer with `status`, and returns its body.
    #[track_caller]
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.header("content-type"), "application/problem+json", "{}", self.text);
        let body = self.json();
        assert_eq!(body["status"], status, "{body}");
        assert!(body["type"].as_str().unwrap().starts_with("urn:warren:problem:"), "{body}");
        assert!(body["title"].is_string() && body["detail"].is_string(), "{body}");
        body
    }
}

/// Polls `check` every 20 ms until it holds, failing after `secs` seconds with `what`.
pub async fn eventually<F: Future<Output = bool>>(secs: u64, what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen within {secs} s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one behaviour, written as `async fn name(h: &Harness)`, on RabbitMQ (a private vhost) and in memory,
/// on a real clock (the HTTP client's deadlines are real time).
#[macro_export]
macro_rules! on_both_transports {
    ($($test:ident),* $(,)?) => {
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(&warren_tests::Harness::rabbitmq().await).await;
                }
            )*
        }
        mod in_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(&warren_tests::Harness::in_memory().await).await;
                }
            )*
        }
    };
}
