//! Every message of the requested packages: its schema fingerprint and its validation rules
//! (`[(warren.rules) = { ... }]` on fields), checked against the field types here so that the generated
//! checks always compile and mean something.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{Cardinality, DescriptorPool, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor};

use super::options::extension;
use crate::compile::SourceInfo;
use crate::error::{Error, Location, Problems, Result};
use crate::ident;
use crate::options_pb as pb;

const FIELD_OPTIONS: i32 = 8;
const RULES_EXT: i32 = 50106;

/// A message the generated crate defines; it gets a `Payload` impl.
#[derive(Debug, Clone)]
pub struct Message {
    /// Full proto name.
    pub full_name: String,
    /// Rust path relative to the package module.
    pub rust_path: String,
    /// Hash of the message's schema, see `fingerprint`.
    pub fingerprint: String,
    /// Fields with rules, or holding messages with rules.
    pub checks: Vec<FieldCheck>,
}

/// What a field's Rust value is.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldKind {
    /// `String`.
    Text,
    /// `Vec<u8>`.
    Bytes,
    /// `bool`.
    Bool,
    /// An integer of the named Rust type.
    Int(&'static str),
    /// A float of the named Rust type.
    Float(&'static str),
    /// An `i32` holding a value of the enum at this Rust path.
    Enum(String),
    /// A message at this Rust path.
    Message(String),
}

/// How a field holds its values, as prost generates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `T`.
    Plain,
    /// `Option<T>`: a message field, or a proto3 `optional` scalar.
    Optional,
    /// `Vec<T>`.
    Repeated,
    /// A map.
    Map,
}

/// The validation rules of a field, as `[(warren.rules) = { ... }]` declares them (see
/// `proto/warren/options.proto`), checked to fit its type: receivers dead-letter (or answer `INVALID_ARGUMENT`
/// to) a message that breaks one, and senders refuse to send it.
///
/// Bounds compare bit for bit, so that the type can be [`Eq`] (a `nan` bound equals itself); the compatibility
/// rules compare them as numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules {
    /// Set / non-empty / non-zero.
    pub required: bool,
    /// Smallest allowed number.
    pub min: Option<f64>,
    /// Largest allowed number.
    pub max: Option<f64>,
    /// Fewest characters, bytes or items.
    pub min_len: Option<u32>,
    /// Most characters, bytes or items.
    pub max_len: Option<u32>,
    /// Enum values must be declared ones.
    pub defined: bool,
}

impl Rules {
    /// What a violation of `required` says; generated checks and `warren-reflect`'s say the same.
    pub const REQUIRED: &'static str = "is required (must be set, non-empty and non-zero)";

    /// What a value below `min` breaks.
    pub fn below_min(min: f64) -> String {
        format!("must be at least {min}")
    }

    /// What a value above `max` breaks.
    pub fn above_max(max: f64) -> String {
        format!("must be at most {max}")
    }

    /// What a length below `min` (in `unit`: characters, bytes or items) breaks.
    pub fn too_short(min: u32, unit: &str) -> String {
        format!("must have at least {min} {unit}")
    }

    /// What a length above `max` breaks.
    pub fn too_long(max: u32, unit: &str) -> String {
        format!("must have at most {max} {unit}")
    }

    /// What an undeclared value of enum `name` breaks.
    pub fn undefined(name: &str) -> String {
        format!("must be a value of enum {name}")
    }

    /// Whether the field has no rules at all.
    pub fn is_empty(&self) -> bool {
        *self == Rules::default()
    }
}

impl PartialEq for Rules {
    fn eq(&self, other: &Rules) -> bool {
        let bits = |bound: Option<f64>| bound.map(f64::to_bits);
        (self.required, bits(self.min), bits(self.max), self.min_len, self.max_len, self.defined)
            == (other.required, bits(other.min), bits(other.max), other.min_len, other.max_len, other.defined)
    }
}

impl Eq for Rules {}

/// One field the generated `check` looks at.
#[derive(Debug, Clone)]
pub struct FieldCheck {
    /// Proto name, used in violation messages.
    pub name: String,
    /// Rust field name.
    pub rust_name: String,
    /// Its type.
    pub kind: FieldKind,
    /// How it holds values.
    pub shape: Shape,
    /// Its own rules.
    pub rules: Rules,
    /// Whether its message values have checks of their own to run.
    pub nested: bool,
}

/// Reads every message of `files` (with rules and fingerprints), grouped by package. Rules that cannot be
/// read or do not fit their field are kept in `problems` and left out.
pub(crate) fn read(
    pool: &DescriptorPool,
    files: &[(String, SourceInfo<'_>)],
    rules_ext: &ExtensionDescriptor,
    problems: &mut Problems,
) -> BTreeMap<String, Vec<Message>> {
    let mut messages: Vec<(String, MessageDescriptor, Vec<FieldCheck>)> = Vec::new();
    for (name, info) in files {
        let file = pool.get_file_by_name(name).expect("requested files are in the pool");
        let mut todo: Vec<MessageDescriptor> = file.messages().collect();
        todo.reverse();
        while let Some(message) = todo.pop() {
            let mut children: Vec<_> = message.child_messages().filter(|m| !m.is_map_entry()).collect();
            children.reverse();
            todo.extend(children);
            let checks = own_checks(&message, info, rules_ext, problems);
            messages.push((file.package_name().to_owned(), message, checks));
        }
    }
    // Which messages have something to check, directly or in message fields (to any depth).
    let generated: BTreeSet<String> = messages.iter().map(|(_, m, _)| m.full_name().to_owned()).collect();
    let mut checked: BTreeSet<String> =
        messages.iter().filter(|(_, _, c)| !c.is_empty()).map(|(_, m, _)| m.full_name().to_owned()).collect();
    loop {
        let before = checked.len();
        for (_, message, _) in &messages {
            if message_fields(message).any(|(_, target)| checked.contains(target.full_name())) {
                checked.insert(message.full_name().to_owned());
            }
        }
        if checked.len() == before {
            break;
        }
    }
    let mut out: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    for (package, message, mut checks) in messages {
        for (field, target) in message_fields(&message) {
            if !generated.contains(target.full_name()) || !checked.contains(target.full_name()) {
                continue;
            }
            match checks.iter_mut().find(|c| c.name == field.name()) {
                Some(check) => check.nested = true,
                None => {
                    let (kind, shape) = kind_and_shape(&package, &field);
                    checks.push(FieldCheck {
                        name: field.name().to_owned(),
                        rust_name: ident::field_name(field.name()),
                        kind,
                        shape,
                        rules: Rules::default(),
                        nested: true,
                    });
                }
            }
        }
        out.entry(package.clone()).or_default().push(Message {
            full_name: message.full_name().to_owned(),
            rust_path: ident::rust_type_path(&package, &message),
            fingerprint: fingerprint(&message),
            checks,
        });
    }
    out
}

/// The singular and repeated (not map, not oneof) message fields of `message`, with their types. A proto3
/// `optional` message field is one: its oneof is synthetic, and prost makes it an `Option` as any other.
fn message_fields(message: &MessageDescriptor) -> impl Iterator<Item = (FieldDescriptor, MessageDescriptor)> + '_ {
    let in_oneof = |f: &FieldDescriptor| f.containing_oneof().is_some_and(|o| !o.is_synthetic());
    message.fields().filter(move |f| !f.is_map() && !in_oneof(f)).filter_map(|f| match f.kind() {
        Kind::Message(target) => Some((f, target)),
        _ => None,
    })
}

fn kind_and_shape(package: &str, field: &FieldDescriptor) -> (FieldKind, Shape) {
    let kind = match field.kind() {
        Kind::String => FieldKind::Text,
        Kind::Bytes => FieldKind::Bytes,
        Kind::Bool => FieldKind::Bool,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => FieldKind::Int("i32"),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => FieldKind::Int("i64"),
        Kind::Uint32 | Kind::Fixed32 => FieldKind::Int("u32"),
        Kind::Uint64 | Kind::Fixed64 => FieldKind::Int("u64"),
        Kind::Float => FieldKind::Float("f32"),
        Kind::Double => FieldKind::Float("f64"),
        Kind::Enum(e) => FieldKind::Enum(ident::rust_enum_path(package, &e)),
        Kind::Message(m) => FieldKind::Message(ident::rust_type_path(package, &m)),
    };
    let shape = if field.is_map() {
        Shape::Map
    } else if field.is_list() {
        Shape::Repeated
    } else if matches!(field.kind(), Kind::Message(_)) || field.supports_presence() {
        Shape::Optional
    } else {
        Shape::Plain
    };
    (kind, shape)
}

fn own_checks(
    message: &MessageDescriptor,
    info: &SourceInfo<'_>,
    ext: &ExtensionDescriptor,
    problems: &mut Problems,
) -> Vec<FieldCheck> {
    let mut checks = Vec::new();
    for field in message.fields() {
        let mut path = field.path().to_vec();
        path.extend([FIELD_OPTIONS, RULES_EXT]);
        let location = info.location(&path);
        let Some(Some(option)) = problems.keep(extension::<pb::Rules>(&field.options(), ext, &location)) else {
            continue;
        };
        let pb::Rules { required, min, max, min_len, max_len, defined } = option;
        let rules = Rules { required, min, max, min_len, max_len, defined };
        let (kind, shape) = kind_and_shape(message.package_name(), &field);
        let target = format!("field {}.{}", message.full_name(), field.name());
        if problems.keep(check_fit(&target, &field, &kind, shape, &rules, location)).is_none()
            || rules == Rules::default()
        {
            continue;
        }
        checks.push(FieldCheck {
            name: field.name().to_owned(),
            rust_name: ident::field_name(field.name()),
            kind,
            shape,
            rules,
            nested: false,
        });
    }
    checks
}

/// Rules must fit the field: a rule that could never apply is a mistake in the contract.
fn check_fit(
    target: &str,
    field: &FieldDescriptor,
    kind: &FieldKind,
    shape: Shape,
    rules: &Rules,
    at: Location,
) -> Result<()> {
    let fail = |message: String, help: &str| Err(Error::contract(at.clone(), message, help));
    if field.containing_oneof().is_some_and(|o| !o.is_synthetic()) {
        return fail(
            format!("{target} is in a oneof, and Warren has no rules for oneof fields"),
            "take the field out of the oneof, or drop the rules (Warren checks neither oneof fields nor the \
             messages they hold)",
        );
    }
    let numeric = matches!(kind, FieldKind::Int(_) | FieldKind::Float(_));
    let single = matches!(shape, Shape::Plain | Shape::Optional);
    if (rules.min.is_some() || rules.max.is_some()) && !(numeric && single) {
        return fail(
            format!("{target} has `min`/`max`, which apply to singular number fields only"),
            "drop `min`/`max`, or use `min_len`/`max_len` for lengths and counts",
        );
    }
    if let (Some(min), Some(max)) = (rules.min, rules.max)
        && min > max
    {
        return fail(format!("{target} has min {min} above max {max}"), "swap or fix the bounds");
    }
    for bound in [rules.min, rules.max].into_iter().flatten() {
        if !bound.is_finite() {
            return fail(format!("{target} has the bound {bound}"), "use a finite number");
        }
        if matches!(kind, FieldKind::Float(ty) if *ty == "f32") && f64::from(f32::MAX) < bound.abs() {
            return fail(
                format!("{target} is a float field (f32), but has the bound {bound}, beyond what it holds"),
                "use a bound within ±3.4e38, or make the field a double",
            );
        }
    }
    if let FieldKind::Int(ty) = kind {
        for bound in [rules.min, rules.max].into_iter().flatten() {
            // The largest 64-bit values are not doubles: 2^63 - 1 reads as 2^63, which no i64 holds.
            let two_63 = 9_223_372_036_854_775_808.0;
            let (low, high, high_included) = match *ty {
                "i32" => (f64::from(i32::MIN), f64::from(i32::MAX), true),
                "u32" => (0.0, f64::from(u32::MAX), true),
                "u64" => (0.0, 2.0 * two_63, false),
                _ => (-two_63, two_63, false),
            };
            let too_high = if high_included { bound > high } else { bound >= high };
            if bound.fract() != 0.0 || bound < low || too_high {
                return fail(
                    format!("{target} is an integer field ({ty}), but has the bound {bound}"),
                    "use a whole number the field's type can hold",
                );
            }
        }
    }
    let has_len = matches!(kind, FieldKind::Text | FieldKind::Bytes) || matches!(shape, Shape::Repeated | Shape::Map);
    if (rules.min_len.is_some() || rules.max_len.is_some()) && !has_len {
        return fail(
            format!("{target} has `min_len`/`max_len`, which apply to strings, bytes, repeated and map fields"),
            "drop them, or use `min`/`max` for numbers",
        );
    }
    if let (Some(min), Some(max)) = (rules.min_len, rules.max_len)
        && min > max
    {
        return fail(format!("{target} has min_len {min} above max_len {max}"), "swap or fix the bounds");
    }
    if rules.defined && !(matches!(kind, FieldKind::Enum(_)) && shape != Shape::Map) {
        return fail(
            format!("{target} has `defined`, which applies to enum fields only"),
            "drop `defined`, or make the field an enum",
        );
    }
    Ok(())
}

/// A hash of `message`'s schema: the names, numbers, types and labels of its fields, and likewise of every
/// message and enum it uses, to any depth. Comments and options do not count; renaming a field does (JSON
/// uses names). FNV-1a, 64 bits, as 16 hex digits: for noticing drift, not for security.
pub(crate) fn fingerprint(message: &MessageDescriptor) -> String {
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    let mut todo = vec![message.clone()];
    while let Some(message) = todo.pop() {
        if texts.contains_key(message.full_name()) {
            continue;
        }
        let mut text = format!("message {}{{", message.full_name());
        let mut fields: Vec<FieldDescriptor> = message.fields().collect();
        fields.sort_by_key(FieldDescriptor::number);
        for field in fields {
            let label = match field.cardinality() {
                Cardinality::Repeated => "repeated",
                Cardinality::Required => "required",
                Cardinality::Optional if field.supports_presence() => "optional",
                Cardinality::Optional => "",
            };
            let oneof = field.containing_oneof().filter(|o| !o.is_synthetic()).map(|o| o.name().to_owned());
            let kind = match field.kind() {
                Kind::Message(target) => {
                    let name = target.full_name().to_owned();
                    todo.push(target);
                    name
                }
                Kind::Enum(target) => {
                    let values: Vec<String> = target.values().map(|v| format!("{}={}", v.name(), v.number())).collect();
                    texts.insert(
                        target.full_name().to_owned(),
                        format!("enum {}{{{}}}", target.full_name(), values.join(",")),
                    );
                    target.full_name().to_owned()
                }
                other => format!("{other:?}").to_ascii_lowercase(),
            };
            text.push_str(&format!(
                "{} {label} {kind} {} {};",
                field.number(),
                field.name(),
                oneof.unwrap_or_default()
            ));
        }
        text.push('}');
        texts.insert(message.full_name().to_owned(), text);
    }
    let text: String = texts.values().flat_map(|t| t.chars().chain(['\n'])).collect();
    fnv64(&text)
}

/// The 64-bit FNV-1a hash of `text`, in hex: what fingerprints are.
pub(crate) fn fnv64(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}
