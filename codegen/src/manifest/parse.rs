//! Reading the manifest's text form back, as `check-compat` reads a baseline (see `render.rs` for the format).

use std::collections::{BTreeMap, BTreeSet};
use std::num::ParseIntError;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    Consumer, Enum, EnumValue, Event, Exchange, FORMAT, FORMAT_VERSION, Field, FieldRules, File, Label, Manifest,
    Message, Method, PRIORITIES, Queue, Reserved, RetryPolicy, Service, Task, WireFormat,
};
use crate::compat::{Rule, UnknownRule};
use crate::error::Location;
use crate::model::ExchangeKind;

impl Manifest {
    /// Reads a manifest written by [`Manifest::render`], of this version of Warren or an older one: a file of
    /// an older format version reads as what it records (its [`Manifest::format_version`] says which).
    pub fn parse(text: &str) -> Result<Manifest, ParseError> {
        let mut manifest = Manifest::default();
        let mut seen_format = false;
        let mut item: Option<Item> = None;
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
                continue;
            }
            if !seen_format {
                let version = raw.trim().strip_prefix(FORMAT).and_then(|v| v.strip_prefix(' ')?.parse::<u32>().ok());
                manifest.format_version = match version {
                    Some(version @ 1..=FORMAT_VERSION) => version,
                    Some(version) if version > FORMAT_VERSION => {
                        return Err(ParseError { line: number, kind: ParseErrorKind::NewerFormat(version) });
                    }
                    _ => return Err(ParseError { line: number, kind: ParseErrorKind::Format(raw.trim().to_owned()) }),
                };
                seen_format = true;
                continue;
            }
            let tokens = tokenize(raw).map_err(|kind| ParseError { line: number, kind })?;
            if raw.starts_with(char::is_whitespace) {
                let Some(current) = item.as_mut() else {
                    return Err(ParseError { line: number, kind: ParseErrorKind::Orphan });
                };
                current.properties.push(Property { line: number, tokens });
            } else {
                if let Some(done) = item.take() {
                    done.add_to(&mut manifest)?;
                }
                let [kind, name] = tokens.as_slice() else {
                    return Err(ParseError { line: number, kind: ParseErrorKind::Header(raw.to_owned()) });
                };
                item = Some(Item {
                    kind: kind.text.clone(),
                    name: name.text.clone(),
                    line: number,
                    properties: Vec::new(),
                });
            }
        }
        if let Some(done) = item.take() {
            done.add_to(&mut manifest)?;
        }
        if !seen_format {
            return Err(ParseError { line: 0, kind: ParseErrorKind::Format(String::new()) });
        }
        Ok(manifest)
    }
}

/// A manifest file that does not read as one.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line of the problem (0: the whole file).
    pub line: usize,
    /// What is wrong.
    #[source]
    pub kind: ParseErrorKind,
}

/// What is wrong in a manifest file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The file does not start with a format line (`warren-manifest <version>`).
    #[error("expected `{FORMAT} {FORMAT_VERSION}` (or an older version), found {0:?}: is this a Warren manifest?")]
    Format(String),
    /// The file is of a newer format version than this Warren reads.
    #[error(
        "the manifest is format version {0}, newer than this Warren reads ({FORMAT_VERSION}): update \
         warren-codegen, or compare with a baseline written by this version"
    )]
    NewerFormat(u32),
    /// An item header is not `<kind> <name>`.
    #[error("expected an item header `<kind> <name>`, found {0:?}")]
    Header(String),
    /// An indented line before any item.
    #[error("a property line before any item")]
    Orphan,
    /// A quoted value that does not end.
    #[error("unterminated quoted value")]
    Unterminated,
    /// An item kind this version does not know.
    #[error("unknown item kind \"{0}\"")]
    UnknownItem(String),
    /// A property its item does not have, or with the wrong number of values.
    #[error("unexpected property {0:?}")]
    Property(String),
    /// A required property is missing.
    #[error("{item} has no `{property}` line")]
    Missing {
        /// The item, e.g. `message at.v1.IntSumRequest`.
        item: String,
        /// The property.
        property: &'static str,
    },
    /// A value that should be a number is not.
    #[error("{text:?} is not a number")]
    Number {
        /// The text.
        text: String,
        /// Why it does not parse.
        #[source]
        source: ParseIntError,
    },
    /// A value outside its set, e.g. an exchange kind.
    #[error("{text:?} is not a valid {what}")]
    Value {
        /// What was expected.
        what: &'static str,
        /// The text.
        text: String,
    },
    /// An `allow` line naming no rule.
    #[error(transparent)]
    Rule(#[from] UnknownRule),
}

/// `rules=required,min=1,max=10,min-len=1,max-len=64,defined` (see `render.rs`), without the `rules=`.
fn parse_rules(text: &str) -> Option<FieldRules> {
    let mut rules = FieldRules::default();
    for rule in text.split(',') {
        match rule.split_once('=') {
            None if rule == "required" => rules.required = true,
            None if rule == "defined" => rules.defined = true,
            Some(("min", value)) => rules.min = Some(value.parse().ok()?),
            Some(("max", value)) => rules.max = Some(value.parse().ok()?),
            Some(("min-len", value)) => rules.min_len = Some(value.parse().ok()?),
            Some(("max-len", value)) => rules.max_len = Some(value.parse().ok()?),
            _ => return None,
        }
    }
    Some(rules)
}

fn parse_label(text: &str) -> Option<Label> {
    Some(match text {
        "singular" => Label::Singular,
        "optional" => Label::Optional,
        "required" => Label::Required,
        "repeated" => Label::Repeated,
        "map" => Label::Map,
        _ => Label::Oneof(text.strip_prefix("oneof:")?.to_owned()),
    })
}

/// One whitespace-separated value of a line; a quoted part may hold anything.
#[derive(Debug)]
struct Token {
    text: String,
    quoted: bool,
}

fn tokenize(line: &str) -> Result<Vec<Token>, ParseErrorKind> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(tokens);
        }
        let mut token = Token { text: String::new(), quoted: false };
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            if c != '"' {
                token.text.push(c);
                continue;
            }
            token.quoted = true;
            loop {
                match chars.next() {
                    None => return Err(ParseErrorKind::Unterminated),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => token.text.push('\n'),
                        Some(c) => token.text.push(c),
                        None => return Err(ParseErrorKind::Unterminated),
                    },
                    Some(c) => token.text.push(c),
                }
            }
        }
        tokens.push(token);
    }
}

/// An item read from the text, before it is typed.
struct Item {
    kind: String,
    name: String,
    line: usize,
    properties: Vec<Property>,
}

struct Property {
    line: usize,
    tokens: Vec<Token>,
}

impl Property {
    fn key(&self) -> &str {
        self.tokens.first().map_or("", |t| t.text.as_str())
    }

    fn values(&self) -> Vec<&str> {
        self.tokens[1..].iter().map(|t| t.text.as_str()).collect()
    }

    fn error(&self, kind: ParseErrorKind) -> ParseError {
        ParseError { line: self.line, kind }
    }

    fn unexpected(&self) -> ParseError {
        let text = self.tokens.iter().map(|t| t.text.as_str()).collect::<Vec<_>>().join(" ");
        self.error(ParseErrorKind::Property(text))
    }

    /// The single value of the property.
    fn value(&self) -> Result<&str, ParseError> {
        match self.values().as_slice() {
            [value] => Ok(value),
            _ => Err(self.unexpected()),
        }
    }

    fn number<T: std::str::FromStr<Err = ParseIntError>>(&self, text: &str) -> Result<T, ParseError> {
        text.parse().map_err(|source| self.error(ParseErrorKind::Number { text: text.to_owned(), source }))
    }

    fn boolean(&self) -> Result<bool, ParseError> {
        match self.value()? {
            "true" => Ok(true),
            "false" => Ok(false),
            text => Err(self.error(ParseErrorKind::Value { what: "boolean", text: text.to_owned() })),
        }
    }

    fn location(&self) -> Result<Location, ParseError> {
        let text = self.value()?;
        let (file, line) = text.rsplit_once(':').ok_or_else(|| self.unexpected())?;
        Ok(Location { file: PathBuf::from(file), line: self.number(line)?, column: 0 })
    }

    fn kind(&self) -> Result<ExchangeKind, ParseError> {
        Ok(match self.value()? {
            "direct" => ExchangeKind::Direct,
            "topic" => ExchangeKind::Topic,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            text => return Err(self.error(ParseErrorKind::Value { what: "exchange kind", text: text.to_owned() })),
        })
    }

    fn rule(&self) -> Result<Rule, ParseError> {
        self.value()?.parse().map_err(|e| self.error(ParseErrorKind::Rule(e)))
    }

    fn reserved(&self, reserved: &mut Reserved) -> Result<(), ParseError> {
        match self.key() {
            "reserved" => {
                let text = self.value()?;
                let (start, end) = text.split_once("..").unwrap_or((text, text));
                reserved.ranges.push(self.number(start)?..=self.number(end)?);
            }
            _ => {
                reserved.names.insert(self.value()?.to_owned());
            }
        }
        Ok(())
    }

    /// `retry default` or `retry max-attempts=… initial-backoff-ms=… multiplier=… max-backoff-ms=…`.
    fn retry(&self) -> Result<Option<RetryPolicy>, ParseError> {
        match self.values().as_slice() {
            ["default"] => Ok(None),
            [attempts, initial, multiplier, max] => Ok(Some(RetryPolicy::new(
                self.number(self.keyed(attempts, "max-attempts")?)?,
                Duration::from_millis(self.number(self.keyed(initial, "initial-backoff-ms")?)?),
                self.number(self.keyed(multiplier, "multiplier")?)?,
                Duration::from_millis(self.number(self.keyed(max, "max-backoff-ms")?)?),
            ))),
            _ => Err(self.unexpected()),
        }
    }

    /// `wire-format protobuf` or `wire-format json`.
    fn wire_format(&self) -> Result<WireFormat, ParseError> {
        match self.value()? {
            "protobuf" => Ok(WireFormat::Protobuf),
            "json" => Ok(WireFormat::Json),
            text => Err(self.error(ParseErrorKind::Value { what: "wire format", text: text.to_owned() })),
        }
    }

    /// `queue-type quorum` or `queue-type classic`: whether it is quorum.
    fn quorum(&self) -> Result<bool, ParseError> {
        match self.value()? {
            "quorum" => Ok(true),
            "classic" => Ok(false),
            text => Err(self.error(ParseErrorKind::Value { what: "queue type", text: text.to_owned() })),
        }
    }

    /// `key=value` → `value`.
    fn keyed<'a>(&self, token: &'a str, key: &str) -> Result<&'a str, ParseError> {
        token.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')).ok_or_else(|| self.unexpected())
    }
}

impl Item {
    fn title(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }

    fn missing(&self, property: &'static str) -> ParseError {
        ParseError { line: self.line, kind: ParseErrorKind::Missing { item: self.title(), property } }
    }

    fn add_to(self, manifest: &mut Manifest) -> Result<(), ParseError> {
        match self.kind.as_str() {
            "file" => {
                let mut file = File::default();
                for p in &self.properties {
                    match p.key() {
                        "package" => file.package = p.value()?.to_owned(),
                        "allow" => {
                            file.allow.insert(p.rule()?);
                        }
                        _ => return Err(p.unexpected()),
                    }
                }
                manifest.files.insert(self.name, file);
            }
            "exchange" => {
                let (mut location, mut kind, mut durable, mut auto_delete) = (None, None, true, false);
                for p in &self.properties {
                    match p.key() {
                        "at" => location = Some(p.location()?),
                        "kind" => kind = Some(p.kind()?),
                        "durable" => durable = p.boolean()?,
                        "auto-delete" => auto_delete = p.boolean()?,
                        _ => return Err(p.unexpected()),
                    }
                }
                let exchange = Exchange {
                    kind: kind.ok_or_else(|| self.missing("kind"))?,
                    durable,
                    auto_delete,
                    location: location.ok_or_else(|| self.missing("at"))?,
                };
                manifest.exchanges.insert(self.name, exchange);
            }
            "message" => {
                let (mut location, mut fields, mut reserved, mut allow) =
                    (None, BTreeMap::new(), Reserved::default(), BTreeSet::new());
                for p in &self.properties {
                    match (p.key(), p.values().as_slice()) {
                        ("at", _) => location = Some(p.location()?),
                        ("field", [number, name, label, r#type, json, rules @ ..]) if rules.len() <= 1 => {
                            let rules = match rules.first() {
                                None => FieldRules::default(),
                                Some(text) => parse_rules(p.keyed(text, "rules")?).ok_or_else(|| {
                                    p.error(ParseErrorKind::Value { what: "rule list", text: (*text).to_owned() })
                                })?,
                            };
                            let field = Field {
                                name: (*name).to_owned(),
                                label: parse_label(label).ok_or_else(|| {
                                    p.error(ParseErrorKind::Value { what: "label", text: (*label).to_owned() })
                                })?,
                                r#type: (*r#type).to_owned(),
                                json_name: p.keyed(json, "json")?.to_owned(),
                                rules,
                                location: None,
                            };
                            fields.insert(p.number(number)?, field);
                        }
                        ("reserved" | "reserved-name", _) => p.reserved(&mut reserved)?,
                        ("allow", _) => {
                            allow.insert(p.rule()?);
                        }
                        _ => return Err(p.unexpected()),
                    }
                }
                let location = location.ok_or_else(|| self.missing("at"))?;
                manifest.messages.insert(self.name, Message { fields, reserved, allow, location });
            }
            "enum" => {
                let (mut location, mut values, mut reserved, mut allow) =
                    (None, Vec::new(), Reserved::default(), BTreeSet::new());
                for p in &self.properties {
                    match (p.key(), p.values().as_slice()) {
                        ("at", _) => location = Some(p.location()?),
                        ("value", [number, name]) => {
                            values.push(EnumValue {
                                number: p.number(number)?,
                                name: (*name).to_owned(),
                                location: None,
                            });
                        }
                        ("reserved" | "reserved-name", _) => p.reserved(&mut reserved)?,
                        ("allow", _) => {
                            allow.insert(p.rule()?);
                        }
                        _ => return Err(p.unexpected()),
                    }
                }
                let location = location.ok_or_else(|| self.missing("at"))?;
                manifest.enums.insert(self.name, Enum { values, reserved, allow, location });
            }
            "event" => {
                let (mut location, mut exchange, mut kind, mut routing_key, mut priority) =
                    (None, None, None, None, None);
                let (mut retry, mut quorum, mut wire_format) = (None, false, WireFormat::default());
                for p in &self.properties {
                    match p.key() {
                        "at" => location = Some(p.location()?),
                        "exchange" => exchange = Some(p.value()?.to_owned()),
                        "kind" => kind = Some(p.kind()?),
                        "routing-key" => routing_key = Some(p.value()?.to_owned()),
                        "priority" => {
                            let text = p.value()?;
                            priority = match PRIORITIES.iter().position(|name| *name == text) {
                                Some(index) => Some(index as u8),
                                None if text == "none" => None,
                                None => {
                                    let text = text.to_owned();
                                    return Err(p.error(ParseErrorKind::Value { what: "priority", text }));
                                }
                            }
                        }
                        "retry" => retry = p.retry()?,
                        "queue-type" => quorum = p.quorum()?,
                        "wire-format" => wire_format = p.wire_format()?,
                        _ => return Err(p.unexpected()),
                    }
                }
                let event = Event {
                    exchange: exchange.ok_or_else(|| self.missing("exchange"))?,
                    kind: kind.ok_or_else(|| self.missing("kind"))?,
                    routing_key: routing_key.ok_or_else(|| self.missing("routing-key"))?,
                    priority,
                    retry,
                    quorum,
                    wire_format,
                    location: location.ok_or_else(|| self.missing("at"))?,
                };
                manifest.events.insert(self.name, event);
            }
            "task" => {
                let (mut location, mut queue, mut prefetch, mut retry, mut quorum, mut wire_format) =
                    (None, None, None, None, false, WireFormat::default());
                for p in &self.properties {
                    match p.key() {
                        "at" => location = Some(p.location()?),
                        "queue" => queue = Some(p.value()?.to_owned()),
                        "prefetch" => {
                            prefetch = match p.value()? {
                                "default" => None,
                                text => Some(p.number(text)?),
                            }
                        }
                        "retry" => retry = p.retry()?,
                        "queue-type" => quorum = p.quorum()?,
                        "wire-format" => wire_format = p.wire_format()?,
                        _ => return Err(p.unexpected()),
                    }
                }
                let task = Task {
                    queue: queue.ok_or_else(|| self.missing("queue"))?,
                    prefetch,
                    retry,
                    quorum,
                    wire_format,
                    location: location.ok_or_else(|| self.missing("at"))?,
                };
                manifest.tasks.insert(self.name, task);
            }
            "queue" => {
                let mut events = BTreeSet::new();
                let (mut task, mut service) = (None, None);
                let mut queue = Queue {
                    consumer: Consumer::Events(BTreeSet::new()),
                    durable: true,
                    arguments: BTreeMap::new(),
                    bindings: BTreeSet::new(),
                    dead_letter_queue: None,
                    retry: None,
                    retry_queues: Vec::new(),
                };
                for p in &self.properties {
                    match (p.key(), p.values().as_slice()) {
                        ("consumes", _) => {
                            events.insert(p.value()?.to_owned());
                        }
                        ("task", _) => task = Some(p.value()?.to_owned()),
                        ("serves", _) => service = Some(p.value()?.to_owned()),
                        ("durable", _) => queue.durable = p.boolean()?,
                        ("argument", [key, _]) => {
                            let value = &p.tokens[2];
                            let value = if value.quoted {
                                super::Argument::Str(value.text.clone())
                            } else {
                                super::Argument::Int(p.number(&value.text)?)
                            };
                            queue.arguments.insert((*key).to_owned(), value);
                        }
                        ("bind", [exchange, key]) => {
                            queue.bindings.insert(((*exchange).into(), (*key).into()));
                        }
                        ("dead-letter-queue", _) => queue.dead_letter_queue = Some(p.value()?.to_owned()),
                        ("retry", _) => queue.retry = p.retry()?,
                        ("retry-queue", _) => queue.retry_queues.push(p.value()?.to_owned()),
                        _ => return Err(p.unexpected()),
                    }
                }
                queue.consumer = match (service, task) {
                    (Some(service), _) => Consumer::Service(service),
                    (None, Some(task)) => Consumer::Task(task),
                    (None, None) => Consumer::Events(events),
                };
                manifest.queues.insert(self.name, queue);
            }
            "service" => {
                let (mut location, mut queue, mut default_timeout_ms, mut methods, mut allow) =
                    (None, None, None, BTreeMap::new(), BTreeSet::new());
                for p in &self.properties {
                    match (p.key(), p.values().as_slice()) {
                        ("at", _) => location = Some(p.location()?),
                        ("queue", _) => queue = Some(p.value()?.to_owned()),
                        ("default-timeout-ms", _) => default_timeout_ms = Some(p.number(p.value()?)?),
                        ("method", [name, request, response, timeout]) => {
                            let method = Method {
                                request: p.keyed(request, "request")?.to_owned(),
                                response: p.keyed(response, "response")?.to_owned(),
                                timeout_ms: p.number(p.keyed(timeout, "timeout-ms")?)?,
                                location: None,
                            };
                            methods.insert((*name).to_owned(), method);
                        }
                        ("allow", _) => {
                            allow.insert(p.rule()?);
                        }
                        _ => return Err(p.unexpected()),
                    }
                }
                let service = Service {
                    queue: queue.ok_or_else(|| self.missing("queue"))?,
                    default_timeout_ms: default_timeout_ms.ok_or_else(|| self.missing("default-timeout-ms"))?,
                    methods,
                    allow,
                    location: location.ok_or_else(|| self.missing("at"))?,
                };
                manifest.services.insert(self.name, service);
            }
            _ => return Err(ParseError { line: self.line, kind: ParseErrorKind::UnknownItem(self.kind) }),
        }
        Ok(())
    }
}
