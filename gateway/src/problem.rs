//! Errors as RFC 9457 problem details (`application/problem+json`): `type`, `title`, `status`, `detail`, and
//! per problem its own members (`violations` for a 400, `error` and `details` for a declared RPC error).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use warren::{Code, Status};

/// The content type of every error the gateway answers.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// How long a client should wait before trying again when the broker is unavailable (seconds).
const RETRY_AFTER_SECS: u32 = 5;

/// One error answer: an HTTP status and a problem-details body.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    body: Value,
    retry_after: bool,
    authenticate: bool,
}

impl Problem {
    /// A problem of kind `slug` (its `type` is `urn:warren:problem:<slug>`).
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        let body = json!({
            "type": format!("urn:warren:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail.into(),
        });
        Problem { status, body, retry_after: false, authenticate: false }
    }

    /// Adds a member to the body.
    pub fn with(mut self, member: &str, value: Value) -> Self {
        self.body[member] = value;
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body.
    pub fn body(&self) -> &Value {
        &self.body
    }

    pub(crate) fn unauthorized(detail: &str) -> Self {
        let mut problem = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", detail);
        problem.authenticate = true;
        problem
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub(crate) fn bad_request(detail: impl Into<String>, violations: Value) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "invalid", "Invalid message", detail).with("violations", violations)
    }

    pub(crate) fn too_large(size: usize, limit: usize) -> Self {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Message too large",
            format!("the message is {size} bytes or more; the bus takes at most {limit}"),
        )
        .with("limit", json!(limit))
    }

    pub(crate) fn unavailable(detail: impl Into<String>) -> Self {
        let mut problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Broker unavailable", detail);
        problem.retry_after = true;
        problem
    }

    /// The problem for an error of `warren-reflect`: a name not found, input that does not fit, or the bus.
    pub fn from_reflect(error: &warren_reflect::Error) -> Self {
        use warren_reflect::Error as E;
        match error {
            E::NotFound { .. } | E::Ambiguous { .. } => Problem::not_found(error.to_string()),
            E::Malformed { field, reason, .. } => Problem::bad_request(
                error.to_string(),
                json!([{ "field": field.as_deref().unwrap_or_default(), "problem": reason }]),
            ),
            E::Invalid { violations, .. } => {
                let list: Vec<Value> =
                    violations.iter().map(|v| json!({ "field": v.field, "problem": v.problem })).collect();
                Problem::bad_request(error.to_string(), Value::Array(list))
            }
            E::RoutingKey { field, problem, .. } => {
                Problem::bad_request(error.to_string(), json!([{ "field": field, "problem": problem }]))
            }
            E::Bus(error) => Problem::from_bus(error),
            _ => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", error.to_string()),
        }
    }

    /// The problem for an error of the bus while sending.
    pub fn from_bus(error: &warren::Error) -> Self {
        use warren::Error as E;
        match error {
            E::Unroutable { exchange, routing_key } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unroutable",
                "Unroutable",
                format!(
                    "no queue is bound for routing key \"{routing_key}\" on exchange \"{exchange}\": nobody \
                     would receive the message, so it was not sent"
                ),
            )
            .with("exchange", json!(exchange))
            .with("routing_key", json!(routing_key)),
            E::TooLarge { size, limit } => Problem::too_large(*size, *limit),
            E::Timeout { .. } => {
                Problem::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "Broker timeout", error.to_string())
            }
            // A broker alarm (`Blocked`) and a full queue (`Nacked`) pass: worth retrying later, as is a broker
            // that is down.
            // What the broker said can name its URL, its users and vhosts, and the operator's fix: for the
            // gateway's log, not for whoever sent the request.
            E::Connect { .. } | E::Broker { .. } | E::MissingTopology { .. } => {
                tracing::warn!(%error, "answering 503: the broker");
                Problem::unavailable(
                    "the gateway's broker is unreachable or refused the operation; try again later (the gateway's \
                     log says why)",
                )
            }
            E::Closed | E::Blocked { .. } | E::Nacked { .. } | E::ExchangeNotFound { .. } => {
                Problem::unavailable(error.to_string())
            }
            E::Invalid { violations, .. } => {
                let list: Vec<Value> =
                    violations.iter().map(|v| json!({ "field": v.field, "problem": v.problem })).collect();
                Problem::bad_request(error.to_string(), Value::Array(list))
            }
            E::RoutingKey { field, problem, .. } => {
                Problem::bad_request(error.to_string(), json!([{ "field": field, "problem": problem }]))
            }
            E::Header { name, problem } => {
                Problem::bad_request(error.to_string(), json!([{ "field": name, "problem": problem }]))
            }
            E::Refused { .. } => Problem::new(StatusCode::FORBIDDEN, "refused", "Refused", error.to_string()),
            _ => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", error.to_string()),
        }
    }

    /// The problem for an RPC status that is not a declared error, mapped as grpc-gateway maps them.
    pub fn from_status(status: &Status) -> Self {
        let code = status.code();
        let http = http_status(code);
        let mut problem = Problem::new(http, &format!("status:{}", code.as_str()), code.as_str(), status.message())
            .with("code", json!(code.as_str()));
        problem.retry_after = code == Code::Unavailable;
        problem
    }
}

/// The HTTP status for an RPC status code, as grpc-gateway maps them.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        // nginx's "client closed request", as grpc-gateway uses it.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if self.authenticate {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"warren-gateway\""));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_as_grpc_gateway_maps_them() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Cancelled, 499),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::DataLoss, 500),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn bus_errors_map_to_their_statuses() {
        let timeout = warren::Error::Timeout { operation: "publish confirm", after: std::time::Duration::from_secs(5) };
        assert_eq!(Problem::from_bus(&timeout).status(), StatusCode::GATEWAY_TIMEOUT);
        let unroutable = warren::Error::Unroutable { exchange: "e".into(), routing_key: "k".into() };
        let problem = Problem::from_bus(&unroutable);
        assert_eq!(problem.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(problem.body()["detail"].as_str().unwrap().contains("no queue is bound"));
        assert_eq!(Problem::from_bus(&warren::Error::Closed).status(), StatusCode::SERVICE_UNAVAILABLE);
        let large = warren::Error::TooLarge { size: 10, limit: 5 };
        assert_eq!(Problem::from_bus(&large).status(), StatusCode::PAYLOAD_TOO_LARGE);
        let unavailable = Problem::from_status(&Status::unavailable("down")).into_response();
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(unavailable.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn a_broker_alarm_is_503_with_retry_after() {
        let blocked =
            warren::Error::Blocked { reason: "low on memory".into(), after: std::time::Duration::from_secs(5) };
        let response = Problem::from_bus(&blocked).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn a_malformed_input_names_its_field() {
        let catalog = warren_reflect::Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap();
        let error = catalog.parse_json("UserRegistered", r#"{"username": 7}"#).unwrap_err();
        let body = Problem::from_reflect(&error).body().clone();
        assert_eq!(body["violations"][0]["field"], "username", "{body}");
        assert!(body["violations"][0]["problem"].as_str().unwrap().starts_with("invalid type"), "{body}");
        let trailing = catalog.parse_json("UserRegistered", r#"{"username": "ada"} x"#).unwrap_err();
        assert_eq!(Problem::from_reflect(&trailing).body()["violations"][0]["field"], "", "no place: no field");
    }
}
