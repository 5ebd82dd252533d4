//! Several broker addresses for one bus, the nodes of a cluster: `amqp://user:password@h1:5672,h2:5673/vhost`
//! in a URL, or [`crate::BusConfig::addresses`]. lapin takes one address, so the URL lapin parses keeps only
//! the first, and the supervisor chooses among the rest (see `transport/amqp/supervise.rs`).

use std::fmt;

/// The most addresses one bus may be given: a cluster has a handful of nodes, and each address can cost a
/// connect attempt, so a longer list is a mistake (or input nobody checked).
pub(crate) const MAX_ADDRESSES: usize = 64;

/// One broker node: a host and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An address as written: its host, and its port if given.
pub(crate) type Written = (String, Option<u16>);

/// A URL's addresses, when it has more than one: the URL with only its first address (for lapin's parser),
/// and each address as written, its port `None` where left out. `Ok(None)` for a URL with one address; an
/// error (what is wrong, without the URL: the caller shows it redacted) for an empty or malformed address.
pub(crate) fn split(url: &str) -> Result<Option<(String, Vec<Written>)>, String> {
    let Some((scheme, rest)) = url.split_once("://") else { return Ok(None) };
    let (authority, path) = authority(rest)?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    if !hosts.contains(',') {
        return Ok(None);
    }
    let listed = hosts.split(',').map(parse).collect::<Result<Vec<_>, _>>()?;
    if listed.len() > MAX_ADDRESSES {
        return Err(format!("{} addresses, more than the {MAX_ADDRESSES} a bus takes", listed.len()));
    }
    let first = hosts.split(',').next().unwrap_or_default();
    let first_url = match userinfo {
        Some(userinfo) => format!("{scheme}://{userinfo}@{first}{path}"),
        None => format!("{scheme}://{first}{path}"),
    };
    Ok(Some((first_url, listed)))
}

/// The host of a one-address URL as [`parse`] reads it (a `[v6]` address without its brackets); `None` for a
/// URL without `://`.
pub(crate) fn first_host(url: &str) -> Result<Option<String>, String> {
    let Some((_, rest)) = url.split_once("://") else { return Ok(None) };
    let (authority, _) = authority(rest)?;
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, hosts)| hosts);
    if hosts.is_empty() {
        return Ok(None);
    }
    parse(hosts).map(|(host, _)| Some(host))
}

/// The authority of a URL's text after `://` (`user:password@hosts`), and the rest. Hosts that do not read
/// as hosts, with an `@` after the first `/`, `?` or `#`, mean a user or password with one of those unencoded:
/// said without quoting anything (what looks like the hosts is part of the password).
fn authority(rest: &str) -> Result<(&str, &str), String> {
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if !authority.contains('@') && path.contains('@') && authority.split(',').any(|address| parse(address).is_err()) {
        return Err("the user or password has a '/', '?' or '#' in it: percent-encode them (%2F, %3F, %23)".into());
    }
    Ok((authority, path))
}

/// One address, `host`, `host:port`, `[v6]` or `[v6]:port`: the host, and the port if given.
pub(crate) fn parse(address: &str) -> Result<Written, String> {
    let address = address.trim();
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) =
            rest.split_once(']').ok_or_else(|| format!("address \"{address}\" opens '[' and never closes it"))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("address \"{address}\" has \"{after}\" after its host; expected :port")),
            },
        }
    } else {
        if address.matches(':').count() > 1 {
            return Err(format!("address \"{address}\" looks like IPv6 without brackets: write it as [address]:port"));
        }
        match address.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    if let Some(bad) =
        host.chars().find(|c| matches!(c, '/' | '?' | '#' | '@' | '[' | ']') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("address \"{address}\" has {bad:?} in its host; a host is a name or an IP address"));
    }
    if host.is_empty() {
        return Err(if address.is_empty() {
            "an empty address (two commas in a row, or one at either end of the list)".to_owned()
        } else {
            format!("address \"{address}\" has no host")
        });
    }
    let port = match port {
        // `host:` with nothing after the colon: the default port, as URL parsers read it.
        None | Some("") => None,
        Some(port) => Some(port.parse::<u16>().ok().filter(|port| *port != 0).ok_or_else(|| {
            format!("address \"{address}\" has port \"{port}\", which is not a port number (1-65535)")
        })?),
    };
    Ok((host.to_owned(), port))
}

/// `shown` (a redacted one-address URL, `scheme://user:***@host:port/vhost`) with its host and port replaced by
/// `addresses`, comma-separated.
pub(crate) fn show(shown: &str, addresses: &[Address]) -> String {
    let Some((scheme, rest)) = shown.split_once("://") else { return shown.to_owned() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let list = addresses.iter().map(Address::to_string).collect::<Vec<_>>().join(",");
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => format!("{scheme}://{userinfo}@{list}{path}"),
        None => format!("{scheme}://{list}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_several_addresses_splits_into_the_first_and_the_list() {
        let (first, listed) = split("amqp://u:p@h1:5672,h2:5673,[::1]:5674,h4/vh?heartbeat=5").unwrap().unwrap();
        assert_eq!(first, "amqp://u:p@h1:5672/vh?heartbeat=5");
        assert_eq!(
            listed,
            [
                ("h1".to_owned(), Some(5672)),
                ("h2".to_owned(), Some(5673)),
                ("::1".to_owned(), Some(5674)),
                ("h4".to_owned(), None)
            ]
        );
        assert_eq!(split("amqp://u:p@h1:5672/vh").unwrap(), None);
        // A comma in the password is not a list.
        assert_eq!(split("amqp://u:p,q@h1:5672/vh").unwrap(), None);
    }

    #[test]
    fn an_ipv6_first_host_is_connected_to_not_localhost() {
        for url in ["amqps://app:pw@[fd00::10]:5671/prod", "amqps://app:pw@[fd00::10]:5671,h2/prod"] {
            let config = crate::BusConfig::new(url).unwrap();
            let crate::config::Endpoint::Amqp { uri, addresses } = &config.endpoint else { unreachable!() };
            assert_eq!((uri.authority.host.as_str(), uri.authority.port), ("fd00::10", 5671), "{url}");
            assert_eq!(addresses[0], Address { host: "fd00::10".into(), port: 5671 }, "{url}");
            assert!(config.redacted_url().contains("@[fd00::10]:5671"), "{}", config.redacted_url());
        }
        assert_eq!(first_host("amqp://u:p@Rabbit.Example:5672/v").unwrap().as_deref(), Some("Rabbit.Example"));
        // An empty port is the default one, as it always was.
        assert_eq!(crate::BusConfig::new("amqp://u:p@rabbit:/v").unwrap().redacted_url(), "amqp://u:***@rabbit:5672/v");
    }

    #[test]
    fn a_urls_heartbeat_is_the_default() {
        assert_eq!(crate::BusConfig::new("amqp://u:p@h/v?heartbeat=30").unwrap().heartbeat_secs, 30);
        assert_eq!(crate::BusConfig::new("amqp://u:p@h1,h2/v?heartbeat=0").unwrap().heartbeat_secs, 0);
        assert_eq!(crate::BusConfig::new("amqp://u:p@h/v").unwrap().heartbeat_secs, 10);
    }

    #[test]
    fn bad_addresses_are_named() {
        for (url, problem) in [
            ("amqp://u:p@h1:5672,,h2/", "an empty address"),
            ("amqp://u:p@h1:5672,/", "an empty address"),
            ("amqp://u:p@h1:5672,h2:99999/", "address \"h2:99999\" has port \"99999\""),
            ("amqp://u:p@h1,h2:0/", "port \"0\""),
            ("amqp://u:p@h1,:5672/", "address \":5672\" has no host"),
            ("amqp://u:p@h1,[::1/", "opens '['"),
            ("amqp://u:p@h1,fd00::5:5672/", "looks like IPv6 without brackets"),
            ("amqp://u:p@h1,rab bit:5672/", "has ' ' in its host"),
            ("amqp://app:S3cr3t,x/y@h", "percent-encode them"),
        ] {
            let error = split(url).unwrap_err();
            assert!(error.contains(problem), "{url}: {error}");
            assert!(!error.contains("S3cr3t"), "{error}");
        }
        let many = (0..=MAX_ADDRESSES).map(|i| format!("h{i}")).collect::<Vec<_>>().join(",");
        assert!(split(&format!("amqp://{many}/")).unwrap_err().contains("more than the 64"));
    }

    #[test]
    fn shown_with_every_address() {
        let addresses = [Address { host: "h1".into(), port: 1 }, Address { host: "::1".into(), port: 2 }];
        assert_eq!(show("amqp://u:***@h1:1/%2f", &addresses), "amqp://u:***@h1:1,[::1]:2/%2f");
    }
}
