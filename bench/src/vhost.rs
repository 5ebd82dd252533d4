//! The run's own vhost: the benchmark declares its exchanges and queues there rather than in the broker's
//! shared ones, so that its events reach no real subscriber and no queue bound by someone else slows it down.
//! Made with `rabbitmqctl` at the start and deleted at the end, also when the run panics or is interrupted.

use std::process::Command;
use std::sync::OnceLock;

/// The node `rabbitmqctl` manages vhosts on, if not the local default (`--cluster`).
static NODE: OnceLock<String> = OnceLock::new();

/// Makes `rabbitmqctl` manage vhosts on `node` (e.g. `warren-c1@localhost`) from now on.
pub(crate) fn use_node(node: &str) {
    let _ = NODE.set(node.to_owned());
}

/// A vhost made for this run, deleted when dropped.
#[derive(Debug)]
pub(crate) struct Vhost {
    name: String,
    url: String,
}

impl Vhost {
    /// Makes `warren-bench-<uuid>` on the broker that `rabbitmqctl` manages and gives the user of `base` (an
    /// `amqp://user:password@host:port/vhost` URL) every permission on it; the URL of the new vhost replaces the
    /// vhost of `base`.
    pub(crate) fn create(base: &str) -> Result<Vhost, String> {
        let (prefix, user, query) = split_url(base)?;
        let name = format!("warren-bench-{}", uuid::Uuid::now_v7().simple());
        rabbitmqctl(&["add_vhost", &name])?;
        // From here on, dropping `vhost` deletes it.
        let vhost = Vhost { url: format!("{prefix}/{name}{query}"), name };
        rabbitmqctl(&["set_permissions", "-p", &vhost.name, &user, ".*", ".*", ".*"])?;
        Ok(vhost)
    }

    /// The vhost's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The URL of the broker with this vhost.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Deletes vhost `name` and everything in it, saying so on stderr if that fails.
pub(crate) fn delete(name: &str) {
    if let Err(problem) = rabbitmqctl(&["delete_vhost", name]) {
        eprintln!(
            "warren-bench: the benchmark's vhost is left behind: {problem}; delete it with `rabbitmqctl delete_vhost {name}`"
        );
    }
}

/// `amqp://user:pass@host:port/vhost?query` → (`amqp://user:pass@host:port`, `user`, `?query`). The user is
/// percent-decoded; without one it is lapin's default, guest.
fn split_url(url: &str) -> Result<(String, String, String), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        "RABBITMQ_URL is amqp://user:password@host:port/vhost, and this one has no \"://\"".to_owned()
    })?;
    let query = rest.find('?').map_or("", |at| &rest[at..]);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let user = authority.rsplit_once('@').map_or("guest", |(userinfo, _)| userinfo.split(':').next().unwrap_or(""));
    let user = if user.is_empty() { "guest".to_owned() } else { percent_decoded(user) };
    Ok((format!("{scheme}://{authority}"), user, query.to_owned()))
}

/// `text` with its `%XX` escapes decoded (a malformed one is kept as it is).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        let escaped = hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], escaped) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `rabbitmqctl args`; what went wrong, and what to do about it, if it did not succeed.
fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let mut all: Vec<&str> = NODE.get().map(|node| vec!["-n", node.as_str()]).unwrap_or_default();
    all.extend_from_slice(args);
    let args = all.as_slice();
    let command = format!("rabbitmqctl {}", args.join(" "));
    let help = "the benchmark makes a private vhost with rabbitmqctl, so run it on the broker's host (with the \
                rights to run rabbitmqctl there), or install rabbitmq-server, or run only the in-memory workload \
                with --memory";
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|error| format!("could not run `{command}` ({error}): {help}"))?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(if output.stderr.is_empty() { &output.stdout } else { &output.stderr });
    Err(format!("`{command}` failed ({}): {}: {help}", output.status, said.trim()))
}

#[cfg(test)]
mod tests {
    use super::{percent_decoded, split_url};

    #[test]
    fn splits_urls() {
        let split = |url: &str| split_url(url).expect("splits");
        assert_eq!(
            split("amqp://guest:guest@127.0.0.1:5672/%2f"),
            ("amqp://guest:guest@127.0.0.1:5672".into(), "guest".into(), String::new())
        );
        assert_eq!(
            split("amqps://b%40x:p@host/vh?heartbeat=10"),
            ("amqps://b%40x:p@host".into(), "b@x".into(), "?heartbeat=10".into())
        );
        assert_eq!(
            split("amqp://host:5672?frame_max=8192"),
            ("amqp://host:5672".into(), "guest".into(), "?frame_max=8192".into())
        );
        assert!(split_url("localhost").is_err());
        assert_eq!(percent_decoded("a%2"), "a%2");
        assert_eq!(percent_decoded("a%+1b%41"), "a%+1bA");
    }
}
