//! Warren's spans exported to OpenTelemetry over OTLP: a publish, its handler, an RPC call the handler makes
//! and the server that answers it, as one trace.
//!
//! It installs `tracing-opentelemetry`'s layer with an OTLP exporter (HTTP, protobuf) on a bus that writes
//! trace context (warren's `otel` feature on), plays that story, prints the trace id to look up, and flushes
//! the spans before it exits. Start a collector (or anything that takes OTLP over HTTP on port 4318, such as
//! Jaeger's all-in-one image), then:
//!
//! ```text
//! cargo run -p warren-demo --example otlp
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//!     cargo run -p warren-demo --example otlp
//! ```
//!
//! Without `RABBITMQ_URL` it runs on the in-memory transport. Without a collector it runs all the same, and
//! the spans are dropped (the batch exporter does not fail the program for them).

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::sync::mpsc;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use warren::{Bus, BusConfig, Context, HandlerError, RpcContext, RpcError};
use warren_contracts::at::v1::int_sum_error::Reason;
use warren_contracts::at::v1::{IntSumRequest, IntSumResponse, IntSummator, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::UserRegistered;

/// Adds, inside a span of its own.
struct Summator;

impl IntSummator for Summator {
    async fn int_sum(&self, request: IntSumRequest, _: RpcContext) -> Result<IntSumResponse, RpcError<Reason>> {
        // An event of the method's span (and a log line with its trace id, through the fmt layer).
        tracing::info!(a = request.a, b = request.b, "adding");
        Ok(IntSumResponse { sum: request.a + request.b })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318; `/v1/traces` is added).
    let exporter =
        opentelemetry_otlp::SpanExporter::builder().with_http().build().context("building the OTLP span exporter")?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("warren-otlp-example").build())
        .build();
    // Warren's spans are at INFO, target `warren::trace`; the fmt layer shows the log lines as well.
    tracing_subscriber::registry()
        // lapin logs the login frame, password included, at TRACE: capped at DEBUG whatever RUST_LOG says, so
        // that it reaches neither the terminal nor the collector.
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into())
                .add_directive("lapin=debug".parse()?)
                .add_directive("amq_protocol=debug".parse()?)
                .add_directive("amq_protocol_tcp=debug".parse()?),
        )
        .with(tracing_subscriber::fmt::layer())
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("warren-otlp-example")))
        .init();

    let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| "memory://otlp-example".to_owned());
    let config = BusConfig::new(&url)?.service_name("otlp-example").trace_context(true);
    let bus = Bus::with_config(config).await.with_context(|| format!("connecting to {url}"))?;
    let serving = IntSummatorServer::new(Summator).serve(&bus).await?;

    let (done, mut handled) = mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, "otlp-example")
        .temporary()
        .handle(move |event: UserRegistered, ctx: Context| {
            let done = done.clone();
            async move {
                // The call continues the handler's trace, into the server's span.
                let reply = IntSummatorClient::new(ctx.bus()).int_sum(IntSumRequest { a: event.user_id, b: 1 }).await;
                let sum = reply.map_err(|status| HandlerError::from(status.to_string()))?.sum;
                let trace_id: String = ctx.trace().trace_id().iter().map(|byte| format!("{byte:02x}")).collect();
                done.send((sum, trace_id)).map_err(|_| HandlerError::from("main stopped listening"))
            }
        })
        .await?;

    bus.publish(&UserRegistered { user_id: 41, ..Default::default() }).await?;
    let handled = tokio::time::timeout(std::time::Duration::from_secs(10), handled.recv()).await;
    let (sum, trace_id) = handled.context("the handler did not finish within 10 s")?.context("the handler ran")?;
    println!("41 + 1 = {sum}; look up trace {trace_id}: publish → process → send → process");

    subscription.stop().await;
    serving.stop().await;
    bus.close().await?;
    // Flushes the batch: the spans leave the process here, if they had not yet.
    if let Err(error) = provider.shutdown() {
        eprintln!("flushing the spans failed: {error}");
    }
    Ok(())
}
