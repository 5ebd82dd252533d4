//! Interop during a migration: a service with no protobuf (the Python systems Warren replaces) talks to
//! Warren in the canonical proto3 JSON mapping, through a plain AMQP client (lapin, used directly here).

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren::HandlerError;
use warren_contracts::at::v1::IntSummatorServer;
use warren_contracts::streaming::v1::{NotificationType, UserNotification};
use warren_tests::{Harness, Summator, unique, within};

async fn plain_channel(h: &Harness) -> (Connection, lapin::Channel) {
    let connecting = Connection::connect(h.url(), ConnectionProperties::default());
    let connection = within(10, "the plain AMQP connection", connecting)
        .await
        .expect("start RabbitMQ: the plain AMQP client could not connect");
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

#[tokio::test]
async fn json_published_by_hand_reaches_the_typed_subscriber() {
    let h = Harness::rabbitmq().await;
    let bus = h.bus("inbox").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let subscription = UserNotification::subscribe(&bus, &unique("inbox"))
        .temporary()
        .handle(move |n: UserNotification, ctx| {
            let sent = tx.send((n, ctx.routing_key().to_owned())).map_err(HandlerError::from);
            async move { sent }
        })
        .await
        .unwrap();

    let (_connection, channel) = plain_channel(&h).await;
    let body = br#"{"userId": "42", "message": "Disk almost full", "notificationType": "NOTIFICATION_TYPE_WARNING"}"#;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_type("streaming.v1.UserNotification".into());
    channel
        .basic_publish("notifications".into(), "user.warning".into(), BasicPublishOptions::default(), body, properties)
        .await
        .unwrap()
        .await
        .unwrap();

    let (notification, key) = within(10, "the JSON notification", rx.recv()).await.unwrap();
    let mut expected = UserNotification { user_id: 42, message: "Disk almost full".into(), ..Default::default() };
    expected.set_notification_type(NotificationType::Warning);
    assert_eq!((notification, key.as_str()), (expected, "user.warning"));
    subscription.stop().await;
}

/// A reply as a plain client sees it: status code and message headers, error type header, JSON body.
#[derive(Debug)]
struct PlainReply {
    code: i64,
    message: String,
    error_type: Option<String>,
    content_type: Option<String>,
    /// How many headers the reply carried.
    headers: usize,
    body: serde_json::Value,
}

#[tokio::test]
async fn the_at_queue_int_sum_called_in_json_answers_in_json_and_names_a_wrong_argument() {
    let h = Harness::rabbitmq().await;
    let serving = IntSummatorServer::new(Summator).serve(&h.bus("int-summator").await).await.unwrap();
    let (_connection, channel) = plain_channel(&h).await;
    let replies = channel
        .queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(replies.name().clone(), "replies".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let mut call = async |id: &str, json: &str| -> PlainReply {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_type("/at.v1.IntSummator/IntSum".into())
            .with_correlation_id(id.into())
            .with_reply_to(replies.name().clone());
        let publish = BasicPublishOptions::default();
        channel.basic_publish("".into(), "at.IntSummator".into(), publish, json.as_bytes(), properties).await.unwrap();
        let delivery = within(10, "a reply", consumer.next()).await.unwrap().unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let p = &delivery.properties;
        assert_eq!(p.correlation_id().as_ref().map(|c| c.as_str()), Some(id));
        let header = |name: &str| p.headers().as_ref().and_then(|h| h.inner().get(name).cloned());
        let text = |value: Option<AMQPValue>| match value {
            Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        };
        PlainReply {
            // A success carries no status: only an error does.
            code: match header("warren-status") {
                None => 0,
                // A signed 64-bit integer since December 2026 (32-bit before): a plain client reads either.
                Some(AMQPValue::LongLongInt(code)) => code,
                Some(AMQPValue::LongInt(code)) => i64::from(code),
                Some(other) => panic!("a status that is not a number: {other:?}"),
            },
            message: text(header("warren-message")).unwrap_or_default(),
            error_type: text(header("warren-error")),
            content_type: p.content_type().as_ref().map(|c| c.to_string()),
            headers: p.headers().as_ref().map_or(0, |h| h.inner().len()),
            body: if delivery.data.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&delivery.data).unwrap()
            },
        }
    };

    let ok = call("1", r#"{"a": 5, "b": "18"}"#).await;
    assert_eq!((ok.code, ok.content_type.as_deref()), (0, Some("application/json")), "{ok:?}");
    assert_eq!(ok.headers, 0, "a success goes without headers (a missing status means OK): {ok:?}");
    assert_eq!(ok.body, serde_json::json!({"sum": "23"}), "64-bit integers are JSON strings");

    // AT_QUEUE's classic mistake: a string where a number belongs. The field is named.
    let wrong = call("2", r#"{"a": "five", "b": 3}"#).await;
    assert_eq!(wrong.code, 3, "INVALID_ARGUMENT: {wrong:?}");
    assert!(wrong.message.contains("field `a`"), "{}", wrong.message);

    // A declared error: its type in a header, its details in the body, in JSON.
    let overflow = call("3", &format!(r#"{{"a": "{}", "b": 1}}"#, i64::MAX)).await;
    assert_eq!(overflow.error_type.as_deref(), Some("at.v1.IntSumError"), "{overflow:?}");
    assert_eq!(overflow.body, serde_json::json!({"overflow": {"a": i64::MAX.to_string(), "b": "1"}}));
    serving.stop().await;
}
