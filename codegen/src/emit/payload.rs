//! Per message: the `Payload` impl (proto name, schema fingerprint, descriptors, validation rules). Per error
//! set: `ServiceError`, `Display` and `Error` for the oneof enum a method's errors are.

use proc_macro2::TokenStream;
use quote::quote;

use super::{ident, rust_path};
use crate::model::{ErrorSet, FieldCheck, FieldKind, Message, Package, Rules, Shape};

/// `root` is the path from the package module to the crate root (or include file root), e.g. `super::super`.
pub(super) fn emit(package: &Package, root: &TokenStream) -> TokenStream {
    let mut out: TokenStream = package.messages.iter().map(|m| payload(m, root)).collect();
    out.extend(package.error_sets().into_iter().map(service_error));
    out
}

fn payload(message: &Message, root: &TokenStream) -> TokenStream {
    let ty = rust_path(&message.rust_path);
    let type_name = &message.full_name;
    let fingerprint = &message.fingerprint;
    let check = if message.checks.is_empty() {
        TokenStream::new()
    } else {
        let checks = message.checks.iter().map(field_check);
        quote! {
            #[allow(clippy::collapsible_if, clippy::len_zero)]
            fn check(&self, path: &str, violations: &mut ::warren::__codegen::Violations) {
                #( #checks )*
            }
        }
    };
    quote! {
        impl ::warren::Payload for #ty {
            const TYPE_NAME: &'static str = #type_name;
            const FINGERPRINT: &'static str = #fingerprint;

            fn schema() -> ::std::option::Option<&'static ::warren::Schema> {
                ::std::option::Option::Some(&#root::SCHEMA)
            }

            #check
        }
    }
}

/// The checks of one field. Messages are phrased for people: "must not be empty", "must be at most 100".
fn field_check(check: &FieldCheck) -> TokenStream {
    let field = ident(&check.rust_name);
    let name = &check.name;
    let rules = &check.rules;
    let mut out = TokenStream::new();
    let push = |problem: String| quote!(violations.push(path, #name, #problem););
    let bound = |value: f64| -> TokenStream {
        match &check.kind {
            FieldKind::Int(ty) => {
                let literal = syn::LitInt::new(&format!("{}{ty}", value as i128), proc_macro2::Span::call_site());
                quote!(#literal)
            }
            FieldKind::Float(ty) => {
                let literal = syn::LitFloat::new(&format!("{value:?}{ty}"), proc_macro2::Span::call_site());
                quote!(#literal)
            }
            _ => unreachable!("min and max are only allowed on numbers"),
        }
    };
    // The value to test, for singular fields: `value` bound by `if let` for optional ones.
    let single = |test: TokenStream| match check.shape {
        Shape::Optional => {
            quote!(if let ::std::option::Option::Some(value) = &self.#field { let value = *value; #test })
        }
        _ => quote!({ let value = self.#field; #test }),
    };
    if rules.required {
        let missing = match (&check.kind, check.shape) {
            (_, Shape::Optional) => quote!(self.#field.is_none()),
            (FieldKind::Text | FieldKind::Bytes, _) | (_, Shape::Repeated | Shape::Map) => {
                quote!(self.#field.is_empty())
            }
            (FieldKind::Bool, _) => quote!(!self.#field),
            (FieldKind::Float(_), _) => quote!(self.#field == 0.0),
            _ => quote!(self.#field == 0),
        };
        let problem = push(Rules::REQUIRED.to_owned());
        out.extend(quote!(if #missing { #problem }));
    }
    // An unsigned field cannot go below zero: no test (rustc would call it useless).
    let unsigned = matches!(check.kind, FieldKind::Int(ty) if ty.starts_with('u'));
    // NaN compares false with every bound: refused by name, or it would pass both.
    let nan = matches!(check.kind, FieldKind::Float(_)).then(|| quote!(|| value.is_nan()));
    if let Some(min) = rules.min.filter(|min| !(unsigned && *min <= 0.0)) {
        let (limit, problem) = (bound(min), push(Rules::below_min(min)));
        out.extend(single(quote!(if value < #limit #nan { #problem })));
    }
    if let Some(max) = rules.max {
        let (limit, problem) = (bound(max), push(Rules::above_max(max)));
        out.extend(single(quote!(if value > #limit #nan { #problem })));
    }
    if rules.min_len.is_some() || rules.max_len.is_some() {
        let (len, unit) = match (&check.kind, check.shape) {
            (_, Shape::Repeated | Shape::Map) => (quote!(items.len()), "items"),
            (FieldKind::Text, _) => (quote!(items.chars().count()), "characters"),
            _ => (quote!(items.len()), "bytes"),
        };
        let mut tests = TokenStream::new();
        if let Some(min) = rules.min_len {
            let (min, problem) = (min as usize, push(Rules::too_short(min, unit)));
            tests.extend(quote!(if #len < #min { #problem }));
        }
        if let Some(max) = rules.max_len {
            let (max, problem) = (max as usize, push(Rules::too_long(max, unit)));
            tests.extend(quote!(if #len > #max { #problem }));
        }
        out.extend(match check.shape {
            Shape::Optional => quote!(if let ::std::option::Option::Some(items) = &self.#field { #tests }),
            _ => quote!({ let items = &self.#field; #tests }),
        });
    }
    if rules.defined {
        let FieldKind::Enum(path) = &check.kind else { unreachable!("`defined` is only allowed on enums") };
        let ty = rust_path(path);
        let problem = push(Rules::undefined(path.rsplit("::").next().unwrap_or(path)));
        let undefined = quote!(#ty::try_from(*value).is_err());
        out.extend(match check.shape {
            Shape::Repeated => quote!(if self.#field.iter().any(|value| #undefined) { #problem }),
            Shape::Optional => {
                quote!(if let ::std::option::Option::Some(value) = &self.#field { if #undefined { #problem } })
            }
            _ => quote!({ let value = &self.#field; if #undefined { #problem } }),
        });
    }
    if check.nested {
        out.extend(match check.shape {
            Shape::Repeated => quote! {
                for (index, item) in self.#field.iter().enumerate() {
                    ::warren::Payload::check(item, &::std::format!("{}[{index}]", ::warren::__codegen::join(path, #name)), violations);
                }
            },
            _ => quote! {
                if let ::std::option::Option::Some(item) = &self.#field {
                    ::warren::Payload::check(item, &::warren::__codegen::join(path, #name), violations);
                }
            },
        });
    }
    out
}

fn service_error(set: &ErrorSet) -> TokenStream {
    let message = rust_path(&set.rust_path);
    let error = rust_path(&set.enum_path);
    let field = ident(&set.field);
    let arms = set.cases.iter().map(|(variant, name)| {
        let variant = ident(variant);
        let format = format!("{name} ({{details:?}})");
        quote!(Self::#variant(details) => ::std::write!(f, #format),)
    });
    quote! {
        impl ::warren::ServiceError for #error {
            type Message = #message;

            fn into_message(self) -> #message {
                #message { #field: ::std::option::Option::Some(self) }
            }

            fn from_message(message: #message) -> ::std::option::Option<Self> {
                message.#field
            }
        }

        impl ::std::fmt::Display for #error {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                match self {
                    #( #arms )*
                }
            }
        }

        impl ::std::error::Error for #error {}
    }
}
