//! Least privilege on RabbitMQ: a vhost provisioned from the contracts' definitions (`warren topology`, here
//! `Manifest::definitions`) with `rabbitmqctl import_definitions` serves a `TopologyMode::Verify` bus whose user
//! has no configure permission (`set_permissions -p vh user "^$" ".*" ".*"`): publish, consume, a task and an
//! RPC call all work. On an empty vhost the same bus fails with one error listing what is missing.

use std::time::Duration;

use tokio::sync::mpsc;
use warren::{Bus, BusConfig, Error, HandlerError, TopologyMode};
use warren_codegen::Config;
use warren_codegen::manifest::DefinitionsOptions;
use warren_contracts::at::v1::{IntSumRequest, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::{BackgroundTask, UserRegistered};
use warren_tests::{Summator, rabbitmqctl, unique, within};

/// A private vhost and a user on it with read and write but no configure permission, both deleted on drop.
struct Provisioned {
    vhost: String,
    user: String,
    url: String,
}

impl Provisioned {
    async fn new() -> Provisioned {
        Provisioned::with_permissions(".*", ".*").await
    }

    /// [`Provisioned::new`] with these write and read permissions (configure is always `^$`).
    async fn with_permissions(write: &'static str, read: &'static str) -> Provisioned {
        let base = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| warren::DEFAULT_URL.to_owned());
        let authority = base.split_once("://").and_then(|(_, rest)| rest.split('/').next()).unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host).to_owned();
        let (vhost, user, password) = (unique("least"), unique("svc"), unique("pw"));
        let provisioned = Provisioned { url: format!("amqp://{user}:{password}@{host}/{vhost}"), vhost, user };
        let (vhost, user) = (provisioned.vhost.clone(), provisioned.user.clone());
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(&["add_vhost", &vhost]);
            rabbitmqctl(&["add_user", &user, &password]);
            rabbitmqctl(&["set_permissions", "-p", &vhost, &user, "^$", write, read]);
        })
        .await
        .expect("rabbitmqctl ran");
        provisioned
    }

    /// Imports the workspace contracts' definitions (with subscriber group `group`) into the vhost.
    async fn import(&self, group: &str) {
        let root = warren_tests::workspace_root();
        let config = Config::for_workspace(&root).unwrap();
        let contracts = warren_codegen::load(&config).unwrap_or_else(|e| panic!("{e}"));
        let manifest = warren_codegen::manifest(&config, &contracts).unwrap();
        let definitions = manifest.definitions(&DefinitionsOptions::new().vhost(&self.vhost).group(group));
        let file = std::env::temp_dir().join(format!("{}.definitions.json", self.vhost));
        std::fs::write(&file, definitions).unwrap();
        let path = file.display().to_string();
        tokio::task::spawn_blocking(move || rabbitmqctl(&["import_definitions", &path])).await.unwrap();
        let _ = std::fs::remove_file(file);
    }

    async fn bus(&self, mode: TopologyMode) -> Bus {
        let config = BusConfig::new(&self.url).unwrap().service_name("billing").topology(mode);
        let shown = config.redacted_url();
        Bus::with_config(config.connect_timeout(Duration::from_secs(5)))
            .await
            .unwrap_or_else(|e| panic!("start RabbitMQ: no broker answered at {shown} ({e})"))
    }
}

impl Drop for Provisioned {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl").args(["delete_vhost", &self.vhost]).output();
        let _ = std::process::Command::new("rabbitmqctl").args(["delete_user", &self.user]).output();
    }
}

#[tokio::test]
async fn a_user_without_configure_permission_publishes_consumes_and_calls_on_imported_definitions() {
    publish_consume_and_call(Provisioned::new().await).await;
}

/// docs/security.md's per-role regexes, for one user playing every role here: event publisher (gametrade.events),
/// task sender and worker (gametrade.tasks), subscriber of group billing, RPC server and client (at.IntSummator).
#[tokio::test]
async fn the_documented_narrow_permissions_are_enough() {
    let write = r"^(gametrade\.events|amq\.default|billing\..*)$";
    let read = r"^(billing\..*|gametrade\.events|gametrade\.tasks|at\.IntSummator)$";
    publish_consume_and_call(Provisioned::with_permissions(write, read).await).await;
}

async fn publish_consume_and_call(provisioned: Provisioned) {
    provisioned.import("billing").await;
    let event = UserRegistered { user_id: 42, username: "ada".into(), ..Default::default() };

    // The user really may not declare: a declaring bus is refused.
    let declaring = provisioned.bus(TopologyMode::Declare).await;
    let refused = declaring.publish(&event).await.expect_err("no configure permission");
    let text = refused.to_string();
    assert!(text.contains("ACCESS_REFUSED") && text.contains("TopologyMode::Verify"), "says what to do: {text}");

    let bus = provisioned.bus(TopologyMode::Verify).await;
    // The import may finish a moment after rabbitmqctl returns: wait for its last queue.
    within(10, "the imported queues", async {
        while bus.queue_stats("billing.gametrade.v1.UserRegistered").await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let (tx, mut events) = mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, "billing")
        .handle(move |event: UserRegistered, _| {
            let sent = tx.send(event.user_id).map_err(|_| HandlerError::from("the test stopped listening"));
            async move { sent }
        })
        .await
        .expect("the subscriber finds its queues");
    bus.publish(&event).await.expect("publishing needs write on the exchange only");
    assert_eq!(within(10, "the event", events.recv()).await, Some(42));

    let (tx, mut tasks) = mpsc::unbounded_channel();
    let worker = BackgroundTask::worker(&bus)
        .handle(move |task: BackgroundTask, _| {
            let sent = tx.send(task.task_id).map_err(|_| HandlerError::from("the test stopped listening"));
            async move { sent }
        })
        .await
        .expect("the worker finds its queues");
    bus.enqueue(&BackgroundTask { task_id: 9, description: "reindex".into() }).await.unwrap();
    assert_eq!(within(10, "the task", tasks.recv()).await, Some(9));

    let serving = IntSummatorServer::new(Summator).serve(&bus).await.expect("the server finds its queue");
    let reply = within(10, "a reply", IntSummatorClient::new(&bus).int_sum(IntSumRequest { a: 5, b: 18 })).await;
    assert_eq!(reply.unwrap().sum, 23);

    serving.stop().await;
    worker.stop().await;
    subscription.stop().await;
    assert!(bus.topology().queues.is_empty(), "the verifying bus declared nothing");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_verifying_bus_on_an_empty_vhost_fails_with_one_error_listing_what_is_missing() {
    let provisioned = Provisioned::new().await;
    let bus = provisioned.bus(TopologyMode::Verify).await;
    let error = UserRegistered::subscribe(&bus, "billing")
        .handle(|_: UserRegistered, _| async { Ok::<_, HandlerError>(()) })
        .await
        .expect_err("nothing was imported");
    let text = error.to_string();
    let Error::MissingTopology { missing } = error else { panic!("expected MissingTopology: {text}") };
    assert!(missing.len() >= 3, "exchange, queue, dead-letter queue at least: {text}");
    assert!(text.contains("exchange \"gametrade.events\"") && text.contains("billing.gametrade.v1.UserRegistered"));
    assert!(text.contains(&format!("--vhost={}", provisioned.vhost)), "commands name the vhost: {text}");
    assert!(text.contains("rabbitmqctl import_definitions"), "{text}");
}
