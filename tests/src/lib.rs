//! Shared helpers for Warren's integration tests.
//!
//! Broker tests run against `RABBITMQ_URL` (default: the local broker) and fail loudly with
//! "start RabbitMQ: …" when none answers; they never skip.

use std::future::Future;

pub mod faults;

/// The examples of `docs/observability.md`, compiled and run as doctests (`cargo test -p warren-tests --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../docs/observability.md")]
pub struct ObservabilityPage;

/// The examples of `docs/production.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/production.md")]
pub struct ProductionPage;

/// The examples of `docs/security.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/security.md")]
pub struct SecurityPage;

/// Contracts generated into `OUT_DIR` by `build.rs` with `warren_codegen::Builder`: the README's quick start
/// (`shop.v1`), the awkward-names fixture (`awkward.v1`) and the richer-contracts fixture (`rich.v1`).
pub mod quickstart {
    include!(concat!(env!("OUT_DIR"), "/warren_contracts.rs"));
}
use std::path::PathBuf;
use std::time::Duration;

use warren::{Bus, BusConfig, RpcContext, RpcError};
use warren_contracts::at::v1::int_sum_error::Reason;
use warren_contracts::at::v1::{IntSumRequest, IntSumResponse, IntSummator, Overflow};

/// The AT_QUEUE IntSummator component: `a + b`, or the contract's `Overflow` error.
#[derive(Debug)]
pub struct Summator;

impl IntSummator for Summator {
    async fn int_sum(&self, request: IntSumRequest, _: RpcContext) -> Result<IntSumResponse, RpcError<Reason>> {
        let (a, b) = (request.a, request.b);
        let sum = a.checked_add(b).ok_or(RpcError::Service(Reason::Overflow(Overflow { a, b })))?;
        Ok(IntSumResponse { sum })
    }
}

/// The trading system's pre-trade risk check (`trading.v1.RiskGate`, a service on a quorum queue): approves an
/// order worth at most [`RiskDesk::LIMIT`], refuses a bigger one and says why.
#[derive(Debug)]
pub struct RiskDesk;

impl RiskDesk {
    /// The largest order value (quantity × price) the desk approves.
    pub const LIMIT: f64 = 1_000_000.0;
}

impl warren_contracts::trading::v1::RiskGate for RiskDesk {
    async fn check_order(
        &self,
        order: warren_contracts::trading::v1::OrderCheck,
        _: RpcContext,
    ) -> Result<warren_contracts::trading::v1::OrderVerdict, warren::Status> {
        let value = order.quantity * order.price;
        let approved = value <= RiskDesk::LIMIT;
        let reason = if approved { String::new() } else { format!("{value} is over the limit of {}", RiskDesk::LIMIT) };
        Ok(warren_contracts::trading::v1::OrderVerdict { approved, reason })
    }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// Which broker a conformance test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The RabbitMQ at `RABBITMQ_URL` (default: the local one).
    RabbitMq,
    /// A private in-memory broker, on tokio's paused clock.
    InMemory,
}

/// One conformance test's broker: every bus it makes talks to the same broker, and no other test's.
///
/// On RabbitMQ that is a private vhost, created for the test and deleted with the harness, so tests running at
/// the same time never see each other's messages on the contracts' shared exchanges.
#[derive(Debug)]
pub struct Harness {
    /// The transport under test.
    pub transport: Transport,
    url: String,
    vhost: Option<String>,
    /// Keeps the in-memory broker alive for the whole test.
    _keep: Option<Bus>,
}

impl Harness {
    /// A harness on a fresh vhost of the RabbitMQ at `RABBITMQ_URL` (made with `rabbitmqctl`).
    pub async fn rabbitmq() -> Harness {
        let base = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| warren::DEFAULT_URL.to_owned());
        let (prefix, user) = split_url(&base);
        let vhost = unique("vhost");
        let vhost_for_task = vhost.clone();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(&["add_vhost", &vhost_for_task]);
            rabbitmqctl(&["set_permissions", "-p", &vhost_for_task, &user, ".*", ".*", ".*"]);
        })
        .await
        .expect("rabbitmqctl ran");
        Harness { transport: Transport::RabbitMq, url: format!("{prefix}/{vhost}"), vhost: Some(vhost), _keep: None }
    }

    /// A harness on a fresh in-memory broker.
    pub async fn in_memory() -> Harness {
        let url = format!("memory://{}", unique("broker"));
        let keep = Bus::connect(&url).await.expect("memory:// URLs always connect");
        Harness { transport: Transport::InMemory, url, vhost: None, _keep: Some(keep) }
    }

    /// A new bus (a new connection, on RabbitMQ) for service `service`.
    pub async fn bus(&self, service: &str) -> Bus {
        self.bus_with(self.config(service)).await
    }

    /// The configuration [`Harness::bus`] uses, to adjust before [`Harness::bus_with`].
    pub fn config(&self, service: &str) -> BusConfig {
        BusConfig::new(&self.url)
            .expect("the harness URL is valid")
            .service_name(service)
            .connect_timeout(Duration::from_secs(5))
    }

    /// A new bus with `config` (from [`Harness::config`]).
    pub async fn bus_with(&self, config: BusConfig) -> Bus {
        let shown = config.redacted_url();
        Bus::with_config(config).await.unwrap_or_else(|error| {
            panic!("start RabbitMQ: no broker answered at {shown} ({error}). Run `rabbitmq-server -detached`.")
        })
    }

    /// The private vhost of a RabbitMQ harness.
    pub fn vhost(&self) -> Option<&str> {
        self.vhost.as_deref()
    }

    /// The URL every bus of this harness connects to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A retry backoff to use in tests: realistic on the in-memory broker, whose paused clock makes any wait
    /// instant, and short on RabbitMQ, where it is real time.
    pub fn backoff(&self) -> Duration {
        match self.transport {
            Transport::RabbitMq => Duration::from_millis(50),
            Transport::InMemory => Duration::from_secs(30),
        }
    }

    /// How long to watch for something that must *not* happen.
    pub fn quiet_period(&self) -> Duration {
        match self.transport {
            Transport::RabbitMq => Duration::from_millis(300),
            Transport::InMemory => Duration::from_secs(5),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(vhost) = self.vhost.take() {
            // Deleting the vhost deletes everything the test declared in it.
            let _ = std::process::Command::new("rabbitmqctl").args(["delete_vhost", &vhost]).output();
        }
    }
}

/// `amqp://user:pass@host:port/vhost` → (`amqp://user:pass@host:port`, `user`).
fn split_url(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("RABBITMQ_URL is amqp://user:password@host:port/vhost");
    let authority = rest.split('/').next().unwrap_or_default();
    let user =
        authority.rsplit_once('@').map_or("guest", |(userinfo, _)| userinfo.split(':').next().unwrap_or("guest"));
    (format!("{scheme}://{authority}"), user.to_owned())
}

/// Runs `rabbitmqctl`, failing the test with what it said when it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl").args(args).output().unwrap_or_else(|error| {
        panic!(
            "start RabbitMQ: conformance tests on RabbitMQ run `rabbitmqctl {}` to make a private vhost: {error}",
            args[0]
        )
    });
    assert!(
        output.status.success(),
        "start RabbitMQ: `rabbitmqctl {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Instantiates conformance tests, written once as `async fn name(h: &Harness)`, for both transports:
/// `rabbitmq::name` against the real broker and `in_memory::name` on tokio's paused clock.
#[macro_export]
macro_rules! on_both_transports {
    ($($test:ident),* $(,)?) => {
        mod rabbitmq {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(&$crate::Harness::rabbitmq().await).await;
                }
            )*
        }
        mod in_memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $test() {
                    super::$test(&$crate::Harness::in_memory().await).await;
                }
            )*
        }
    };
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
