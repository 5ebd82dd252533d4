//! The GameTrade story played over a Warren bus.
//!
//! One process plays every part: an e-mail service (a `UserRegistered` subscriber), an audit log (a
//! `GametradeEvents` subscriber bound with `#` that `match`es on each event), a notification inbox (the
//! contract's `user_notifications` subscription, `user.*`, over notifications whose routing key is filled from
//! their type), an order worker (the `ProcessOrder` work queue) and the `AuthService` RPC server. The demo
//! then registers a user (and shows an invalid one refused before sending), notifies them in JSON, logs in
//! over RPC (once with a wrong password, to show a typed contract error), lists an item, trades it, pays and
//! queues the order for processing, waits until every subscriber has seen its messages, and shuts down
//! cleanly.
//! Ctrl-C or SIGTERM stops the subscribers and closes the bus at any point of the story.
//!
//! Without `RABBITMQ_URL` (or the FastStream setup's `RABBITMQ_HOST`, `RABBITMQ_PORT`, `RABBITMQ_USER`,
//! `RABBITMQ_PASSWORD`, `RABBITMQ_VHOST`) it runs on the in-memory transport, with nothing installed; with
//! them, the same story runs over RabbitMQ:
//!
//! ```text
//! cargo run -p warren-demo
//! RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p warren-demo
//! RABBITMQ_HOST=127.0.0.1 RABBITMQ_USER=guest RABBITMQ_PASSWORD=guest cargo run -p warren-demo
//! ```
//!
//! With `WARREN_TRACE=1` the bus writes W3C trace context, and each handler's line shows the trace id it
//! continues: every subscriber of one event prints the same one, the id its publish started.
//!
//! With `WARREN_METRICS=127.0.0.1:9464` it serves Prometheus metrics of the story at `/metrics` there, and
//! waits for Enter before shutting down so that they can be scraped.
//!
//! `examples/otlp.rs` exports a shorter story's spans to an OpenTelemetry collector over OTLP:
//! `cargo run -p warren-demo --example otlp`.
//!
//! The `demo-*` queues are temporary (`Subscriber::temporary`): they vanish with the demo, so nothing piles
//! up on the broker between runs. Every message of a run carries the run's correlation id; anything else that
//! reaches the demo's queues meanwhile (another program publishing the same events) is acknowledged and skipped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use warren::{Bus, BusConfig, Context, Error, HandlerError, Inbound, PublishOptions, RpcContext, RpcError, Serving};
use warren::{Subscriber, Subscription, WireFormat};
use warren_contracts::gametrade::v1::auth_error::Reason;
use warren_contracts::gametrade::v1::{
    AuthService, AuthServiceClient, AuthServiceServer, AuthenticateRequest, AuthenticateResponse, GametradeEvents,
    InvalidCredentials, ItemListed, Money, PaymentCompleted, PaymentInitiated, TradeAccepted, TradeCompleted,
    TradeCreated, UserRegistered,
};
use warren_contracts::streaming::v1::{NotificationType, Notifications, ProcessOrder, UserNotification};

/// The demo user: id, name and the only password the auth server accepts.
const USER: (i64, &str, &str) = (42, "gametrader1", "s3cret");
/// How many gametrade events the story publishes; the audit log must see them all.
const GAMETRADE_EVENTS: usize = 7;
/// How long the subscribers get to catch up before the demo fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// Which subscriber saw a message of this run.
#[derive(Debug, Clone, Copy)]
enum Seen {
    /// The e-mail service got a `UserRegistered`.
    Email,
    /// The inbox got a `UserNotification`.
    Inbox,
    /// The audit log got a gametrade event.
    Audit,
    /// The order worker processed an order.
    Worker,
}

/// The demo's auth server: it knows exactly one user.
#[derive(Debug)]
struct DemoAuth;

impl AuthService for DemoAuth {
    async fn authenticate(
        &self,
        req: AuthenticateRequest,
        ctx: RpcContext,
    ) -> Result<AuthenticateResponse, RpcError<Reason>> {
        let ok = (req.username.as_str(), req.password.as_str()) == (USER.1, USER.2);
        let verdict = if ok { "ok" } else { "denied" };
        println!("    ↳ auth-service checked '{}' for {}: {verdict}", req.username, ctx.caller().unwrap_or("?"));
        if !ok {
            return Err(RpcError::Service(Reason::InvalidCredentials(InvalidCredentials { attempts_left: 2 })));
        }
        Ok(AuthenticateResponse {
            user_id: USER.0,
            access_token: format!("token-{}", USER.0),
            expires_in_seconds: 3600,
        })
    }
}

/// Starts `subscriber`: prints `line` for each message of run `run` and reports it on `seen` as `kind`.
async fn listen<T: Inbound>(
    subscriber: Subscriber<T>,
    run: &str,
    seen: &UnboundedSender<Seen>,
    kind: Seen,
    line: fn(&T, &Context) -> String,
) -> warren::Result<Subscription> {
    let (run, seen) = (run.to_owned(), seen.clone());
    subscriber
        .handle(move |message, ctx| {
            let report = if ctx.correlation_id() == Some(run.as_str()) {
                println!("    ↳ {}{}", line(&message, &ctx), trace_of(&ctx));
                seen.send(kind).map_err(HandlerError::from)
            } else {
                let from = ctx.app_id().unwrap_or("?");
                println!("    ↳ skipped a {} from '{from}', not part of this run", ctx.routing_key());
                Ok(())
            };
            async move { report }
        })
        .await
}

/// Starts the subscribers, the order worker and the auth server, before anything is published.
async fn start(bus: &Bus, run: &str, seen: &UnboundedSender<Seen>) -> anyhow::Result<(Vec<Subscription>, Serving)> {
    // Groups of this run's own: two demos on one broker do not share (and take each other's) queues.
    let group = |name: &str| format!("demo-{name}-{}", run.trim_start_matches("demo-"));
    let email = UserRegistered::subscribe(bus, &group("email")).temporary();
    let email = listen(email, run, seen, Seen::Email, |e, ctx| {
        format!("email-service got {} for {}: welcome mail to {}", ctx.routing_key(), e.user_id, e.email)
    });
    // The contract declares the `user_notifications` subscription (`user.*`); codegen checked that it matches.
    let inbox = Notifications::subscribe_user_notifications(bus, &group("inbox")).temporary();
    let inbox = listen(inbox, run, seen, Seen::Inbox, |notification, ctx| match notification {
        Notifications::UserNotification(n) => {
            let format = ctx.content_type().unwrap_or("?");
            format!("inbox of user {} got {} ({format}): {}", n.user_id, ctx.routing_key(), n.message)
        }
        Notifications::AdminNotification(n) => format!("inbox got an admin notification: {}", n.message),
    });
    // Tasks: every worker on `orders.process` competes for orders; each order goes to one of them.
    let worker = listen(ProcessOrder::worker(bus).concurrency(2), run, seen, Seen::Worker, |order, ctx| {
        format!("order worker processed order {} ({} items, attempt {})", order.order_id, order.items, ctx.attempt())
    });
    let audit =
        listen(GametradeEvents::subscribe(bus, &group("audit"), "#").temporary(), run, seen, Seen::Audit, |e, ctx| {
            format!("audit got {}: {}", ctx.routing_key(), describe(e))
        });
    let subscriptions = vec![email.await?, inbox.await?, audit.await?, worker.await?];
    Ok((subscriptions, AuthServiceServer::new(DemoAuth).serve(bus).await?))
}

/// The audit log's line for an event.
fn describe(event: &GametradeEvents) -> String {
    match event {
        GametradeEvents::UserRegistered(e) => {
            format!("user {} '{}' registered", e.user_id, e.username)
        }
        GametradeEvents::ItemListed(e) => {
            format!("item {} '{}' listed by {}", e.item_id, e.title, e.seller_id)
        }
        GametradeEvents::TradeCreated(e) => {
            format!("trade {} opened by buyer {}", e.trade_id, e.buyer_id)
        }
        GametradeEvents::TradeAccepted(e) => {
            format!("trade {} accepted by {}", e.trade_id, e.accepted_by)
        }
        GametradeEvents::TradeCompleted(e) => {
            format!("trade {} completed for {}", e.trade_id, money(&e.price))
        }
        GametradeEvents::PaymentInitiated(e) => {
            format!("payment {} of {} started", e.payment_id, money(&e.amount))
        }
        GametradeEvents::PaymentCompleted(e) => {
            format!("payment {} done ({})", e.payment_id, e.provider_reference)
        }
        other => format!("not part of the story: {other:?}"),
    }
}

/// An amount in US cents.
fn usd(cents: i64) -> Option<Money> {
    Some(Money { amount_minor: cents, currency: "USD".to_owned() })
}

/// Shows an amount as `12.50 USD`.
fn money(amount: &Option<Money>) -> String {
    amount.as_ref().map_or("?".to_owned(), |m| format!("{:.2} {}", m.amount_minor as f64 / 100.0, m.currency))
}

/// The story being told: the bus, this run's correlation id, and the step counter.
#[derive(Debug)]
struct Story<'a> {
    bus: &'a Bus,
    run: &'a str,
    step: usize,
}

impl Story<'_> {
    /// Prints the next numbered step.
    fn say(&mut self, what: &str) {
        self.step += 1;
        println!("[{}] {what}", self.step);
    }

    /// Prints `what` as a step, then publishes `event` with the run's correlation id.
    async fn publish<E: warren::Event>(&mut self, what: &str, event: E) -> anyhow::Result<()> {
        self.say(what);
        let options = PublishOptions::new().correlation_id(self.run);
        self.bus.publish_with(&event, options).await.with_context(|| format!("could not publish: {what}"))
    }

    /// Logs in over RPC with the right password, then with a wrong one.
    async fn login(&mut self) -> anyhow::Result<()> {
        let auth = AuthServiceClient::new(self.bus);
        let request = |pw: &str| AuthenticateRequest { username: USER.1.to_owned(), password: pw.to_owned() };
        self.say(&format!("'{}' logs in over RPC", USER.1));
        let reply = auth.authenticate(request(USER.2)).await.context("authenticating with the right password")?;
        println!(
            "    ← user {}, access token '{}' for {} s",
            reply.user_id, reply.access_token, reply.expires_in_seconds
        );
        self.say(&format!("'{}' logs in with a wrong password", USER.1));
        // The contract's `AuthError` arrives as a Rust enum: the match is exhaustive.
        match auth.authenticate(request("hunter2")).await {
            Err(RpcError::Service(Reason::InvalidCredentials(details))) => {
                println!("    ← refused: invalid credentials, {} attempts left", details.attempts_left);
            }
            Err(RpcError::Service(Reason::AccountLocked(details))) => {
                bail!("the account should not be locked yet ({} s left)", details.retry_after_seconds)
            }
            Err(RpcError::Status(status)) => bail!("a wrong password should be a contract error, got {status}"),
            Ok(reply) => bail!("a wrong password was accepted: {reply:?}"),
        }
        self.say("a login with an empty password is refused before anything is sent");
        match auth.authenticate(request("")).await {
            Err(RpcError::Status(status)) => println!("    ← {status}"),
            other => bail!("an empty password should fail validation, got {other:?}"),
        }
        Ok(())
    }

    /// Tells the story, then waits until every subscriber has seen its part; returns the deliveries seen.
    async fn tell(&mut self, seen: &mut UnboundedReceiver<Seen>) -> anyhow::Result<usize> {
        let (user, name, _) = USER;
        let registered = UserRegistered { user_id: user, username: name.into(), email: format!("{name}@example.com") };
        self.publish(&format!("registered user {user} '{name}'"), registered).await?;
        self.say("a notification without text or user is refused by the contract's rules");
        match self.bus.publish(&UserNotification::default()).await {
            Err(Error::Invalid { violations, .. }) => println!("    ← not sent: {violations}"),
            other => bail!("an empty notification should fail validation, got {other:?}"),
        }
        let mut note =
            UserNotification { user_id: user, message: "Welcome to GameTrade!".into(), ..Default::default() };
        note.set_notification_type(NotificationType::Info);
        // JSON on the wire, as a Python service would send it; the typed subscriber reads either format.
        self.say(&format!("notified user {user}, in JSON, routed by its type"));
        let options = PublishOptions::new().correlation_id(self.run).format(WireFormat::Json);
        self.bus.publish_with(&note, options).await.context("could not publish the notification")?;
        self.login().await?;
        self.trade(user).await?;
        self.say(&format!("waiting up to {DEADLINE:?} for the subscribers to catch up"));
        let waited = tokio::time::timeout(DEADLINE, wait_for_all(seen)).await;
        waited.map_err(|_| anyhow!("the subscribers did not see every message within {DEADLINE:?}"))?
    }

    /// A seller lists an item, `buyer` trades for it and pays.
    async fn trade(&mut self, buyer: i64) -> anyhow::Result<()> {
        let (seller, item, trade, price, pay) = (7, 1001, 5001, usd(1250), "pay-5001".to_owned());
        let (game, title) = ("Elden Ring".into(), "Moonveil katana".into());
        let listed = ItemListed { item_id: item, seller_id: seller, game, title, price: price.clone() };
        self.publish(&format!("seller {seller} listed item {item} for {}", money(&price)), listed).await?;
        let created =
            TradeCreated { trade_id: trade, item_id: item, buyer_id: buyer, seller_id: seller, price: price.clone() };
        self.publish(&format!("user {buyer} offered trade {trade}"), created).await?;
        let accepted = TradeAccepted { trade_id: trade, accepted_by: seller };
        self.publish(&format!("seller {seller} accepted trade {trade}"), accepted).await?;
        let completed =
            TradeCompleted { trade_id: trade, item_id: item, buyer_id: buyer, seller_id: seller, price: price.clone() };
        self.publish(&format!("trade {trade} completed"), completed).await?;
        let (amount, provider) = (price.clone(), "demo-pay".to_owned());
        let initiated =
            PaymentInitiated { payment_id: pay.clone(), trade_id: trade, payer_id: buyer, amount, provider };
        self.publish(&format!("user {buyer} started payment {pay}"), initiated).await?;
        let reference = "ref-1".to_owned();
        let paid =
            PaymentCompleted { payment_id: pay.clone(), trade_id: trade, amount: price, provider_reference: reference };
        self.publish(&format!("payment {pay} completed"), paid).await?;
        self.say(&format!("order {trade} queued for processing"));
        let order = ProcessOrder { order_id: trade, total_minor: 1250, items: 1 };
        let options = PublishOptions::new().correlation_id(self.run);
        self.bus.enqueue_with(&order, options).await.context("could not queue the order")
    }
}

/// Waits for the audit log to see every gametrade event and the other two subscribers their one message.
async fn wait_for_all(seen: &mut UnboundedReceiver<Seen>) -> anyhow::Result<usize> {
    let (mut email, mut inbox, mut audit, mut worker) = (0, 0, 0, 0);
    while email < 1 || inbox < 1 || audit < GAMETRADE_EVENTS || worker < 1 {
        match seen.recv().await.context("every subscriber stopped")? {
            Seen::Email => email += 1,
            Seen::Inbox => inbox += 1,
            Seen::Audit => audit += 1,
            Seen::Worker => worker += 1,
        }
    }
    Ok(email + inbox + audit + worker)
}

/// Whether `WARREN_TRACE=1` asked the demo to write and show trace context.
fn tracing_asked() -> bool {
    std::env::var("WARREN_TRACE").is_ok_and(|v| v == "1")
}

/// ` (trace <id>)`, the W3C trace id the handler continues, when tracing was asked for.
fn trace_of(ctx: &Context) -> String {
    if !tracing_asked() {
        return String::new();
    }
    let id: String = ctx.trace().trace_id().iter().map(|byte| format!("{byte:02x}")).collect();
    format!(" (trace {id})")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // RabbitMQ when the environment says where (RABBITMQ_URL, or RABBITMQ_HOST and the rest); otherwise the
    // in-memory broker, so the demo needs nothing installed.
    let config = if BusConfig::broker_in_env() { BusConfig::from_env()? } else { BusConfig::in_memory() }
        .service_name("warren-demo")
        .trace_context(tracing_asked());
    let metrics = warren::prometheus::PrometheusLayer::new();
    let endpoint = match std::env::var("WARREN_METRICS") {
        Ok(addr) if !addr.trim().is_empty() => {
            let endpoint = warren::prometheus::serve(addr.trim(), &metrics)
                .await
                .with_context(|| format!("serving metrics on WARREN_METRICS={addr}"))?;
            println!("[0] metrics at http://{}/metrics", endpoint.local_addr());
            Some(endpoint)
        }
        _ => None,
    };
    let config = if endpoint.is_some() { config.middleware(metrics.clone()) } else { config };
    println!("[0] connecting to {}", config.redacted_url());
    let bus = Bus::with_config(config).await?;
    if endpoint.is_some() {
        // Bus health and the subscribers' queue depths, sampled at each scrape.
        metrics.watch(&bus);
    }
    let run = format!("demo-{}-{}", std::process::id(), SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis());
    let (seen_tx, mut seen) = unbounded_channel();
    let (subscriptions, server) = start(&bus, &run, &seen_tx).await?;
    println!(
        "[0] demo-email, demo-inbox (user.*), demo-audit (#) (groups of this run), the order worker and the auth server are listening; run {run}"
    );
    let mut story = Story { bus: &bus, run: &run, step: 0 };
    let outcome = tokio::select! {
        told = story.tell(&mut seen) => told.map(Some),
        signal = warren::terminated() => { println!("interrupted by {signal}: shutting down"); Ok(None) }
    };
    // Interrupted, it shuts down at once; otherwise it serves the metrics until Enter, or Ctrl-C. Stdin is read
    // on a thread of its own: a blocking task would hold the runtime's shutdown until a line came.
    if let (Some(endpoint), Ok(Some(_))) = (&endpoint, &outcome) {
        println!("metrics at http://{}/metrics: press Enter (or Ctrl-C) to shut down", endpoint.local_addr());
        let (entered, enter) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_line(&mut String::new());
            let _ = entered.send(());
        });
        tokio::select! {
            _ = enter => {}
            signal = warren::terminated() => println!("interrupted by {signal}: shutting down"),
        }
    }
    // One call stops the subscribers and the server, lets running handlers finish and settle their messages,
    // and closes the bus.
    bus.shutdown(Duration::from_secs(5)).await?;
    drop((subscriptions, server));
    match outcome? {
        Some(n) => {
            println!("done: {} steps, {GAMETRADE_EVENTS} gametrade events audited, {n} deliveries in all", story.step)
        }
        None => println!("stopped after {} steps", story.step),
    }
    println!("bus shut down");
    Ok(())
}
