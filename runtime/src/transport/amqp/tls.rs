//! TLS for `amqps://` URLs (the `tls` feature: rustls with the ring provider). The broker's certificate is
//! verified against the system's trusted roots and, when the configuration names one, a CA file of its own
//! ([`BusConfig::tls_ca`], `RABBITMQ_CA_FILE`); a client certificate goes to brokers that ask for one
//! ([`BusConfig::tls_client_identity`]). The files are read at every connection attempt, so a reconnection
//! picks up renewed certificates. Verification uses the URL's host: it must be a name (or address) the
//! broker's certificate carries.
//!
//! Nothing read here is logged or put in an error: errors name the file, never its contents (a private key).

use std::path::Path;

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

use crate::config::{BusConfig, Endpoint};
use crate::error::{Error, Result};

/// Said of a broker certificate that did not verify.
const VERIFICATION_FAILED: &str = "certificate verification failed";
/// Said of a handshake the broker ended with an alert (a client certificate it does not accept, say).
const HANDSHAKE_REFUSED: &str = "the broker refused the TLS handshake";

/// Said of a connection the broker reset during (or just after) the handshake.
const CLOSED_IN_HANDSHAKE: &str = "the broker closed the connection during the TLS handshake";

/// What a certificate file in PEM holds.
const PEM_CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----";

/// Checks, before the first connection, what needs no broker: that an `amqps://` URL can be served by this
/// build, that TLS files are set only for `amqps://`, and that each file reads as what it should be.
pub(crate) fn check(config: &BusConfig) -> Result<()> {
    let Endpoint::Amqp { uri, .. } = &config.endpoint else { return Ok(()) };
    let files = config.tls_ca.is_some() || config.tls_client_identity.is_some();
    if uri.scheme != AMQPScheme::AMQPS {
        return match files {
            true => Err(Error::config(format!(
                "TLS files are set (BusConfig::tls_ca / tls_client_identity, or RABBITMQ_CA_FILE) but the URL {} \
                 is not amqps://; use amqps://host:5671/… to connect over TLS, or unset them",
                config.redacted_url()
            ))),
            false => Ok(()),
        };
    }
    if !cfg!(feature = "tls") {
        return Err(Error::config(format!(
            "{} is amqps://, but this build of warren has no TLS: enable its `tls` feature \
             (warren = {{ features = [\"tls\"] }} in Cargo.toml)",
            config.redacted_url()
        )));
    }
    tls_config(config).map(drop)
}

/// lapin's TLS settings for `config`: the CA file's certificates and the client identity, read now.
pub(crate) fn tls_config(config: &BusConfig) -> Result<OwnedTLSConfig> {
    let mut tls = OwnedTLSConfig::default();
    if let Some(path) = &config.tls_ca {
        let pem = read(path, "the CA file (BusConfig::tls_ca / RABBITMQ_CA_FILE)")?;
        if !pem.contains(PEM_CERTIFICATE) {
            return Err(Error::config(format!(
                "the CA file {} (BusConfig::tls_ca / RABBITMQ_CA_FILE) holds no PEM certificate (\"{PEM_CERTIFICATE}\"); \
                 point it at the PEM file of the CA that signed the broker's certificate",
                path.display()
            )));
        }
        tls.cert_chain = Some(pem);
    }
    if let Some((certificate, key)) = &config.tls_client_identity {
        let pem = read(certificate, "the client certificate (BusConfig::tls_client_identity)")?;
        if !pem.contains(PEM_CERTIFICATE) {
            return Err(Error::config(format!(
                "the client certificate {} (BusConfig::tls_client_identity) holds no PEM certificate; give the \
                 certificate file first and the key file second",
                certificate.display()
            )));
        }
        let secret = read(key, "the client key (BusConfig::tls_client_identity)")?;
        if !secret.contains("PRIVATE KEY-----") {
            return Err(Error::config(format!(
                "the client key {} (BusConfig::tls_client_identity) holds no unencrypted PEM private key \
                 (\"-----BEGIN PRIVATE KEY-----\", PKCS#8; or RSA / EC); convert it, e.g. with `openssl pkcs8 -topk8 -nocrypt`",
                key.display()
            )));
        }
        tls.identity = Some(lapin::tcp::OwnedIdentity::PKCS8 { pem: pem.into_bytes(), key: secret.into_bytes() });
    }
    Ok(tls)
}

/// Connects to `uri`: over TLS with `config`'s files for `amqps://`, as lapin does otherwise. A TLS failure
/// says what to check.
pub(crate) async fn connect(
    config: &BusConfig,
    uri: AMQPUri,
    properties: ConnectionProperties,
) -> std::result::Result<Connection, String> {
    if uri.scheme == AMQPScheme::AMQPS && cfg!(feature = "tls") {
        let host = uri.authority.host.clone();
        let tls = tls_config(config).map_err(|error| error.to_string())?;
        let runtime = lapin::runtime::default_runtime().map_err(|error| error.to_string())?;
        return Connection::connect_uri_with_config(uri, properties, tls, runtime)
            .await
            .map_err(|error| explain(config, &host, error.to_string()));
    }
    Connection::connect_uri(uri, properties).await.map_err(|error| error.to_string())
}

/// `reason` (a failed TLS connection's), with what to check when it is a certificate's fault.
pub(crate) fn explain(config: &BusConfig, host: &str, reason: String) -> String {
    let trusted = match &config.tls_ca {
        Some(path) => format!("the CA file {} or the system's trusted roots", path.display()),
        None => "the system's trusted roots (set BusConfig::tls_ca or RABBITMQ_CA_FILE for a private CA)".to_owned(),
    };
    if reason.contains("invalid peer certificate") {
        format!(
            "{reason}: {VERIFICATION_FAILED}: the broker's certificate must be signed by a CA in {trusted} and \
             name the URL's host \"{host}\""
        )
    } else if reason.contains("received fatal alert") {
        format!(
            "{reason}: {HANDSHAKE_REFUSED}; if it asks for a client certificate, set \
             BusConfig::tls_client_identity to one signed by a CA it trusts"
        )
    } else if reason.contains("Connection reset") {
        // Over TLS 1.3 a broker that refuses the client's certificate may close the connection before its alert
        // is read: not final (a reset has other causes), but worth saying.
        format!(
            "{reason}: {CLOSED_IN_HANDSHAKE}; if it checks client certificates, check \
             BusConfig::tls_client_identity (a certificate signed by a CA the broker trusts)"
        )
    } else {
        reason
    }
}

/// Whether a failed attempt's `reason` (as [`explain`] words it) will fail again however often it is retried:
/// a certificate that does not verify, or a broker that refuses the client's.
pub(crate) fn is_final(reason: &str) -> bool {
    reason.contains(VERIFICATION_FAILED) || reason.contains(HANDSHAKE_REFUSED)
}

/// The text of `path`, or an error naming it and what it is for.
fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|error| Error::config(format!("cannot read {what} {}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> BusConfig {
        BusConfig::new(url).unwrap()
    }

    #[test]
    fn tls_files_with_a_plain_url_are_refused() {
        let error = check(&config("amqp://guest:guest@localhost/%2f").tls_ca("/nonexistent/ca.pem")).unwrap_err();
        assert!(error.to_string().contains("is not amqps://"), "{error}");
        assert!(check(&config("amqp://guest:guest@localhost/%2f")).is_ok());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn amqps_without_the_feature_says_to_enable_it() {
        let error = check(&config("amqps://guest:guest@localhost/%2f")).unwrap_err().to_string();
        assert!(error.contains("enable its `tls` feature"), "{error}");
    }

    #[test]
    fn a_missing_or_wrong_file_is_named_without_its_contents() {
        let dir = std::env::temp_dir().join(format!("warren-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n").unwrap();
        let amqps = || config("amqps://guest:guest@localhost/%2f");
        let missing = tls_config(&amqps().tls_ca(dir.join("missing.pem"))).unwrap_err().to_string();
        assert!(missing.contains("cannot read the CA file") && missing.contains("missing.pem"), "{missing}");
        // A key given where the certificate should be: named, and not shown.
        let swapped = tls_config(&amqps().tls_client_identity(&key, &key)).unwrap_err().to_string();
        assert!(swapped.contains("holds no PEM certificate") && !swapped.contains("c2VjcmV0"), "{swapped}");
        let not_ca = tls_config(&amqps().tls_ca(&key)).unwrap_err().to_string();
        assert!(not_ca.contains("holds no PEM certificate") && !not_ca.contains("c2VjcmV0"), "{not_ca}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_certificate_failure_says_what_to_check() {
        let config = config("amqps://guest:guest@localhost/%2f").tls_ca("/etc/warren/ca.pem");
        let explained = explain(&config, "localhost", "IO error: invalid peer certificate: UnknownIssuer".to_owned());
        assert!(explained.contains("certificate verification failed"), "{explained}");
        assert!(explained.contains("/etc/warren/ca.pem") && explained.contains("\"localhost\""), "{explained}");
        assert!(is_final(&explained), "a certificate that does not verify is not retried");
        let reset = explain(&config, "localhost", "IO error: Connection reset by peer (os error 104)".to_owned());
        assert!(reset.contains("check BusConfig::tls_client_identity") && !is_final(&reset), "{reset}");
    }
}
