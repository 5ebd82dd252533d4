//! Finding items by name: the full proto name (`gametrade.v1.UserRegistered`, `at.v1.IntSummator/IntSum`), or a
//! short one (`UserRegistered`, `IntSummator/IntSum`) when exactly one item has it; otherwise the closest names.

use prost_reflect::MessageDescriptor;

use crate::{Catalog, Error, Event, Exchange, Method, Service, Task};

/// The most names a lookup compares with: far above any set of contracts, bounding the work on a long list.
const MAX_COMPARED: usize = 10_000;
/// The longest name looked up; a longer one cannot be a proto name anyone wrote.
const MAX_NAME_LEN: usize = 1_024;

/// Anything `warren describe` can describe.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// An event.
    Event(&'a Event),
    /// A task.
    Task(&'a Task),
    /// An RPC service.
    Service(&'a Service),
    /// One method of a service.
    Method(&'a Service, &'a Method),
    /// An exchange.
    Exchange(&'a Exchange),
    /// Any other message (a request, a response, an error, a nested message).
    Message(MessageDescriptor),
}

impl Catalog {
    /// The event named `name`.
    pub fn event(&self, name: &str) -> Result<&Event, Error> {
        find("event", name, self.events().map(|e| (e.full_name.as_str(), e)))
    }

    /// The task named `name`.
    pub fn task(&self, name: &str) -> Result<&Task, Error> {
        find("task", name, self.tasks().map(|t| (t.full_name.as_str(), t)))
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Result<&Service, Error> {
        find("service", name, self.services().map(|s| (s.full_name.as_str(), s)))
    }

    /// The method `Service/Method` (the service by full or short name; `.` also separates them).
    pub fn method(&self, name: &str) -> Result<(&Service, &Method), Error> {
        let paths: Vec<(String, (&Service, &Method))> = self
            .services()
            .flat_map(|s| s.methods.iter().map(move |m| (format!("{}/{}", s.full_name, m.name), (s, m))))
            .collect();
        let name = name.trim_start_matches('/');
        let name = match name.split_once('/') {
            Some(_) => name.to_owned(),
            // `at.v1.IntSummator.IntSum`, as grpcurl accepts it.
            None => match name.rsplit_once('.') {
                Some((service, method)) => format!("{service}/{method}"),
                None => name.to_owned(),
            },
        };
        find("method", &name, paths.iter().map(|(path, item)| (path.as_str(), *item)))
    }

    /// The message named `name`, any message of the contracts or their imports.
    pub fn message(&self, name: &str) -> Result<MessageDescriptor, Error> {
        let pool = self.contracts.pool();
        let messages: Vec<MessageDescriptor> = pool.all_messages().filter(|m| !m.is_map_entry()).collect();
        find("message", name, messages.iter().map(|m| (m.full_name(), m.clone())))
    }

    /// Whatever is named `name`: an event, task, service, method, exchange or message, tried in that order.
    pub fn item(&self, name: &str) -> Result<Item<'_>, Error> {
        if let Ok(event) = self.event(name) {
            return Ok(Item::Event(event));
        }
        if let Ok(task) = self.task(name) {
            return Ok(Item::Task(task));
        }
        if let Ok(service) = self.service(name) {
            return Ok(Item::Service(service));
        }
        if name.contains('/')
            && let Ok((service, method)) = self.method(name)
        {
            return Ok(Item::Method(service, method));
        }
        if let Some(exchange) = self.contracts.exchanges.get(name) {
            return Ok(Item::Exchange(exchange));
        }
        match self.message(name) {
            Ok(message) => Ok(Item::Message(message)),
            Err(Error::Ambiguous { name, candidates }) => Err(Error::Ambiguous { name, candidates }),
            Err(_) => Err(not_found("event, task, service, method, exchange or message", name, self.all_names())),
        }
    }

    fn all_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.events().map(|e| e.full_name.clone()).collect();
        names.extend(self.tasks().map(|t| t.full_name.clone()));
        names.extend(self.services().map(|s| s.full_name.clone()));
        names
            .extend(self.services().flat_map(|s| s.methods.iter().map(move |m| format!("{}/{}", s.full_name, m.name))));
        names.extend(self.contracts.exchanges.keys().cloned());
        names.extend(self.contracts.pool().all_messages().map(|m| m.full_name().to_owned()));
        names
    }
}

/// The item whose full name is `name`, or the only one whose name ends with `.name` (or `/name` for methods'
/// service part).
fn find<'a, T: Clone>(what: &'static str, name: &str, items: impl Iterator<Item = (&'a str, T)>) -> Result<T, Error> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::NotFound { what, name: cut(name), suggestions: Vec::new() });
    }
    let items: Vec<(&str, T)> = items.take(MAX_COMPARED).collect();
    if let Some((_, item)) = items.iter().find(|(full, _)| *full == name) {
        return Ok(item.clone());
    }
    let short: Vec<&(&str, T)> = items.iter().filter(|(full, _)| is_short_name(full, name)).collect();
    match short.as_slice() {
        [(_, item)] => Ok(item.clone()),
        [] => Err(not_found(what, name, items.iter().map(|(full, _)| (*full).to_owned()).collect())),
        many => Err(Error::Ambiguous {
            name: name.to_owned(),
            candidates: many.iter().map(|(full, _)| (*full).to_owned()).collect(),
        }),
    }
}

/// Whether `short` names `full` without its package: `UserRegistered` for `gametrade.v1.UserRegistered`,
/// `IntSummator/IntSum` for `at.v1.IntSummator/IntSum`.
fn is_short_name(full: &str, short: &str) -> bool {
    full.strip_suffix(short).is_some_and(|package| package.ends_with('.'))
}

pub(crate) fn not_found(what: &'static str, name: &str, candidates: Vec<String>) -> Error {
    Error::NotFound { what, name: cut(name), suggestions: closest(name, &candidates) }
}

/// A name or text from the input as an error shows it: at most 200 characters, then `…` (serde's messages
/// quote the value they refuse, which can be megabytes long).
pub(crate) fn cut(name: &str) -> String {
    match name.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_owned(),
    }
}

/// Up to three of `candidates` closest to `name` (by edit distance to the full name or to its last part), close
/// enough to be a typo.
fn closest(name: &str, candidates: &[String]) -> Vec<String> {
    let name = name.to_ascii_lowercase();
    let mut scored: Vec<(usize, &String)> = candidates
        .iter()
        .map(|candidate| {
            let lower = candidate.to_ascii_lowercase();
            let last = lower.rsplit(['.', '/']).next().unwrap_or(&lower).to_owned();
            let method = lower.rsplit_once('.').map(|(_, rest)| rest.to_owned()).unwrap_or_default();
            let distance = distance(&name, &lower).min(distance(&name, &last)).min(distance(&name, &method));
            (distance, candidate)
        })
        .filter(|(distance, candidate)| *distance <= (candidate.len().min(name.len()) / 3).max(2))
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, candidate)| candidate.clone()).collect()
}

/// Levenshtein distance, on bytes (names are ASCII); bounded by [`MAX_NAME_LEN`] before it gets here.
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(x != y);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_the_part_after_the_package() {
        assert!(is_short_name("gametrade.v1.UserRegistered", "UserRegistered"));
        assert!(is_short_name("at.v1.IntSummator/IntSum", "IntSummator/IntSum"));
        assert!(!is_short_name("gametrade.v1.UserRegistered", "Registered"));
    }

    #[test]
    fn typos_find_the_closest_names() {
        let names = ["gametrade.v1.UserRegistered".to_owned(), "gametrade.v1.UserActivated".to_owned()];
        assert_eq!(closest("UserRegisterd", &names), vec!["gametrade.v1.UserRegistered"]);
        assert!(closest("Nothing", &names).is_empty());
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
