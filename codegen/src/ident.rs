//! Proto names to Rust identifiers, with the same rules prost-build uses, so the names Warren's layer
//! refers to are the names prost generated.

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost_reflect::{EnumDescriptor, MessageDescriptor};

/// Rust keywords that prost escapes as raw identifiers (`r#type`).
const RAW_KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "do", "dyn", "else", "enum",
    "false", "final", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut",
    "override", "priv", "pub", "ref", "return", "static", "struct", "trait", "true", "try", "type", "typeof", "unsafe",
    "unsized", "use", "virtual", "where", "while", "yield",
];
/// Keywords that cannot be raw identifiers; prost appends `_`.
const SUFFIXED_KEYWORDS: &[&str] = &["crate", "extern", "self", "super", "Self"];

/// A field, method or module name: `IntSum` → `int_sum`, `type` → `r#type`, `self` → `self_`.
pub fn field_name(name: &str) -> String {
    let snake = name.to_snake_case();
    if SUFFIXED_KEYWORDS.contains(&snake.as_str()) {
        format!("{snake}_")
    } else if RAW_KEYWORDS.contains(&snake.as_str()) {
        format!("r#{snake}")
    } else {
        snake
    }
}

/// A type name: `user_registered` → `UserRegistered`, `Self` → `Self_`.
pub fn type_name(name: &str) -> String {
    let camel = name.to_upper_camel_case();
    if SUFFIXED_KEYWORDS.contains(&camel.as_str()) { format!("{camel}_") } else { camel }
}

/// The module path of a package, e.g. `gametrade.v1` → `["gametrade", "v1"]`.
pub fn package_modules(package: &str) -> Vec<String> {
    package.split('.').filter(|p| !p.is_empty()).map(field_name).collect()
}

/// The Rust path of `target` as seen from the module of package `from`.
///
/// Well-known types map to `::prost_types`, as prost-build does.
pub fn rust_type_path(from: &str, target: &MessageDescriptor) -> String {
    rust_path_of(from, target.package_name(), target.full_name())
}

/// The Rust path of enum `target` as seen from the module of package `from`.
pub fn rust_enum_path(from: &str, target: &EnumDescriptor) -> String {
    rust_path_of(from, target.package_name(), target.full_name())
}

/// The Rust path of the type `full_name` of `package`, as seen from the module of package `from`.
fn rust_path_of(from: &str, package: &str, full_name: &str) -> String {
    // Names of the type and its enclosing messages, outermost first.
    let local = full_name.strip_prefix(package).unwrap_or(full_name).trim_start_matches('.');
    let mut nested: Vec<&str> = local.split('.').collect();
    let last = type_name(nested.pop().unwrap_or_default());
    let nested: Vec<String> = nested.into_iter().map(field_name).collect();
    if package == "google.protobuf" {
        return format!("::prost_types::{}", [nested, vec![last]].concat().join("::"));
    }
    let from = package_modules(from);
    let to = package_modules(package);
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = std::iter::repeat_n("super".to_owned(), from.len() - common).collect();
    parts.extend(to[common..].iter().cloned());
    parts.extend(nested);
    parts.push(last);
    parts.join("::")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_escape_keywords_like_prost() {
        for (input, expected) in [
            ("IntSum", "int_sum"),
            ("user_id", "user_id"),
            ("type", "r#type"),
            ("match", "r#match"),
            ("self", "self_"),
            ("super", "super_"),
            ("crate", "crate_"),
            ("HTTPRequest", "http_request"),
        ] {
            assert_eq!(field_name(input), expected, "{input}");
        }
    }

    #[test]
    fn type_names_are_upper_camel() {
        for (input, expected) in [
            ("user_registered", "UserRegistered"),
            ("Result", "Result"),
            ("Self", "Self_"),
            ("gametrade_events", "GametradeEvents"),
        ] {
            assert_eq!(type_name(input), expected, "{input}");
        }
    }
}
