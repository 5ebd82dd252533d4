//! `GET /`: one small page to look at the gateway (the catalog, message rates and a live tail over `/ws`,
//! the dead-letter queues' depths), and `GET /dlq`, the depths it shows.
//!
//! The page is plain HTML and JavaScript (`page.html`, embedded; no build step). It holds no data: it reads
//! `/catalog` and `/dlq` (with the `docs` token) and `/ws` (with the `stream` token), passing on the
//! `?access_token=` of its own URL.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};

use crate::Gateway;
use crate::config::Group;

/// The page, as served.
const PAGE: &str = include_str!("page.html");

/// How long one queue's depth may take before it is reported unknown.
const DEPTH_WAIT: Duration = Duration::from_secs(5);

/// `GET /`: the page. It is the same for everyone and holds no data, so it needs no token; what it reads does.
pub(crate) async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
}

/// `GET /dlq`: the dead-letter queue (`<queue>.dlq`) of each task this gateway exposes, and how many messages
/// are ready in it; `null` when the queue does not exist (yet) or the broker does not answer.
pub(crate) async fn dead_letters(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(problem) = gateway.authorize(Group::Docs, &headers, None) {
        return problem.into_response();
    }
    // Tasks that share a work queue share its dead-letter queue: one row per queue.
    let mut queues: Vec<(String, String, Vec<String>)> = Vec::new();
    for task in gateway.catalog.tasks().filter(|t| gateway.tasks.contains(&t.full_name)) {
        match queues.iter_mut().find(|(queue, _, _)| *queue == task.queue) {
            Some((_, _, tasks)) => tasks.push(task.full_name.clone()),
            None => queues.push((
                task.queue.clone(),
                warren_reflect::dead_letter_queue(&task.queue),
                vec![task.full_name.clone()],
            )),
        }
    }
    let depths = futures_util::future::join_all(queues.iter().map(|(_, dlq, _)| async {
        tokio::time::timeout(DEPTH_WAIT, gateway.bus.queue_depth(dlq)).await.ok().and_then(Result::ok)
    }))
    .await;
    let rows: Vec<Value> = queues
        .into_iter()
        .zip(depths)
        .map(
            |((queue, dlq, tasks), depth)| json!({ "queue": dlq, "work_queue": queue, "tasks": tasks, "depth": depth }),
        )
        .collect();
    Json(json!({ "dead_letter_queues": rows })).into_response()
}
