//! Shared helpers for Warren's integration tests.
//!
//! Broker tests run against `RABBITMQ_URL` (default: the local broker) and fail loudly with
//! "start RabbitMQ: …" when none answers; they never skip.

use std::future::Future;

/// The README's quick-start contract, generated into `OUT_DIR` by `build.rs` with `warren_codegen::Builder`.
pub mod quickstart {
    include!(concat!(env!("OUT_DIR"), "/warren_contracts.rs"));
}
use std::path::PathBuf;
use std::time::Duration;

use warren::{Bus, BusConfig};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// A bus on the test broker, or a panic that says how to start one.
pub async fn bus(service: &str) -> Bus {
    let config = BusConfig::from_env()
        .expect("RABBITMQ_URL is a valid URL")
        .service_name(service)
        .connect_timeout(Duration::from_secs(5));
    let url = config.redacted_url();
    match Bus::with_config(config).await {
        Ok(bus) => bus,
        Err(error) => panic!(
            "start RabbitMQ: no broker answered at {url} ({error}). Run `rabbitmq-server -detached` \
             (then `rabbitmqctl await_startup`) or point RABBITMQ_URL at one."
        ),
    }
}

/// A name unique to this test run, so durable queues from earlier runs never interfere.
pub fn unique(prefix: &str) -> String {
    format!("test-{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Awaits `future` for at most `secs` seconds, panicking with `what` when it takes longer.
pub async fn within<T>(secs: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {secs} s"))
}
