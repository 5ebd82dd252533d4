//! What the broker says about itself when a connection opens (`connection.start`'s server properties: product,
//! version, platform, cluster name). lapin reads them and lets them go, so the probe opens a TCP connection of
//! its own (over TLS for `amqps://`, as the bus's connections are), reads that first frame, and closes: no
//! login, nothing declared.

use std::time::Duration;

use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use lapin::tcp::AMQPUriTcpExt;
use lapin::types::{AMQPValue, FieldTable};

use crate::config::BusConfig;
use crate::error::{Error, Result};

/// The AMQP 0-9-1 protocol header a client opens with.
const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// The most a `connection.start` frame may be: RabbitMQ's is about 500 bytes.
const MAX_FRAME: usize = 64 * 1024;

/// The server properties of the broker at `uri`, as text, in the order RabbitMQ sends them.
pub(crate) async fn server_properties(
    config: &BusConfig,
    uri: &lapin::uri::AMQPUri,
    timeout: Duration,
) -> Result<Vec<(String, String)>> {
    super::tls::check(config)?;
    let tls = match uri.scheme {
        lapin::uri::AMQPScheme::AMQPS => super::tls::tls_config(config)?,
        lapin::uri::AMQPScheme::AMQP => lapin::tcp::OwnedTLSConfig::default(),
    };
    let runtime = lapin::runtime::default_runtime().map_err(|e| Error::config(format!("no async runtime: {e}")))?;
    let (host, port) = (uri.authority.host.as_str(), uri.authority.port);
    let probe = async {
        let mut stream = uri.connect_with_config_async(tls.as_ref(), &runtime).await?;
        stream.write_all(PROTOCOL_HEADER).await?;
        // Frame: type (1 = method), channel (2 bytes), size (4 bytes), payload, end octet (0xCE).
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).await?;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        if header[0] != 1 || size > MAX_FRAME {
            return Err(std::io::Error::other(format!(
                "not an AMQP 0-9-1 connection.start (frame type {})",
                header[0]
            )));
        }
        let mut payload = vec![0u8; size + 1];
        stream.read_exact(&mut payload).await?;
        let _ = stream.close().await;
        Ok(payload)
    };
    let payload = tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| Error::Timeout { operation: "reading the broker's server properties", after: timeout })?
        .map_err(|e| {
            let reason = super::tls::explain(config, host, e.to_string());
            Error::config(format!("cannot read the broker's server properties at {host}:{port}: {reason}"))
        })?;
    // Method frame: class 10 (connection), method 10 (start), version major and minor, server properties.
    if payload.len() < 6 || payload[..4] != [0, 10, 0, 10] {
        return Err(Error::config(format!("{host}:{port} did not start an AMQP connection")));
    }
    let (_, table): (_, FieldTable) = lapin::types::parsing::parse_field_table(&payload[6..])
        .map_err(|e| Error::config(format!("the broker's server properties do not parse: {e:?}")))?;
    Ok(table.inner().iter().filter_map(|(key, value)| Some((key.to_string(), text(value)?))).collect())
}

/// A property's value as text; tables (RabbitMQ's capabilities) are left out.
fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::Boolean(b) => Some(b.to_string()),
        AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_) => None,
        other => Some(format!("{other:?}")),
    }
}
