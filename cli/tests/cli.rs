//! The `warren` binary run as a process, its output and exit codes asserted: the contract commands without a
//! broker (snapshots of `--help`, `list` and `describe`), and every broker command end to end against the real
//! RabbitMQ, each test in a private vhost (a "start RabbitMQ: …" failure when none answers).

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use warren::{Bus, HandlerError, Outcome, Subscriber};
use warren_contracts::at::v1::IntSummatorServer;
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::Harness;

const ADA: &str = r#"{"userId": "7", "username": "ada", "email": "ada@example.com"}"#;

/// Runs `warren args…` against `url` (none: no broker needed), with a deadline.
fn warren(url: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
    command.args(args).stdin(Stdio::null());
    match url {
        Some(url) => command.env("RABBITMQ_URL", url),
        None => command.env("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:1/none"),
    };
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the warren binary runs");
    wait_with_deadline(child, Duration::from_secs(60))
}

fn wait_with_deadline(mut child: std::process::Child, deadline: Duration) -> Output {
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().expect("the child can be waited for").is_some() {
            return child.wait_with_output().expect("its output is readable");
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("its output is readable");
            panic!("warren ran past {deadline:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("warren exits with a code")
}

/// The JSON objects of `--json` output.
fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect()
}

#[test]
fn help_of_every_command_has_an_example() {
    let mut all = String::new();
    for command in [
        &["--help"][..],
        &["list", "--help"],
        &["describe", "--help"],
        &["publish", "--help"],
        &["enqueue", "--help"],
        &["call", "--help"],
        &["tail", "--help"],
        &["dlq", "--help"],
        &["dlq", "list", "--help"],
        &["dlq", "show", "--help"],
        &["dlq", "replay", "--help"],
        &["dlq", "purge", "--help"],
        &["services", "--help"],
        &["health", "--help"],
    ] {
        let output = warren(None, command);
        assert_eq!(code(&output), 0, "{command:?}: {}", stderr(&output));
        let text = stdout(&output);
        if command.len() > 1 && command != ["dlq", "--help"] {
            assert!(text.contains("Example: warren"), "{command:?} has no example:\n{text}");
        }
        all.push_str(&format!("$ warren {}\n{text}\n", command.join(" ")));
    }
    insta::assert_snapshot!("help", all);
    let completions = warren(None, &["completions", "bash"]);
    assert!(stdout(&completions).contains("warren__subcmd__dlq__subcmd__replay"), "bash completions cover subcommands");
}

#[test]
fn list_and_describe_read_the_seed_contracts() {
    let list = warren(None, &["list"]);
    assert_eq!(code(&list), 0, "{}", stderr(&list));
    insta::assert_snapshot!("list", stdout(&list));
    for name in ["UserRegistered", "at.v1.IntSummator/IntSum", "streaming.v1.UserNotification", "BackgroundTask"] {
        let describe = warren(None, &["describe", name]);
        assert_eq!(code(&describe), 0, "{}", stderr(&describe));
        insta::assert_snapshot!(format!("describe-{name}").replace('/', "-"), stdout(&describe));
    }
    let services = warren(None, &["list", "services", "--json"]);
    let methods: Vec<String> = json_lines(&services).iter().map(|m| m["method"].as_str().unwrap().to_owned()).collect();
    assert!(methods.contains(&"at.v1.IntSummator/IntSum".to_owned()), "{methods:?}");
}

#[test]
fn the_same_contracts_come_from_a_proto_tree() {
    let proto = warren_tests::workspace_root().join("proto");
    let from_tree = warren(None, &["--proto", proto.to_str().unwrap(), "list", "events", "--json"]);
    let embedded = warren(None, &["list", "events", "--json"]);
    assert_eq!(code(&from_tree), 0, "{}", stderr(&from_tree));
    assert_eq!(json_lines(&from_tree), json_lines(&embedded));
}

#[test]
fn topology_prints_definitions_without_a_broker() {
    let output = warren(None, &["topology", "--vhost", "prod", "--group", "billing"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let definitions: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("JSON");
    let queues = definitions["queues"].as_array().unwrap();
    let named = |name: &str| queues.iter().find(|q| q["name"] == name).cloned();
    let queue = named("billing.gametrade.v1.UserRegistered").expect("the group's queue");
    assert_eq!(queue["vhost"], "prod");
    assert_eq!(queue["arguments"]["x-dead-letter-routing-key"], "billing.gametrade.v1.UserRegistered.dlq");
    for name in ["billing.gametrade.v1.UserRegistered.dlq", "at.IntSummator", "warren.registry", "gametrade.tasks"] {
        assert!(named(name).is_some(), "{name}");
    }
    assert!(
        definitions["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["destination"] == "billing.gametrade.v1.UserRegistered" && b["source"] == "gametrade.events")
    );
    // Without a group, no subscriber queue.
    let output = warren(None, &["topology"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(stdout(&output).contains("\"gametrade.tasks\""), "the definitions are printed");
    assert!(!stdout(&output).contains("UserRegistered\""), "no group, no subscriber queues");
    let output = warren(None, &["topology", "--group", ""]);
    assert_eq!(code(&output), 4, "an empty group is refused: {}", stderr(&output));
}

#[test]
fn bad_names_and_bad_input_are_told_apart_by_exit_code() {
    let typo = warren(None, &["describe", "UserRegisterd"]);
    assert_eq!(code(&typo), 3);
    assert!(stderr(&typo).contains("did you mean gametrade.v1.UserRegistered?"), "{}", stderr(&typo));

    // Input is checked before anything connects: no broker answers at this URL.
    let unknown_field = warren(None, &["publish", "UserRegistered", r#"{"userID": "7"}"#]);
    assert_eq!(code(&unknown_field), 4, "{}", stderr(&unknown_field));
    assert!(stderr(&unknown_field).contains("userID"), "{}", stderr(&unknown_field));

    let broken_rule = warren(None, &["publish", "UserNotification", r#"{"userId": "0", "message": ""}"#]);
    assert_eq!(code(&broken_rule), 4, "{}", stderr(&broken_rule));
    let said = stderr(&broken_rule);
    assert!(said.contains("field `user_id` must be at least 1"), "{said}");
    assert!(said.contains("field `message` is required"), "{said}");

    let pattern = warren(None, &["tail", "gametrade.events", "nothing.here"]);
    assert_eq!(code(&pattern), 4, "{}", stderr(&pattern));
    assert!(stderr(&pattern).contains("cannot match any event of gametrade.events"), "{}", stderr(&pattern));

    let no_broker = warren(None, &["health"]);
    assert_eq!(code(&no_broker), 5, "{}", stderr(&no_broker));
    assert!(stdout(&no_broker).contains("amqp://guest:***@127.0.0.1:1/none"), "{}", stdout(&no_broker));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_tail_enqueue_and_health_on_rabbitmq() {
    let h = Harness::rabbitmq().await;
    let url = h.url().to_owned();

    let unroutable = run(&url, &["publish", "UserRegistered", ADA]).await;
    assert_eq!(code(&unroutable), 6, "nobody is bound yet: {}", stderr(&unroutable));
    assert!(stderr(&unroutable).contains("unroutable"), "{}", stderr(&unroutable));

    let pattern = run(&url, &["tail", "gametrade.events", "nothing.here"]).await;
    assert_eq!(code(&pattern), 4);
    assert!(stderr(&pattern).contains("cannot match any event of gametrade.events"), "{}", stderr(&pattern));

    let tail = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["tail", "gametrade.events", "user.*", "--count", "2", "--for", "30s", "--json"])
        .env("RABBITMQ_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warren tail runs");
    // The tail's queue is bound once a publish is routable.
    let mut published = None;
    for _ in 0..200 {
        let output = run(&url, &["publish", "UserRegistered", ADA, "--json"]).await;
        if code(&output) == 0 {
            published = Some(json_lines(&output)[0]["message_id"].as_str().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = published.expect("the tail binds within 10 s");
    let second = run(&url, &["publish", "UserRegistered", ADA, "--header", "tenant=eu-1"]).await;
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    let tailed = tokio::task::spawn_blocking(move || wait_with_deadline(tail, Duration::from_secs(40))).await.unwrap();
    assert_eq!(code(&tailed), 0, "{}", stderr(&tailed));
    let lines = json_lines(&tailed);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["message_id"], id.as_str());
    assert_eq!(lines[0]["routing_key"], "user.registered");
    assert_eq!(lines[0]["type"], "gametrade.v1.UserRegistered");
    assert_eq!(lines[0]["payload"]["username"], "ada");

    let bus = h.bus("cli-test").await;
    let enqueued = run(
        &url,
        &["enqueue", "BackgroundTask", r#"{"taskId": "1", "description": "reindex"}"#, "--count", "3", "--json"],
    )
    .await;
    assert_eq!(code(&enqueued), 0, "{}", stderr(&enqueued));
    assert_eq!(json_lines(&enqueued)[0]["confirmed"], "3");
    assert_eq!(bus.queue_depth("gametrade.tasks").await.unwrap(), 3, "three tasks wait for a worker");

    let health = run(&url, &["health"]).await;
    assert_eq!(code(&health), 0, "{}", stderr(&health));
    assert!(stdout(&health).contains("health: Connected"), "{}", stdout(&health));
    assert!(stdout(&health).contains("broker: RabbitMQ "), "{}", stdout(&health));
    assert!(stdout(&health).contains("cluster: rabbit@"), "{}", stdout(&health));
    assert!(!stdout(&health).contains(":guest@"), "the password is never printed: {}", stdout(&health));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_replies_declared_errors_and_statuses() {
    let h = Harness::rabbitmq().await;
    let url = h.url().to_owned();
    let bus = h.bus("summator").await;
    let serving = IntSummatorServer::new(warren_tests::Summator).serve(&bus).await.unwrap();

    let sum = run(&url, &["call", "IntSummator/IntSum", r#"{"a": "2", "b": "3"}"#, "--json"]).await;
    assert_eq!(code(&sum), 0, "{}", stderr(&sum));
    assert_eq!(json_lines(&sum), [serde_json::json!({"sum": "5"})]);

    let overflow =
        run(&url, &["call", "at.v1.IntSummator/IntSum", r#"{"a": "9223372036854775807", "b": "1"}"#, "--json"]).await;
    assert_eq!(code(&overflow), 9, "a declared error: {}", stderr(&overflow));
    let error = &json_lines(&overflow)[0];
    assert_eq!(error["error"], "at.v1.IntSumError");
    assert_eq!(error["details"]["overflow"]["a"], "9223372036854775807");

    serving.stop().await;
    let timeout =
        run(&url, &["call", "IntSummator/IntSum", r#"{"a": "1", "b": "1"}"#, "--timeout", "300ms", "--json"]).await;
    assert_eq!(code(&timeout), 14, "10 + DEADLINE_EXCEEDED: {}", stderr(&timeout));
    assert_eq!(json_lines(&timeout)[0]["code"], "DEADLINE_EXCEEDED", "as gRPC and the gateway name it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_replayed_and_purged() {
    let h = Harness::rabbitmq().await;
    let url = h.url().to_owned();
    let bus = h.bus("email").await;
    let failing = Subscriber::<UserRegistered>::new(&bus, "email")
        .handle(|event: UserRegistered, _| async move {
            Ok::<_, HandlerError>(Outcome::DeadLetter { reason: format!("mailbox of {} is full", event.username) })
        })
        .await
        .unwrap();
    let queue = failing.queue().to_owned();
    let dlq = format!("{queue}.dlq");
    let published = run(&url, &["publish", "UserRegistered", ADA, "--count", "3"]).await;
    assert_eq!(code(&published), 0, "{}", stderr(&published));
    wait_for_depth(&bus, &dlq, 3).await;

    let list = run(&url, &["dlq", "list", &dlq, "--json"]).await;
    assert_eq!(code(&list), 0, "{}", stderr(&list));
    let row = json_lines(&list).into_iter().find(|row| row["queue"] == dlq.as_str()).expect("the named DLQ is listed");
    assert_eq!(row["depth"], "3");
    assert_eq!(row["reasons"], "3× mailbox of ada is full");
    assert!(json_lines(&list).iter().any(|row| row["queue"] == "gametrade.tasks.dlq"), "the tasks' DLQs are listed");

    let show = run(&url, &["dlq", "show", &dlq, "--limit", "2"]).await;
    assert_eq!(code(&show), 0, "{}", stderr(&show));
    let shown = json_lines(&show);
    assert_eq!(shown.len(), 2);
    assert_eq!(shown[0]["headers"]["x-warren-reason"], "mailbox of ada is full");
    assert_eq!(shown[0]["payload"]["email"], "ada@example.com");
    assert_eq!(bus.queue_depth(&dlq).await.unwrap(), 3, "looking takes nothing away");

    let filtered = run(&url, &["dlq", "show", &dlq, "--reason", "^nothing", "--json"]).await;
    assert_eq!(code(&filtered), 0, "{}", stderr(&filtered));
    assert_eq!(json_lines(&filtered).len(), 0);

    // The handler is fixed: replay into the same queue, where it now succeeds.
    failing.stop().await;
    let (done, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let fixed = Subscriber::<UserRegistered>::new(&bus, "email")
        .handle(move |event: UserRegistered, ctx| {
            let done = done.clone();
            async move {
                done.send((event.username, ctx.headers().get_str("x-warren-reason").is_none()))
                    .map_err(HandlerError::from)
            }
        })
        .await
        .unwrap();
    let dry = run(&url, &["dlq", "replay", &dlq, "--dry-run", "--json"]).await;
    assert_eq!(json_lines(&dry).len(), 3, "{}", stdout(&dry));
    assert_eq!(bus.queue_depth(&dlq).await.unwrap(), 3, "a dry run changes nothing");
    let replay = run(&url, &["dlq", "replay", &dlq, "--json"]).await;
    assert_eq!(code(&replay), 0, "{}", stderr(&replay));
    assert_eq!(json_lines(&replay)[0]["replayed"], "3");
    for _ in 0..3 {
        let (name, fresh) = tokio::time::timeout(Duration::from_secs(10), handled.recv()).await.unwrap().unwrap();
        assert_eq!(name, "ada");
        assert!(fresh, "the dead-letter headers are taken off");
    }
    assert_eq!(bus.queue_depth(&dlq).await.unwrap(), 0);
    fixed.stop().await;

    // Purge takes only what the filters select, after --yes.
    for reason in ["poison", "keep"] {
        let bus = bus.clone();
        let failing = Subscriber::<UserRegistered>::new(&bus, "email")
            .handle(move |_: UserRegistered, _| async move {
                Ok::<_, HandlerError>(Outcome::DeadLetter { reason: reason.into() })
            })
            .await
            .unwrap();
        assert_eq!(code(&run(&url, &["publish", "UserRegistered", ADA]).await), 0);
        failing.stop_within(Duration::from_secs(5)).await;
    }
    wait_for_depth(&bus, &dlq, 2).await;
    let unconfirmed = run(&url, &["dlq", "purge", &dlq, "--reason", "poison"]).await;
    assert_eq!(code(&unconfirmed), 1, "no answer on stdin is a no");
    assert_eq!(bus.queue_depth(&dlq).await.unwrap(), 2);
    let purge = run(&url, &["dlq", "purge", &dlq, "--reason", "poison", "--yes", "--json"]).await;
    assert_eq!(json_lines(&purge)[0]["purged"], "1", "{}", stderr(&purge));
    wait_for_depth(&bus, &dlq, 1).await;
    let left = bus.fetch(&dlq).await.unwrap().expect("one is left");
    assert_eq!(left.header_str("x-warren-reason"), Some("keep"));

    let missing = run(&url, &["dlq", "show", "no.such.dlq"]).await;
    assert_eq!(code(&missing), 3, "{}", stderr(&missing));
    assert!(stderr(&missing).contains("queue \"no.such.dlq\" does not exist"), "{}", stderr(&missing));
    let nowhere = run(&url, &["dlq", "replay", &dlq, "--to-queue", "no.such.queue"]).await;
    assert_eq!(code(&nowhere), 3, "{}", stderr(&nowhere));
    assert!(stderr(&nowhere).contains("--to-queue \"no.such.queue\": no such queue"), "{}", stderr(&nowhere));
}

/// Dead letters without a message id (a plain AMQP client's) are each replayed: none is taken for another's
/// redelivery and dropped, even after `dlq show` has left every one of them marked redelivered.
#[tokio::test]
async fn dead_letters_without_a_message_id_are_each_replayed() {
    use prost::Message as _;
    let h = Harness::rabbitmq().await;
    let url = h.url().to_owned();
    let bus = h.bus("plain").await;
    let failing = Subscriber::<UserRegistered>::new(&bus, "plain")
        .handle(|_: UserRegistered, _| async {
            Ok::<_, HandlerError>(Outcome::DeadLetter { reason: "not yet".into() })
        })
        .await
        .unwrap();
    let queue = failing.queue().to_owned();
    let dlq = format!("{queue}.dlq");
    for n in 0..3 {
        let body = UserRegistered { user_id: n, username: format!("plain-{n}"), email: String::new() }.encode_to_vec();
        bus.publish_bytes("", &queue, &body, warren::MessageProperties::default()).await.unwrap();
    }
    wait_for_depth(&bus, &dlq, 3).await;
    failing.stop().await;
    let show = run(&url, &["dlq", "show", &dlq, "--json"]).await;
    assert_eq!(json_lines(&show).len(), 3, "{}", stderr(&show));
    assert!(json_lines(&show).iter().all(|m| m["message_id"].is_null() || m["message_id"] == ""), "{}", stdout(&show));

    let (done, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let fixed = Subscriber::<UserRegistered>::new(&bus, "plain")
        .handle(move |event: UserRegistered, _| {
            let done = done.clone();
            async move { done.send(event.user_id).map_err(HandlerError::from) }
        })
        .await
        .unwrap();
    // And one put in the DLQ by hand: it does not say where it came from, so it is passed over, not failed.
    let foreign = UserRegistered { user_id: 99, ..Default::default() }.encode_to_vec();
    bus.publish_bytes("", &dlq, &foreign, warren::MessageProperties::default()).await.unwrap();
    let replay = run(&url, &["dlq", "replay", &dlq, "--json"]).await;
    assert_eq!(code(&replay), 0, "{}", stderr(&replay));
    let summary = &json_lines(&replay)[0];
    let counts = ["replayed", "passed_over", "failed"].map(|field| summary[field].as_str().unwrap_or_default());
    assert_eq!(counts, ["3", "1", "0"], "{summary}");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(tokio::time::timeout(Duration::from_secs(10), handled.recv()).await.unwrap().unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2], "every one replayed, none dropped");
    assert_eq!(bus.queue_depth(&dlq).await.unwrap(), 1, "the one passed over stays");
    fixed.stop().await;
}

/// A queue longer than a command holds at once (5,000 unsettled messages) is read in parts, and each command
/// says so: `show` on stderr, `purge` with `unread` in its summary and exit code 1; run again, it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_longer_than_a_command_holds_is_read_in_parts_and_says_so() {
    use prost::Message as _;
    let h = Harness::rabbitmq().await;
    let url = h.url().to_owned();
    let bus = h.bus("bulk").await;
    let declared = Subscriber::<UserRegistered>::new(&bus, "bulk")
        .handle(|_: UserRegistered, _| async { Ok::<_, HandlerError>(()) })
        .await
        .unwrap();
    let queue = declared.queue().to_owned();
    declared.stop().await;
    let body = UserRegistered { user_id: 1, username: "bulk".into(), email: String::new() }.encode_to_vec();
    for chunk in 0..51 {
        let sends = (0..100).map(|n| {
            let properties = warren::MessageProperties::default()
                .with_kind("gametrade.v1.UserRegistered")
                .with_message_id(format!("bulk-{chunk}-{n}"));
            bus.publish_bytes("", &queue, &body, properties)
        });
        for sent in futures_util::future::join_all(sends).await {
            sent.unwrap();
        }
    }
    wait_for_depth(&bus, &queue, 5_100).await;

    let show = run(&url, &["dlq", "show", &queue, "--reason", "^nothing", "--json"]).await;
    assert_eq!(code(&show), 0, "{}", stderr(&show));
    assert!(json_lines(&show).is_empty());
    assert!(stderr(&show).contains("read only the first 5000 of the 5100 messages"), "{}", stderr(&show));

    let purge = run(&url, &["dlq", "purge", &queue, "--yes", "--json"]).await;
    assert_eq!(code(&purge), 1, "not everything was read: {}", stderr(&purge));
    assert_eq!(json_lines(&purge)[0]["purged"], "5000");
    assert_eq!(json_lines(&purge)[0]["unread"], "100");
    assert!(stderr(&purge).contains("run it again to go on"), "{}", stderr(&purge));
    wait_for_depth(&bus, &queue, 100).await;
    let again = run(&url, &["dlq", "purge", &queue, "--yes", "--json"]).await;
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert_eq!(
        (json_lines(&again)[0]["purged"].as_str(), json_lines(&again)[0]["unread"].as_str()),
        (Some("100"), Some("0"))
    );
}

/// `warren` in a blocking task, so the test's own bus keeps running.
async fn run(url: &str, args: &[&str]) -> Output {
    let (url, args): (String, Vec<String>) = (url.to_owned(), args.iter().map(|a| (*a).to_owned()).collect());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        warren(Some(&url), &args)
    })
    .await
    .expect("the command ran")
}

async fn wait_for_depth(bus: &Bus, queue: &str, depth: u64) {
    for _ in 0..400 {
        if bus.queue_depth(queue).await.ok() == Some(depth) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{queue} did not reach depth {depth} within 10 s (it has {:?})", bus.queue_depth(queue).await.ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_shows_who_serves_what_and_flags_skew() {
    let h = Harness::rabbitmq().await;
    let url = h.url().to_owned();
    let bus = h.bus("summator").await;
    let _first = IntSummatorServer::new(warren_tests::Summator).serve(&bus).await.unwrap();
    let _second = IntSummatorServer::new(warren_tests::Summator).serve(&bus).await.unwrap();
    // An instance built from other contracts, as a server would announce it.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let hello = serde_json::json!({
        "event": "hello", "service": "at.v1.IntSummator", "queue": "at.IntSummator", "instance": "old-build",
        "host": "legacy", "pid": 42, "app": "summator", "started_at_ms": now, "sent_at_ms": now,
        "heartbeat_ms": 10_000, "fingerprint": "0123456789abcdef",
    });
    let properties =
        warren::MessageProperties::default().with_kind(warren::ANNOUNCEMENT_TYPE).with_expiration_ms(30_000);
    bus.publish_bytes("", warren::REGISTRY_QUEUE, hello.to_string().as_bytes(), properties).await.unwrap();

    let output = run(&url, &["services", "--json"]).await;
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let rows = json_lines(&output);
    let summators: Vec<_> = rows.iter().filter(|r| r["service"] == "at.v1.IntSummator").collect();
    assert_eq!(summators.len(), 3, "{rows:?}");
    assert!(summators.iter().all(|r| r["consumers"] == "2"), "two servers consume: {summators:?}");
    let skewed: Vec<_> = summators.iter().filter(|r| r["note"].as_str().unwrap().starts_with("SKEW")).collect();
    assert_eq!(skewed.len(), 1, "{summators:?}");
    assert_eq!(skewed[0]["host"], "legacy");
    let ours = summators.iter().find(|r| r["note"] == "").expect("an instance of this build");
    assert_eq!(ours["pid"], std::process::id().to_string());
    let auth = rows.iter().find(|r| r["service"] == "gametrade.v1.AuthService").expect("every contract service");
    assert_eq!(auth["note"], "no server announces itself");
}
