//! Keeping the broker password out of everything shown: the configured URL redacted, and any AMQP URL's
//! password in a text (an error from lapin, say) replaced by `***`.

use lapin::uri::AMQPUri;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

/// The AMQP URL `url`, which parsed as `uri`, for showing: its password replaced by `***`, its query left
/// out, and the user, port and vhost lapin uses filled in where `url` leaves them out.
pub(super) fn redacted_amqp_url(url: &str, uri: &AMQPUri) -> String {
    let auth = &uri.authority;
    let vhost = || format!("/{}", utf8_percent_encode(&uri.vhost, NON_ALPHANUMERIC));
    let from_url = || {
        let mut shown = Url::parse(url).ok()?;
        if shown.username().is_empty() {
            shown.set_username(&auth.userinfo.username).ok()?;
        }
        shown.set_password(Some("***")).ok()?;
        if shown.port().is_none() {
            shown.set_port(Some(auth.port)).ok()?;
        }
        if shown.path().is_empty() {
            shown.set_path(&vhost());
        }
        shown.set_query(None);
        shown.set_fragment(None);
        Some(String::from(shown))
    };
    // A URL without a host (`amqp:///vhost`) has no room for a user: show what lapin connects to.
    from_url().unwrap_or_else(|| {
        let user = utf8_percent_encode(&auth.userinfo.username, NON_ALPHANUMERIC);
        format!("{}://{user}:***@{}:{}{}", uri.scheme, auth.host, auth.port, vhost())
    })
}

/// `url`, which may not parse, with anything between the user name and the last `@` replaced by `***`.
pub(super) fn redact_url(url: &str) -> String {
    let (scheme, rest, separator) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme, rest, "://"),
        // `amqp:user:password@host` does not parse, but shows what was meant.
        None => match url.split_once(':') {
            Some((scheme, rest)) => (scheme, rest, ":"),
            None => return url.to_owned(),
        },
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) if separator == "://" => format!("{scheme}://{user}:***@{host}"),
            _ if separator == "://" => url.to_owned(),
            _ => format!("{scheme}:***@{host}"),
        },
        None => url.to_owned(),
    }
}

/// `text` with `url` (the configured URL) replaced by `shown` wherever it appears whole, when it has a
/// password, and then the password of every AMQP URL in it replaced by `***`.
pub(super) fn redact_text(text: &str, url: &str, shown: &str) -> String {
    let text = if redact_url(url) != url { text.replace(url, shown) } else { text.to_owned() };
    redact_amqp_passwords(&text)
}

/// `text` with the password of every `amqp://user:password@` or `amqps://user:password@` in it (the scheme in
/// any case) replaced by `***`.
fn redact_amqp_passwords(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut redacted = String::with_capacity(text.len());
    // Up to where `text` has been copied to `redacted`, and from where to look for the next URL.
    let (mut copied, mut from) = (0, 0);
    while let Some(found) = lower[from..].find("amqp") {
        let start = from + found;
        let Some(scheme) = ["amqp://", "amqps://"].into_iter().find(|scheme| lower[start..].starts_with(scheme)) else {
            from = start + "amqp".len();
            continue;
        };
        // The authority ends where the path, query or fragment begins, or the text moves on.
        let authority_start = start + scheme.len();
        let authority_end = text[authority_start..]
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c.is_control())
            .map_or(text.len(), |end| authority_start + end);
        from = authority_end;
        // The userinfo ends at the authority's last `@` (as the `url` crate reads it); the password after the
        // userinfo's first `:`.
        let Some(at) = text[authority_start..authority_end].rfind('@') else { continue };
        let userinfo = &text[authority_start..authority_start + at];
        let Some(colon) = userinfo.find(':') else { continue };
        if colon + 1 == userinfo.len() {
            continue;
        }
        redacted.push_str(&text[copied..authority_start + colon + 1]);
        redacted.push_str("***");
        copied = authority_start + at;
    }
    redacted.push_str(&text[copied..]);
    redacted
}

#[cfg(test)]
mod tests {
    use crate::config::{BusConfig, Endpoint};

    #[test]
    fn debug_and_errors_hide_the_password() {
        let config = BusConfig::new("amqp://app:hunter2-secret@127.0.0.1:5672/%2f").unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("amqp://app:***@127.0.0.1:5672/"), "{shown}");
        let error = BusConfig::new("amqp://app:hunter2-secret@127.0.0.1:notaport/%2f").unwrap_err();
        assert!(!error.to_string().contains("hunter2-secret"), "{error}");
        assert!(!format!("{error:?}").contains("hunter2-secret"), "{error:?}");
    }

    #[test]
    fn the_redacted_url_keeps_all_but_the_password() {
        for (url, shown) in [
            ("amqps://app:s3cret@broker.example:5671/prod", "amqps://app:***@broker.example:5671/prod"),
            ("amqps://app:s3cret@broker.example/prod", "amqps://app:***@broker.example:5671/prod"),
            ("amqp://app:s3cret@broker.example:5673/%2f?heartbeat=5", "amqp://app:***@broker.example:5673/%2f"),
            ("amqp://app%20x:s3cret@127.0.0.1:5672/", "amqp://app%20x:***@127.0.0.1:5672/"),
            ("amqp://broker.example", "amqp://guest:***@broker.example:5672/%2F"),
            ("amqp:///prod", "amqp://guest:***@localhost:5672/prod"),
        ] {
            assert_eq!(BusConfig::new(url).unwrap().redacted_url(), shown, "{url}");
        }
        assert_eq!(BusConfig::new("memory://x").unwrap().redacted_url(), "memory://x");
    }

    #[test]
    fn only_passwords_in_urls_are_redacted() {
        let config = BusConfig::new("amqp://guest:a@host:5672/%2f").unwrap();
        assert_eq!(
            config.redact("a bad thing happened at amqp://guest:a@host:5672/%2f"),
            "a bad thing happened at amqp://guest:***@host:5672/%2f"
        );
        // Any AMQP URL, the scheme in any case; not an `@` further on in the text.
        assert_eq!(
            config.redact("AMQPS://bob:x@other:5671 then amqp://host:5672 told alice@example: no, (amqp://u:p@h)"),
            "AMQPS://bob:***@other:5671 then amqp://host:5672 told alice@example: no, (amqp://u:***@h)"
        );
        assert_eq!(config.redact("amqp://guest@host amqp://guest:@host"), "amqp://guest@host amqp://guest:@host");
        // Without a password the configured URL is left as it is.
        let config = BusConfig::new("amqp://guest@host").unwrap();
        assert_eq!(config.redact("at amqp://guest@host"), "at amqp://guest@host");
        assert_eq!(BusConfig::in_memory().redact("a: amqp://u:p@h"), "a: amqp://u:p@h");
    }

    #[test]
    fn encoded_and_odd_passwords_are_redacted() {
        let url = "amqp://guest:p%40ss@host:5672/%2f";
        let config = BusConfig::new(url).unwrap();
        let Endpoint::Amqp { uri, .. } = &config.endpoint else { unreachable!() };
        assert_eq!(uri.authority.userinfo.password, "p@ss");
        assert_eq!(config.redacted_url(), "amqp://guest:***@host:5672/%2f");
        // As configured, as lapin prints it, and decoded inside a URL.
        let text = format!("{url} / {uri} / amqp://guest:p@ss@host");
        let redacted = config.redact(&text);
        assert!(!redacted.contains("p%40ss") && !redacted.contains("p@ss"), "{redacted}");
        assert_eq!(redacted.matches("guest:***@host").count(), 3, "{redacted}");

        // A space goes unencoded into the URL: the URL as given is replaced whole.
        let url = "amqp://guest:my pass@host:5672/%2f";
        let config = BusConfig::new(url).unwrap();
        assert_eq!(config.redact(&format!("failed: {url}")), "failed: amqp://guest:***@host:5672/%2f");

        let error = BusConfig::new("amqp:guest:hunter2@host").unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
