//! Keeping the connection: connecting with backoff, noticing a lost link, reconnecting, and declaring again
//! what the bus declared (one refusal does not stop the rest).

use super::*;

/// How long a link must stay up to count as recovered: one that fails sooner is remade only after a wait
/// that grows while it keeps failing.
const STABLE_LINK: Duration = Duration::from_secs(30);

/// Watches the link; on a failure, reconnects with backoff and jitter, replays the topology, and publishes the
/// new link. Ends when the transport is closed, or when it is dropped: then it closes both connections, which
/// its `link` would otherwise keep open (with lapin's I/O threads) for as long as the process lives. `owner` is
/// a receiver of the transport's link, which fails when the transport is dropped.
pub(super) async fn supervise(amqp: Weak<Amqp>, mut owner: watch::Receiver<Option<Link>>, mut link: Link) {
    // Waits between links that fail soon after they are made, across outages: each outage's own backoff
    // starts afresh, and a link the broker closes at once would otherwise be remade (and the topology
    // replayed) in a tight loop.
    let mut flapping = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut up_since = Instant::now();
    loop {
        let failure = match wait_for_failure(&amqp, &link, &mut owner).await {
            Some(failure) => failure,
            None => {
                drop(owner); // it holds the last link too
                for connection in [&link.publish, &link.consume] {
                    if connection.status().connected() {
                        let close = connection.close(200, ShortString::from("bye"));
                        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                    }
                }
                return;
            }
        };
        let Some(this) = amqp.upgrade() else { return };
        if this.closing.load(Ordering::Relaxed) {
            return;
        }
        tracing::warn!(reason = %this.config.redact(&failure), "connection to RabbitMQ lost; recovering");
        let since = SystemTime::now();
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let lost = this.node.load(Ordering::Relaxed);
        this.set_blocked(None); // a new connection starts unblocked
        *this.health.lock().expect("health") =
            Health::Recovering { since, attempts, last_error: this.config.redact(&failure) };
        for connection in [&link.publish, &link.consume] {
            // Drop whichever connection survived: both are rebuilt together.
            if connection.status().connected() {
                let _ = tokio::time::timeout(Duration::from_secs(1), connection.close(200, "recovering".into())).await;
            }
        }
        drop(this);
        if up_since.elapsed() < STABLE_LINK {
            tokio::time::sleep(flapping.next_wait()).await;
        } else {
            flapping.reset();
        }
        link = loop {
            let Some(this) = amqp.upgrade() else { return };
            if this.closing.load(Ordering::Relaxed) {
                return;
            }
            attempts += 1;
            let order = recovery_order(this.nodes(), lost);
            let result = match connect_pair(&this.config, this.config.connect_timeout, Instant::now(), &order).await {
                Ok((publish, consume, node)) => match replay(&this, &publish).await {
                    Ok(failed) => Ok((publish, consume, node, failed)),
                    Err(error) => Err(error.to_string()),
                },
                Err(error) => Err(error.to_string()),
            };
            match result {
                Ok((publish, consume, node, failed)) => {
                    let generation = link.generation + 1;
                    let new = Link { generation, publish: Arc::new(publish), consume: Arc::new(consume) };
                    this.recoveries.fetch_add(1, Ordering::Relaxed);
                    this.node.store(node, Ordering::Relaxed);
                    let node = this.node_name();
                    tracing::info!(attempts, after = ?started.elapsed(), %node, "reconnected to RabbitMQ");
                    *this.health.lock().expect("health") =
                        if failed.is_empty() { Health::Connected { node } } else { Health::Degraded { node, failed } };
                    this.link.send_replace(Some(new.clone()));
                    up_since = Instant::now();
                    break new;
                }
                Err(error) => {
                    let error = this.config.redact(&error);
                    let health = if started.elapsed() > this.config.recovery_timeout {
                        Health::Failed { last_error: error }
                    } else {
                        Health::Recovering { since, attempts, last_error: error }
                    };
                    *this.health.lock().expect("health") = health;
                    drop(this);
                    tokio::time::sleep(backoff.next_wait()).await;
                }
            }
        };
    }
}

/// Resolves with a description once either connection of `link` fails, or with `None` once the transport that
/// `owner` receives from is dropped. Meanwhile keeps the transport's `blocked` state as the broker sets it
/// (`connection.blocked` / `connection.unblocked` on the publishing connection).
pub(super) async fn wait_for_failure(
    amqp: &Weak<Amqp>,
    link: &Link,
    owner: &mut watch::Receiver<Option<Link>>,
) -> Option<String> {
    let mut publish_events = link.publish.events_listener();
    let mut consume_events = link.consume.events_listener();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            // A new link (this supervisor's own) or none (`close`, which the tick sees) changes it; it fails once
            // the transport, which holds its sender, is dropped.
            changed = owner.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            Some(event) = publish_events.next() => match event {
                // A soft error (e.g. 404 on a publish) closes only its channel: not a reason to reconnect.
                lapin::Event::Error(error) if !error.is_amqp_soft_error() => {
                    return Some(format!("publishing connection: {error}"));
                }
                lapin::Event::ConnectionBlocked(reason) => {
                    let this = amqp.upgrade()?;
                    tracing::warn!(%reason, node = %this.node_name(), "RabbitMQ blocked publishing (a resource alarm); publishes wait");
                    this.set_blocked(Some(reason));
                }
                lapin::Event::ConnectionUnblocked => {
                    let this = amqp.upgrade()?;
                    tracing::info!(node = %this.node_name(), "RabbitMQ unblocked publishing");
                    this.set_blocked(None);
                }
                _ => {}
            },
            Some(event) = consume_events.next() => {
                if let lapin::Event::Error(error) = event && !error.is_amqp_soft_error() {
                    return Some(format!("consuming connection: {error}"));
                }
            }
            _ = tick.tick() => {
                if !link.publish.status().connected() { return Some("publishing connection closed".to_owned()) }
                if !link.consume.status().connected() { return Some("consuming connection closed".to_owned()) }
            }
        }
    }
}

/// Declares everything this bus declared before, on a new connection.
/// Declares again everything this bus declared, on a new connection. One declaration the broker refuses does
/// not stop the others: it is logged and returned, and the rest are declared on a fresh channel (a refusal
/// closes its channel). Fails only when no channel can be opened.
pub(super) async fn replay(amqp: &Amqp, connection: &Connection) -> Result<Vec<String>> {
    let Topology { exchanges, queues, bindings, .. } = amqp.topology.lock().expect("topology").clone();
    let timeout = amqp.timeout();
    let mut channel = open_channel(connection, timeout).await?;
    let mut failed = Vec::new();
    let mut refused = async |what: String, error: Error, channel: &mut Channel| -> Result<()> {
        let error = amqp.config.redact(&error.to_string());
        tracing::warn!(%error, "could not declare {what} again after reconnecting; recovering the rest");
        failed.push(format!("{what}: {error}"));
        close_quietly(channel).await;
        *channel = open_channel(connection, timeout).await?;
        Ok(())
    };
    for exchange in &exchanges {
        if let Err(error) = declare_exchange_on(&channel, exchange, timeout).await {
            refused(format!("exchange \"{}\"", exchange.name), error, &mut channel).await?;
        }
    }
    for (queue, options) in &queues {
        if let Err(error) = declare_queue_on(&channel, queue, options, timeout).await {
            refused(format!("queue \"{queue}\""), error, &mut channel).await?;
        }
    }
    for Binding { queue, exchange, key, .. } in &bindings {
        if let Err(error) = bind_on(&channel, queue, exchange, key, timeout).await {
            refused(format!("binding of queue \"{queue}\" to \"{exchange}\" with \"{key}\""), error, &mut channel)
                .await?;
        }
    }
    close_quietly(&channel).await;
    Ok(failed)
}

pub(super) async fn declare_exchange_on(channel: &Channel, exchange: &Exchange, timeout: Duration) -> Result<()> {
    let kind = match exchange.kind {
        ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
        ExchangeKind::Headers => lapin::ExchangeKind::Headers,
    };
    let options = ExchangeDeclareOptions {
        durable: exchange.durable,
        auto_delete: exchange.auto_delete,
        ..ExchangeDeclareOptions::default()
    };
    let declare =
        channel.exchange_declare(ShortString::from(exchange.name.as_str()), kind, options, FieldTable::default());
    deadline("exchange declare", timeout, declare).await
}

pub(super) async fn declare_queue_on(
    channel: &Channel,
    queue: &str,
    options: &QueueSettings,
    timeout: Duration,
) -> Result<()> {
    let declare_options =
        QueueDeclareOptions { durable: options.durable, auto_delete: options.auto_delete, ..Default::default() };
    let declare =
        channel.queue_declare(ShortString::from(queue), declare_options, properties::queue_arguments(options));
    deadline("queue declare", timeout, declare).await.map(drop)
}

pub(super) async fn bind_on(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
    timeout: Duration,
) -> Result<()> {
    let bind = channel.queue_bind(
        ShortString::from(queue),
        ShortString::from(exchange),
        ShortString::from(key),
        QueueBindOptions::default(),
        FieldTable::default(),
    );
    deadline("queue bind", timeout, bind).await
}

/// Connects the publishing and the consuming connection, retrying with backoff until `within` has passed
/// since `started`; the error says what was tried. The nodes are tried in `order` (indexes into the
/// configured addresses), and the consuming connection goes to the node the publishing one reached, so that
/// both ride the same node. Returns the node's index with them.
pub(super) async fn connect_pair(
    config: &BusConfig,
    within: Duration,
    started: Instant,
    order: &[usize],
) -> Result<(Connection, Connection, usize)> {
    let (publish, node) = connect(config, "publish", within, started, order).await?;
    let same_first: Vec<usize> = std::iter::once(node).chain(order.iter().copied().filter(|i| *i != node)).collect();
    let (consume, _) = connect(config, "consume", within, started, &same_first).await?;
    Ok((publish, consume, node))
}

/// The order to try the nodes in after losing `lost`: shuffled, `lost` last (it is the likeliest to be down),
/// as RabbitMQ's Java and .NET clients do.
pub(super) fn recovery_order(nodes: usize, lost: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..nodes).filter(|i| *i != lost).collect();
    fastrand::shuffle(&mut order);
    order.push(lost);
    order
}

/// One connection, to the first node of `order` that answers, in rounds with backoff until `within` has
/// passed since `started`; with the index of the node it reached.
pub(super) async fn connect(
    config: &BusConfig,
    role: &str,
    within: Duration,
    started: Instant,
    order: &[usize],
) -> Result<(Connection, usize)> {
    let Endpoint::Amqp { uri, addresses } = &config.endpoint else {
        return Err(Error::config("the AMQP transport needs an amqp:// URL"));
    };
    let mut uri = uri.clone();
    uri.query.heartbeat = Some(config.heartbeat_secs);
    let properties =
        ConnectionProperties::default().with_connection_name(format!("warren:{}:{role}", config.service_name).into());
    // With several nodes, one that swallows packets must not take the whole deadline from the others.
    let per_node = if order.len() > 1 {
        (config.connect_timeout / u32::try_from(order.len()).unwrap_or(u32::MAX)).max(Duration::from_secs(1))
    } else {
        Duration::MAX
    };
    let mut attempts = 0;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    // Each node's last failure, for the error.
    let mut failures: Vec<Option<String>> = vec![None; addresses.len()];
    loop {
        for &node in order {
            let Some(address) = addresses.get(node) else { continue };
            let remaining = within.saturating_sub(started.elapsed());
            if remaining < Duration::from_millis(10) && attempts > 0 {
                break;
            }
            attempts += 1;
            uri.authority.host.clone_from(&address.host);
            uri.authority.port = address.port;
            let wait = remaining.min(per_node);
            let reason =
                match tokio::time::timeout(wait, super::tls::connect(config, uri.clone(), properties.clone())).await {
                    Ok(Ok(connection)) => return Ok((connection, node)),
                    Ok(Err(error)) => config.redact(&error.to_string()),
                    Err(_) => format!("no answer within {wait:?}"),
                };
            failures[node] = Some(reason);
        }
        let elapsed = started.elapsed();
        // Keep trying until the deadline itself (unless every node's certificate failed: that will not change);
        // the last wait is cut to what is left of it.
        let left = within.saturating_sub(elapsed);
        let reason = match addresses.len() {
            1 => failures[0].clone().unwrap_or_default(),
            _ => (addresses.iter().zip(&failures))
                .filter_map(|(address, failure)| Some(format!("{address}: {}", failure.as_ref()?)))
                .collect::<Vec<_>>()
                .join("; "),
        };
        // Every node refused the certificate or the login: that will not change by trying again.
        let refused = |f: &Option<String>| f.as_deref().is_some_and(connect_is_final);
        if left < Duration::from_millis(10) || failures.iter().all(refused) {
            return Err(Error::Connect { url: config.redacted_url(), attempts, elapsed, reason });
        }
        tracing::debug!(url = %config.redacted_url(), attempts, %reason, "connect failed; retrying");
        tokio::time::sleep(backoff.next_wait().min(left)).await;
    }
}
