//! `amqps://` end to end: a private RabbitMQ node with a TLS listener whose certificate a CA made by this test
//! signed. With that CA trusted (`BusConfig::tls_ca`) a bus connects, publishes and consumes, and reads the
//! broker's properties; with a client certificate too; a CA that did not sign the broker's certificate is a
//! connect error naming the failed verification; a client certificate from a CA the broker does not trust is
//! refused by the broker. The redacted URL keeps `amqps://`.
//!
//! The node listens on 127.0.0.1:5697 (AMQP) and :5698 (TLS), distribution port 25697; it is started and shut
//! down by the test, and nothing touches the system broker.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::sync::mpsc;
use warren::{Bus, BusConfig, Error, HandlerError};
use warren_tests::quickstart::shop::v1::OrderPlaced;
use warren_tests::{unique, within};

const TCP_PORT: u16 = 5697;
const TLS_PORT: u16 = 5698;
const DIST_PORT: u16 = 25697;
const NODE: &str = "warren-tls@localhost";

/// A CA that signs certificates for this test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA, for a server or a client:
    /// (certificate PEM, private key PEM).
    fn sign(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("client"));
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (certificate.pem(), key.serialize_pem())
    }
}

/// The files of the test's PKI, in a directory the node's user can read.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make() -> Pki {
        let dir = std::env::temp_dir().join(unique("warren-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, rogue) = (Ca::new("Warren test CA"), Ca::new("Some other CA"));
        let (server, server_key) = ca.sign(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        let (client, client_key) = ca.sign(&["warren-client"], ExtendedKeyUsagePurpose::ClientAuth);
        let (stranger, stranger_key) = rogue.sign(&["stranger"], ExtendedKeyUsagePurpose::ClientAuth);
        for (name, text) in [
            ("ca.pem", ca.issuer.pem()),
            ("rogue-ca.pem", rogue.issuer.pem()),
            ("server.pem", server),
            ("server.key", server_key),
            ("client.pem", client),
            ("client.key", client_key),
            ("stranger.pem", stranger),
            ("stranger.key", stranger_key),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Pki { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A private RabbitMQ node with a TLS listener; shut down (and its files removed) when dropped.
struct TlsNode {
    dir: PathBuf,
}

impl TlsNode {
    /// Starts the node with `pki`'s broker certificate, asking clients for a certificate (`verify_peer`) but
    /// not requiring one; waits (up to 60 s) until it answers.
    fn start(pki: &Pki) -> TlsNode {
        // A node left running by an earlier, interrupted run would hold the ports.
        let _ = Command::new("rabbitmqctl").args(["-n", NODE, "shutdown"]).output();
        let node = TlsNode { dir: pki.dir.join("node") };
        let d = node.dir.display().to_string();
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(node.dir.join(sub)).unwrap();
        }
        std::fs::write(node.dir.join("enabled_plugins"), "[].\n").unwrap();
        let file = |name: &str| pki.file(name).display().to_string();
        std::fs::write(
            node.dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{TCP_PORT}\n\
                 listeners.ssl.default = 127.0.0.1:{TLS_PORT}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                file("ca.pem"),
                file("server.pem"),
                file("server.key")
            ),
        )
        .unwrap();
        run("chown", &["-R", "rabbitmq:rabbitmq", &pki.dir.display().to_string()]);
        let script = format!(
            "cd {d} && env RABBITMQ_NODENAME={NODE} RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT={TCP_PORT} \
             RABBITMQ_DIST_PORT={DIST_PORT} RABBITMQ_MNESIA_BASE={d}/mnesia RABBITMQ_LOG_BASE={d}/log \
             RABBITMQ_CONFIG_FILE={d}/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE={d}/enabled_plugins \
             RABBITMQ_PID_FILE={d}/node.pid HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server -detached"
        );
        run("su", &["rabbitmq", "-s", "/bin/sh", "-c", &script]);
        let started = Instant::now();
        let ready = || {
            Command::new("rabbitmqctl")
                .args(["-n", NODE, "await_startup", "--timeout", "5"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        while !ready() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "start RabbitMQ: the private TLS node did not start within 60 s (see {d}/log)"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        node
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["-n", NODE, "shutdown"]).output();
        if let Some(pki) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(pki);
        }
    }
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("start RabbitMQ: running {program} for the private TLS node: {e}"));
    assert!(
        output.status.success(),
        "start RabbitMQ: `{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The TLS listener's URL: by name, which the broker's certificate carries.
fn url() -> String {
    format!("amqps://guest:guest@localhost:{TLS_PORT}/%2f")
}

fn config(ca: &Path) -> BusConfig {
    BusConfig::new(&url()).unwrap().service_name("tls-test").connect_timeout(Duration::from_secs(10)).tls_ca(ca)
}

/// Publishes an order on `bus` and receives it there.
async fn publishes_and_consumes(bus: &Bus) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let subscription = within(
        10,
        "subscribing over TLS",
        OrderPlaced::subscribe(bus, &unique("tls")).temporary().handle(move |order: OrderPlaced, _| {
            let sent = tx.send(order.order_id).map_err(|_| HandlerError::from("the test stopped listening"));
            async move { sent }
        }),
    )
    .await
    .unwrap();
    within(10, "a publish over TLS", bus.publish(&OrderPlaced { order_id: 42 })).await.unwrap();
    assert_eq!(within(10, "the order over TLS", rx.recv()).await, Some(42));
    subscription.stop().await;
}

/// What a connect that must fail ended with.
async fn refused(config: BusConfig) -> String {
    let outcome = within(30, "a refused connect", Bus::with_config(config)).await;
    match outcome {
        Err(error @ Error::Connect { .. }) => error.to_string(),
        Err(other) => panic!("expected Error::Connect, got {other:?}"),
        Ok(_) => panic!("connected, but should have been refused"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_connects_with_a_private_ca_and_refuses_what_does_not_verify() {
    let pki = Pki::make();
    let _node = tokio::task::spawn_blocking({
        let pki = Pki { dir: pki.dir.clone() };
        move || TlsNode::start(&pki)
    })
    .await
    .unwrap();

    // The broker's CA trusted: connect, publish, consume; the probe reads the broker over TLS too.
    let bus = within(15, "a connect over TLS", Bus::with_config(config(&pki.file("ca.pem")))).await.unwrap();
    assert_eq!(bus.config().redacted_url(), format!("amqps://guest:***@localhost:{TLS_PORT}/%2f"));
    publishes_and_consumes(&bus).await;
    let broker = within(10, "the broker's properties over TLS", bus.broker()).await.unwrap();
    assert_eq!(broker.product, "RabbitMQ");
    bus.close().await.unwrap();

    // With a client certificate the broker's CA signed: accepted.
    let with_identity = config(&pki.file("ca.pem")).tls_client_identity(pki.file("client.pem"), pki.file("client.key"));
    let bus = within(15, "a connect with a client certificate", Bus::with_config(with_identity)).await.unwrap();
    publishes_and_consumes(&bus).await;
    bus.close().await.unwrap();

    // The broker's certificate checked against a CA that did not sign it: a connect error that says so.
    let wrong_ca = config(&pki.file("rogue-ca.pem")).connect_timeout(Duration::from_secs(2));
    let error = refused(wrong_ca).await;
    assert!(
        error.starts_with(&format!("could not connect to RabbitMQ at amqps://guest:***@localhost:{TLS_PORT}/%2f")),
        "{error}"
    );
    assert!(error.contains("invalid peer certificate") && error.contains("UnknownIssuer"), "{error}");
    assert!(error.contains("certificate verification failed"), "{error}");
    assert!(error.contains("rogue-ca.pem") && error.contains("\"localhost\""), "names what to check: {error}");
    assert!(error.contains("(1 attempt(s)"), "a certificate that does not verify is not retried: {error}");
    assert!(
        error.contains("check the TLS settings") && !error.contains("start RabbitMQ"),
        "the hint is the TLS settings, not starting a broker: {error}"
    );
    assert!(!error.contains("guest:guest"), "no password: {error}");

    // A client certificate from a CA the broker does not trust: the broker refuses the connection, with an
    // alert (UnknownCA) that the client reads, or (TLS 1.3: the client's side of the handshake is done first)
    // by closing the connection before the alert is read.
    let stranger = config(&pki.file("ca.pem")).tls_client_identity(pki.file("stranger.pem"), pki.file("stranger.key"));
    let error = refused(stranger.connect_timeout(Duration::from_secs(2))).await;
    assert!(
        error.contains("received fatal alert: UnknownCA: the broker refused the TLS handshake")
            || error.contains(
                "Connection reset by peer (os error 104): the broker closed the connection during the TLS handshake"
            ),
        "{error}"
    );
    assert!(error.contains("BusConfig::tls_client_identity"), "names what to check: {error}");
    assert!(!error.contains("BEGIN PRIVATE KEY"), "no key material: {error}");
}
