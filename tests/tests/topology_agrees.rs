//! The contract manifest (`proto/warren.lock`, which `check-compat` compares) and the runtime declare the same
//! queues: for every seed contract and the `rich.v1` fixture, each subscriber queue and task work queue in the
//! manifest is what a bus declares when that subscriber or worker starts (flags, `x-` arguments, bindings, dead-letter queue), and its retry
//! queues are those the generated code's retry policy implies. The RabbitMQ definitions written from the
//! manifest (`warren topology`, `cargo xtask topology`) hold the same queues, arguments, bindings and exchanges.
//!
//! Both sides take their rules from `warren-topology`; this test keeps the inputs in step: what codegen reads
//! from the contract (priorities, quorum, retry policies, routing keys) against what generated code tells the
//! runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use warren::{Bus, Inbound, QueueSettings, Subscriber, Topology};
use warren_codegen::Config;
use warren_codegen::manifest::{Argument, Consumer, DefinitionsOptions, GROUP, Manifest};

const GROUP_NAME: &str = "the-group";

/// What one started subscriber declared, and the retry queues its policy implies.
struct Started {
    queue: String,
    retry_queues: Vec<String>,
    /// Running until the check: a stopped subscriber's queues leave the bus's topology.
    _subscription: warren::Subscription,
}

/// Starts `subscriber` (a handler that acknowledges) and keeps it running.
async fn start<T: Inbound>(subscriber: Subscriber<T>, started: &mut Vec<Started>) {
    let queue = subscriber.queue_name();
    let policy = T::retry_policy().unwrap_or_default();
    let retry_queues = policy.delays_ms().into_iter().map(|ms| warren_topology::retry_queue(&queue, ms)).collect();
    let subscription = subscriber
        .handle(|_: T, _| async { Ok::<_, warren::HandlerError>(()) })
        .await
        .unwrap_or_else(|e| panic!("subscriber on {queue} does not start: {e}"));
    started.push(Started { queue, retry_queues, _subscription: subscription });
}

fn manifest(includes: &Path, files: &[&str]) -> Manifest {
    let config = Config::new([includes], files);
    let contracts = warren_codegen::load(&config).unwrap_or_else(|e| panic!("{e}"));
    warren_codegen::manifest(&config, &contracts).unwrap()
}

/// Every consumer queue of `manifest` against what `bus` declared for the subscribers in `started`.
fn assert_agree(manifest: &Manifest, topology: &Topology, started: &[Started]) {
    let declared_bindings: BTreeSet<(String, String, String)> =
        topology.bindings.iter().map(|b| (b.queue.clone(), b.exchange.clone(), b.key.clone())).collect();
    let mut checked = BTreeSet::new();
    for (template, queue) in &manifest.queues {
        if matches!(queue.consumer, Consumer::Service(_)) {
            continue; // a plain durable queue, checked by the RPC tests
        }
        let name = template.replace(GROUP, GROUP_NAME);
        let settings = topology.queue(&name).unwrap_or_else(|| {
            panic!("the manifest has queue {template}, which no subscriber started here declared; start one for it")
        });
        let arguments: BTreeMap<String, Argument> = settings
            .arguments()
            .into_iter()
            .map(|(key, value)| match value {
                // the group is in no contract name
                Argument::Str(text) => (key.to_owned(), Argument::Str(text.replace(GROUP_NAME, GROUP))),
                number => (key.to_owned(), number),
            })
            .collect();
        let manifest_arguments = queue.arguments.clone();
        assert_eq!(arguments, manifest_arguments, "arguments of {template}");
        assert_eq!(settings.durable, queue.durable, "durability of {template}");
        let bindings: BTreeSet<(String, String)> = declared_bindings
            .iter()
            .filter(|(q, _, _)| *q == name)
            .map(|(_, exchange, key)| (exchange.clone(), key.clone()))
            .collect();
        assert_eq!(bindings, queue.bindings, "bindings of {template}");
        let dead_letter = queue.dead_letter_queue.as_ref().map(|q| q.replace(GROUP, GROUP_NAME));
        assert_eq!(dead_letter, Some(warren_topology::dead_letter_queue(&name)), "dead-letter queue of {template}");
        // A plain durable queue, and a quorum queue when its consumer queue is one.
        let expected = QueueSettings::dead_letter(settings);
        assert_eq!(topology.queue(&warren_topology::dead_letter_queue(&name)), Some(&expected), "{template}.dlq");
        let retry_queues: Vec<String> = queue.retry_queues.iter().map(|q| q.replace(GROUP, GROUP_NAME)).collect();
        let runtime = started.iter().find(|s| s.queue == name).expect("started");
        assert_eq!(retry_queues, runtime.retry_queues, "retry queues of {template}");
        checked.insert(name);
    }
    for subscriber in started {
        assert!(
            checked.contains(&subscriber.queue),
            "a subscriber declared {}, which the manifest does not list",
            subscriber.queue
        );
    }
}

#[tokio::test]
async fn the_seed_contracts_manifest_lists_what_the_runtime_declares() {
    use warren_contracts::{gametrade, streaming, trading};
    let bus = Bus::in_memory();
    let mut started = Vec::new();
    macro_rules! each {
        ($($ty:ty),* $(,)?) => { $( start(Subscriber::<$ty>::new(&bus, GROUP_NAME), &mut started).await; )* };
    }
    {
        use gametrade::v1::*;
        each!(
            UserRegistered,
            UserActivated,
            UserDeactivated,
            UserUpdated,
            ItemListed,
            ItemRemoved,
            ItemUpdated,
            MessageSent,
            MessageRead,
            MessageDeleted,
            PaymentInitiated,
            PaymentCompleted,
            PaymentFailed,
            TradeCreated,
            TradeAccepted,
            TradeRejected,
            TradeCanceled,
            TradeCompleted,
            SystemAlert,
            SystemError,
            SystemInfo,
            GametradeEvents,
        );
        start(BackgroundTask::worker(&bus), &mut started).await;
        start(RenderTradeReport::worker(&bus), &mut started).await;
    }
    {
        use streaming::v1::*;
        each!(
            UserNotification,
            AdminNotification,
            OrderProcessing,
            OrderCompleted,
            SystemEvent,
            Notifications,
            Orders,
            System
        );
        start(ProcessOrder::worker(&bus), &mut started).await;
    }
    {
        use trading::v1::*;
        each!(MarketTick, TradingSignal, TradingEvents);
    }
    let root = warren_tests::workspace_root();
    let config = Config::for_workspace(&root).unwrap();
    let contracts = warren_codegen::load(&config).unwrap_or_else(|e| panic!("{e}"));
    let manifest = warren_codegen::manifest(&config, &contracts).unwrap();
    assert_agree(&manifest, &bus.topology(), &started);
    assert_definitions_agree(&manifest, &bus.topology(), &started);
}

#[tokio::test]
async fn the_rich_fixtures_manifest_lists_what_the_runtime_declares() {
    use warren_tests::quickstart::rich::v1::*;
    let bus = Bus::in_memory();
    let mut started = Vec::new();
    start(Subscriber::<OrderCreated>::new(&bus, GROUP_NAME), &mut started).await;
    start(Subscriber::<OrderArchived>::new(&bus, GROUP_NAME), &mut started).await;
    start(Subscriber::<StockLow>::new(&bus, GROUP_NAME), &mut started).await;
    start(Subscriber::<RichEvents>::new(&bus, GROUP_NAME), &mut started).await;
    start(ResizeImage::worker(&bus), &mut started).await;
    start(RenderThumbnail::worker(&bus), &mut started).await;
    let fixtures = warren_tests::workspace_root().join("tests/fixtures/build_rs");
    let manifest = manifest(&fixtures, &["rich/v1/rich.proto"]);
    assert_agree(&manifest, &bus.topology(), &started);
    assert_definitions_agree(&manifest, &bus.topology(), &started);
}

/// A queue's arguments as the definitions write them.
fn json_arguments(settings: &QueueSettings) -> serde_json::Value {
    let arguments = settings.arguments().into_iter().map(|(key, value)| {
        let value = match value {
            Argument::Int(n) => serde_json::Value::from(n),
            Argument::Str(s) => serde_json::Value::from(s),
        };
        (key.to_owned(), value)
    });
    serde_json::Value::Object(arguments.collect())
}

/// The RabbitMQ definitions `warren topology --group the-group` writes (`Manifest::definitions`) hold exactly
/// what the bus declared for the subscribers and workers in `started` (each queue with the same durability and
/// arguments, the same bindings, each exchange alike), plus their delay queues with the settings the runtime
/// declares them with, and the plain durable RPC queues and registry.
fn assert_definitions_agree(manifest: &Manifest, topology: &Topology, started: &[Started]) {
    let options = DefinitionsOptions::new().vhost("the-vhost").group(GROUP_NAME);
    let definitions: serde_json::Value = serde_json::from_str(&manifest.definitions(&options)).unwrap();
    let list = |key: &str| definitions[key].as_array().unwrap_or_else(|| panic!("no {key}")).clone();
    for item in list("exchanges").iter().chain(&list("queues")).chain(&list("bindings")) {
        assert_eq!(item["vhost"], "the-vhost", "{item}");
    }
    let mut defined: BTreeMap<String, (bool, serde_json::Value)> = list("queues")
        .iter()
        .map(|q| (q["name"].as_str().unwrap().to_owned(), (q["durable"].as_bool().unwrap(), q["arguments"].clone())))
        .collect();
    for (name, settings) in &topology.queues {
        let (durable, arguments) =
            defined.remove(name).unwrap_or_else(|| panic!("the bus declared queue {name}, not in the definitions"));
        assert_eq!(durable, settings.durable, "durability of {name}");
        assert_eq!(arguments, json_arguments(settings), "arguments of {name}");
    }
    for subscriber in started {
        for delay in &subscriber.retry_queues {
            let (durable, arguments) = defined.remove(delay).unwrap_or_else(|| panic!("no delay queue {delay}"));
            let ms: u32 = delay.rsplit('.').next().unwrap().parse().unwrap();
            let quorum = topology.queues.iter().any(|(name, settings)| *name == subscriber.queue && settings.quorum);
            let settings = QueueSettings::retry_delay(&subscriber.queue, ms, false, quorum);
            assert_eq!((durable, arguments), (settings.durable, json_arguments(&settings)), "{delay}");
        }
    }
    for (name, (durable, arguments)) in defined {
        let rpc = manifest.services.values().any(|service| service.queue == name);
        assert!(rpc || name == warren::REGISTRY_QUEUE, "the definitions have queue {name}, which nothing declared");
        assert_eq!((durable, arguments), (true, json_arguments(&QueueSettings::plain(false))), "{name}");
    }
    let defined_bindings: BTreeSet<(String, String, String)> = list("bindings")
        .iter()
        .map(|b| {
            assert_eq!(b["destination_type"], "queue");
            let text = |key: &str| b[key].as_str().unwrap().to_owned();
            (text("destination"), text("source"), text("routing_key"))
        })
        .collect();
    let declared_bindings: BTreeSet<(String, String, String)> =
        topology.bindings.iter().map(|b| (b.queue.clone(), b.exchange.clone(), b.key.clone())).collect();
    assert_eq!(defined_bindings, declared_bindings, "bindings");
    let exchanges = list("exchanges");
    for declared in &topology.exchanges {
        let defined = exchanges
            .iter()
            .find(|e| e["name"] == declared.name.as_str())
            .unwrap_or_else(|| panic!("the bus declared exchange {}, not in the definitions", declared.name));
        assert_eq!(defined["type"], declared.kind.as_str(), "{}", declared.name);
        assert_eq!(defined["durable"], declared.durable, "{}", declared.name);
        assert_eq!(defined["auto_delete"], declared.auto_delete, "{}", declared.name);
    }
}
