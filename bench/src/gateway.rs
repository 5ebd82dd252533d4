//! G1: the gateway's HTTP publish (`POST /events/{type}`, JSON, 64 keep-alive clients, each answered once the
//! broker confirmed) against the bus publishing the same events directly with 64 in flight. Both sides run in
//! this process, so "CPU per message" is the client's and the gateway's together.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::measure::{Run, percentiles, timed};
use crate::raw;
use crate::workloads::{Env, Side, bus, event, unique};

/// Concurrent HTTP clients (and publishes in flight on the direct side).
const CLIENTS: usize = 64;

pub(crate) async fn http_publish(env: &Env, side: Side) -> Run {
    let connection = raw::connect(&env.url).await;
    let setup = raw::channel(&connection, false).await;
    let queue = unique("gateway");
    raw::queue(&setup, &queue, "gametrade.events", false).await;
    let bus = bus(env).await;
    bus.publish(&event(env.size, 0)).await.expect("warm-up publish");
    let n = env.n;
    let mut samples: Vec<Duration> = Vec::with_capacity(n as usize);
    let mut run = match side {
        Side::Warren => {
            let catalog = Arc::new(
                warren_reflect::Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).expect("contracts"),
            );
            let config = warren_gateway::GatewayConfig::new().allow_all();
            let app = warren_gateway::router(bus.clone(), catalog, config);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
            let address = listener.local_addr().expect("its address");
            let server = tokio::spawn(async move { axum::serve(listener, app).await });
            let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().expect("a client");
            let url = format!("http://{address}/events/gametrade.v1.UserRegistered");
            let body = |i: u64| {
                let e = event(env.size, i);
                format!(r#"{{"userId":"{}","username":"{}"}}"#, e.user_id, e.username)
            };
            let post = |i: u64| {
                let (client, url, body) = (&client, &url, body(i));
                async move {
                    let started = Instant::now();
                    let response = client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .expect("the gateway answers");
                    assert_eq!(response.status(), 202, "{:?}", response.text().await);
                    started.elapsed()
                }
            };
            post(0).await;
            let run = timed(n, async {
                samples = futures_util::stream::iter(0..n).map(post).buffer_unordered(CLIENTS).collect().await;
            })
            .await;
            server.abort();
            run
        }
        Side::Raw => {
            let publish = |i: u64| {
                let bus = &bus;
                async move {
                    let started = Instant::now();
                    bus.publish(&event(env.size, i)).await.expect("publish");
                    started.elapsed()
                }
            };
            timed(n, async {
                samples = futures_util::stream::iter(0..n).map(publish).buffer_unordered(CLIENTS).collect().await;
            })
            .await
        }
    };
    run.latency = Some(percentiles(&mut samples));
    raw::delete(&setup, &queue).await;
    let _ = bus.close().await;
    let _ = connection.close(200, "done".into()).await;
    run
}
