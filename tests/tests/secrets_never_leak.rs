//! The broker password never appears in errors, `Debug` output or logs.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warren::{Bus, BusConfig};

const PASSWORD: &str = "Wr0ng-pa55word-for-leak-test";

/// Collects everything the tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_refused_password_is_not_in_the_error_the_debug_output_or_the_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    // Everything at TRACE except lapin's frame dumps, which the README tells applications to clamp to DEBUG
    // (lapin logs the raw connection.start-ok frame at TRACE).
    tracing_subscriber::fmt()
        .with_env_filter("trace,lapin=debug,amq_protocol=debug,amq_protocol_tcp=debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let host = std::env::var("RABBITMQ_URL")
        .ok()
        .and_then(|u| u.split('@').nth(1).map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1:5672/%2f".to_owned());
    let config =
        BusConfig::new(&format!("amqp://guest:{PASSWORD}@{host}")).unwrap().connect_timeout(Duration::from_secs(2));
    let shown = format!("{config:?}");
    assert!(!shown.contains(PASSWORD), "Debug of the config shows the password: {shown}");

    let error = Bus::with_config(config).await.expect_err("the broker refuses a wrong password");
    // The broker answered and refused the login (not a broker that is down, which would send no credentials),
    // and that is final: no retries until the deadline, and a hint about the credentials.
    let said = error.to_string();
    assert!(said.contains("ACCESS_REFUSED"), "start RabbitMQ: the login must reach a broker: {said}");
    assert!(said.contains("(1 attempt(s)") && said.contains("check the user, password and vhost"), "{said}");
    assert!(!error.is_transient(), "a refused login is not worth retrying as it is");
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(PASSWORD), "the error shows the password: {text}");
    }
    assert!(error.to_string().contains("amqp://guest:***@"), "the error names the redacted URL: {error}");

    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(!logs.is_empty(), "the capture works (connect attempts are logged)");
    assert!(!logs.contains(PASSWORD), "the logs show the password");
    // lapin's byte-array Debug of the PLAIN response would show the password as decimal bytes.
    let as_bytes = PASSWORD.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join(", ");
    assert!(!logs.contains(&as_bytes), "the logs show the password as bytes");
}
