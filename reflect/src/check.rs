//! The contract's validation rules (`[(warren.rules) = { ... }]`) on a message read at run time: the same
//! checks, and the same words, as the `check` generated code runs (`warren-codegen`'s `Rules` holds the words
//! for both).

use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value};
use warren::Violations;
use warren_codegen::model::{FieldCheck, Rules, Shape};

use crate::{Catalog, Error};

impl Catalog {
    /// Checks `message` against its contract's validation rules; a message the contracts give no rules passes.
    pub fn validate(&self, message: &DynamicMessage) -> Result<(), Error> {
        let mut violations = Violations::default();
        self.check(message, "", &mut violations);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid { type_name: message.descriptor().full_name().to_owned(), violations })
        }
    }

    /// The contract's rules on field `field` of message `message` (full name), as text, e.g.
    /// `required, max_len 64`; `None` when it has none.
    pub fn rules(&self, message: &str, field: &str) -> Option<String> {
        let model = self.model_message(message)?;
        let rules = model.checks.iter().find(|c| c.name == field)?.rules;
        let mut said = Vec::new();
        if rules.required {
            said.push("required".to_owned());
        }
        said.extend(rules.min.map(|v| format!("min {v}")));
        said.extend(rules.max.map(|v| format!("max {v}")));
        said.extend(rules.min_len.map(|v| format!("min_len {v}")));
        said.extend(rules.max_len.map(|v| format!("max_len {v}")));
        if rules.defined {
            said.push("defined".to_owned());
        }
        (!said.is_empty()).then(|| said.join(", "))
    }

    fn check(&self, message: &DynamicMessage, path: &str, violations: &mut Violations) {
        let Some(model) = self.model_message(message.descriptor().full_name()) else { return };
        for check in &model.checks {
            let Some(field) = message.descriptor().get_field_by_name(&check.name) else { continue };
            let present = message.has_field(&field);
            let value = message.get_field(&field);
            self.check_field(check, &field.kind(), present, &value, path, violations);
        }
    }

    fn check_field(
        &self,
        check: &FieldCheck,
        kind: &Kind,
        present: bool,
        value: &Value,
        path: &str,
        violations: &mut Violations,
    ) {
        let rules = check.rules;
        let field = check.name.as_str();
        let optional = check.shape == Shape::Optional;
        if rules.required && is_missing(value, optional, present) {
            violations.push(path, field, Rules::REQUIRED);
        }
        // Singular values: an optional one only when set.
        let singular = match check.shape {
            Shape::Plain => Some(value),
            Shape::Optional if present => Some(value),
            _ => None,
        };
        if let Some(number) = singular.and_then(as_number) {
            if let Some(min) = rules.min.filter(|min| number.below(*min)) {
                violations.push(path, field, Rules::below_min(min));
            }
            if let Some(max) = rules.max.filter(|max| number.above(*max)) {
                violations.push(path, field, Rules::above_max(max));
            }
        }
        if rules.min_len.is_some() || rules.max_len.is_some() {
            let measured = match (value, check.shape) {
                (_, Shape::Optional) if !present => None,
                (Value::List(items), _) => Some((items.len(), "items")),
                (Value::Map(items), _) => Some((items.len(), "items")),
                (Value::String(text), _) => Some((text.chars().count(), "characters")),
                (Value::Bytes(bytes), _) => Some((bytes.len(), "bytes")),
                _ => None,
            };
            if let Some((len, unit)) = measured {
                if let Some(min) = rules.min_len.filter(|min| len < *min as usize) {
                    violations.push(path, field, Rules::too_short(min, unit));
                }
                if let Some(max) = rules.max_len.filter(|max| len > *max as usize) {
                    violations.push(path, field, Rules::too_long(max, unit));
                }
            }
        }
        if rules.defined
            && let Kind::Enum(descriptor) = kind
        {
            let undefined = |value: &Value| value.as_enum_number().is_some_and(|n| descriptor.get_value(n).is_none());
            let broken = match value {
                Value::List(values) => values.iter().any(undefined),
                _ if optional && !present => false,
                value => undefined(value),
            };
            if broken {
                violations.push(path, field, Rules::undefined(descriptor.name()));
            }
        }
        if check.nested {
            let here = warren::__codegen::join(path, field);
            match value {
                Value::List(items) => {
                    for (index, item) in items.iter().enumerate() {
                        if let Value::Message(item) = item {
                            self.check(item, &format!("{here}[{index}]"), violations);
                        }
                    }
                }
                Value::Message(item) if present => self.check(item, &here, violations),
                _ => {}
            }
        }
    }
}

/// Whether a `required` field is missing: unset, empty, `false` or zero, as the generated check reads it.
fn is_missing(value: &Value, optional: bool, present: bool) -> bool {
    if optional {
        return !present;
    }
    match value {
        Value::Bool(b) => !b,
        Value::I32(n) | Value::EnumNumber(n) => *n == 0,
        Value::I64(n) => *n == 0,
        Value::U32(n) => *n == 0,
        Value::U64(n) => *n == 0,
        Value::F32(n) => *n == 0.0,
        Value::F64(n) => *n == 0.0,
        Value::String(s) => s.is_empty(),
        Value::Bytes(b) => b.is_empty(),
        Value::List(items) => items.is_empty(),
        Value::Map(items) => items.is_empty(),
        Value::Message(_) => !present,
    }
}

/// A field's number, compared with a rule's bound as generated code compares it: an integer against the bound
/// written as an integer (truncated), exactly, not as a float (which cannot tell 2^53 + 1 from 2^53).
#[derive(Debug, Clone, Copy)]
enum Number {
    Int(i128),
    Float(f64),
}

impl Number {
    fn below(self, bound: f64) -> bool {
        match self {
            Number::Int(n) => n < bound as i128,
            // NaN is below and above every bound: it compares false with them all.
            Number::Float(x) => x < bound || x.is_nan(),
        }
    }

    fn above(self, bound: f64) -> bool {
        match self {
            Number::Int(n) => n > bound as i128,
            Number::Float(x) => x > bound || x.is_nan(),
        }
    }
}

fn as_number(value: &Value) -> Option<Number> {
    Some(match value {
        Value::I32(n) => Number::Int(i128::from(*n)),
        Value::I64(n) => Number::Int(i128::from(*n)),
        Value::U32(n) => Number::Int(i128::from(*n)),
        Value::U64(n) => Number::Int(i128::from(*n)),
        Value::F32(n) => Number::Float(f64::from(*n)),
        Value::F64(n) => Number::Float(*n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_compared_with_their_bounds_exactly() {
        let two_53 = 9_007_199_254_740_992_f64;
        let over = as_number(&Value::I64(9_007_199_254_740_993)).unwrap();
        assert!(over.above(two_53), "2^53 + 1 is above 2^53, as the generated check finds");
        assert!(!as_number(&Value::I64(9_007_199_254_740_992)).unwrap().above(two_53));
        assert!(as_number(&Value::U64(u64::MAX)).unwrap().above(1.8e19));
        assert!(as_number(&Value::I32(-1)).unwrap().below(0.0));
        // A fractional bound is truncated, as codegen writes it: `min: 1.5` on an integer field is `1`.
        assert!(!as_number(&Value::I32(1)).unwrap().below(1.5));
        assert!(as_number(&Value::F64(1.25)).unwrap().below(1.5));
    }
}
