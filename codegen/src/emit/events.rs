//! Per event: the `Event` impl (exchange, routing key and type name from the contract) and a typed
//! `subscribe`. Per exchange: an enum of the package's events on it, for pattern subscriptions.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{docs, rust_path};
use crate::model::{Event, Exchange, ExchangeKind, KeyKind, KeyPart, Package};

pub(super) fn format(json: bool) -> TokenStream {
    if json { quote!(::warren::WireFormat::Json) } else { quote!(::warren::WireFormat::Protobuf) }
}

/// Whole milliseconds, as the contract states them.
fn millis(wait: std::time::Duration) -> u64 {
    u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn retry(retry: Option<crate::model::RetryPolicy>) -> TokenStream {
    match retry {
        Some(r) => {
            let (attempts, initial, multiplier, max) =
                (r.max_attempts, millis(r.initial_backoff), r.multiplier, millis(r.max_backoff));
            quote!(::std::option::Option::Some(::warren::RetryPolicy::new(
                #attempts,
                ::std::time::Duration::from_millis(#initial),
                #multiplier,
                ::std::time::Duration::from_millis(#max),
            )))
        }
        None => quote!(::std::option::Option::None),
    }
}

/// `Event::routing_key` for a templated key: each field's value checked and put in its word.
fn routing_key_fn(event: &Event) -> TokenStream {
    if !event.key_parts.iter().any(|p| matches!(p, KeyPart::Field { .. })) {
        return TokenStream::new();
    }
    let type_name = &event.full_name;
    let template = event
        .key_parts
        .iter()
        .map(|p| match p {
            KeyPart::Literal(word) => word.replace('{', "{{").replace('}', "}}"),
            KeyPart::Field { .. } => "{}".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(".");
    let values = event.key_parts.iter().filter_map(|p| {
        let KeyPart::Field { name, rust_name, kind } = p else { return None };
        let field = super::ident(rust_name);
        let field = quote!(self.#field);
        Some(match kind {
            KeyKind::Text => quote!(::warren::__codegen::key_word(#type_name, #name, &#field)?),
            KeyKind::Integer | KeyKind::Bool => quote!(#field),
            KeyKind::Enum { path, prefix } => {
                let ty = rust_path(path);
                quote!(::warren::__codegen::enum_word(
                    #type_name,
                    #name,
                    #ty::try_from(#field).ok().map(|value| value.as_str_name()),
                    #prefix,
                    #field,
                )?)
            }
        })
    });
    quote! {
        fn routing_key(&self) -> ::std::result::Result<::std::borrow::Cow<'static, str>, ::warren::Error> {
            ::std::result::Result::Ok(::std::borrow::Cow::Owned(::std::format!(#template, #( #values ),*)))
        }
    }
}

fn exchange_spec(exchange: &Exchange) -> TokenStream {
    let name = &exchange.name;
    let kind = format_ident!(
        "{}",
        match exchange.kind {
            ExchangeKind::Direct => "Direct",
            ExchangeKind::Topic => "Topic",
            ExchangeKind::Fanout => "Fanout",
            ExchangeKind::Headers => "Headers",
        }
    );
    let durable = exchange.durable;
    let auto_delete = exchange.auto_delete;
    quote! {
        ::warren::__codegen::ExchangeSpec {
            name: #name,
            kind: ::warren::__codegen::ExchangeKind::#kind,
            durable: #durable,
            auto_delete: #auto_delete,
        }
    }
}

pub(super) fn emit(package: &Package) -> TokenStream {
    let mut out = TokenStream::new();
    for event in &package.events {
        let ty = rust_path(&event.rust_path);
        let type_name = &event.full_name;
        let routing_key = &event.routing_key;
        let exchange = exchange_spec(&event.exchange);
        let priority = match event.priority {
            Some(level) => {
                let name = format_ident!("{}", ["Low", "Normal", "High", "Critical"][usize::from(level)]);
                quote!(::std::option::Option::Some(::warren::Priority::#name))
            }
            None => quote!(::std::option::Option::None),
        };
        let retry = retry(event.retry);
        let quorum = event.quorum;
        let limit = limit(event.limit);
        let binding_key = &event.binding;
        let wire = format(event.json);
        let routing_key_fn = routing_key_fn(event);
        let binding = if event.exchange.kind.uses_routing_key() {
            format!("`{}` on exchange `{}`", event.routing_key, event.exchange.name)
        } else {
            format!("{} exchange `{}`", event.exchange.kind.as_str(), event.exchange.name)
        };
        let subscribe_doc = docs::doc_attrs(
            &format!(
                "Subscribes consumer group `group` to [`{}`] events ({binding}).\n\n\
                 Each group gets one durable queue, `<group>.{type_name}`: every group receives each event once, \
                 and the consumers of one group share the work. Configure the returned subscriber, then call \
                 `handle`.",
                event.variant
            ),
            "",
        );
        out.extend(quote! {
            impl ::warren::__codegen::Event for #ty {
                const SPEC: &'static ::warren::__codegen::EventSpec = &::warren::__codegen::EventSpec {
                    type_name: #type_name,
                    exchange: #exchange,
                    routing_key: #routing_key,
                    binding: #binding_key,
                    priority: #priority,
                    retry: #retry,
                    quorum: #quorum,
                    limit: #limit,
                    format: #wire,
                };
                #routing_key_fn
            }

            impl #ty {
                #subscribe_doc
                pub fn subscribe(bus: &::warren::Bus, group: &str) -> ::warren::Subscriber<Self> {
                    ::warren::Subscriber::new(bus, group)
                }
            }
        });
    }
    for group in &package.groups {
        let name = format_ident!("{}", group.rust_name);
        let exchange = exchange_spec(&group.exchange);
        let events: Vec<_> = group.events.iter().map(|i| &package.events[*i]).collect();
        let variants: Vec<_> = events.iter().map(|e| format_ident!("{}", e.variant)).collect();
        let prioritized = events.iter().any(|e| e.priority.is_some());
        // A group's queue is a quorum queue only if every event on it asks for one; it uses a contract retry
        // policy only if its events agree on one.
        let quorum = events.iter().all(|e| e.quorum);
        // Limited only if every event on it is, by the strictest of their limits (as `proto/warren.lock` says).
        let limit_fn = group_limit(&events).map(|limit| {
            let limit = self::limit(Some(limit));
            quote! {
                fn queue_limit() -> ::std::option::Option<::warren::__codegen::QueueLimit> {
                    #limit
                }
            }
        });
        let retry = match events.first().map(|e| e.retry) {
            Some(Some(first)) if events.iter().all(|e| e.retry == Some(first)) => {
                let ty = rust_path(&events[0].rust_path);
                quote!(<#ty as ::warren::__codegen::Event>::SPEC.retry)
            }
            _ => quote!(::std::option::Option::None),
        };
        let types: Vec<_> = events.iter().map(|e| rust_path(&e.rust_path)).collect();
        let type_names: Vec<_> = events.iter().map(|e| &e.full_name).collect();
        let variant_docs: Vec<_> =
            events.iter().map(|e| docs::doc_attrs(&e.doc, &format!("A `{}` event.", e.full_name))).collect();
        let enum_doc = docs::doc_attrs(
            &format!(
                "Every event of package `{}` published to exchange `{}` ({}), as one type.\n\n\
                 Subscribe with a binding pattern (such as `user.*` on a topic exchange) and `match` on what \
                 arrives; a new event in the contract becomes a new variant, so the match stays exhaustive. \
                 A delivery of any other type is dead-lettered with the reason.",
                package.name,
                group.exchange.name,
                group.exchange.kind.as_str()
            ),
            "",
        );
        let subscribe_doc = docs::doc_attrs(
            &format!(
                "Subscribes consumer group `group` to the events of exchange `{}` that match `pattern`.\n\n\
                 The pattern is checked against the contract's routing keys when the subscription starts: one \
                 that can never match any of them is an error. Each (group, pattern) gets its own durable queue.",
                group.exchange.name
            ),
            "",
        );
        let declared = package.subscriptions.iter().filter(|s| s.exchange == group.exchange.name).map(|s| {
            let function = format_ident!("{}", s.rust_name);
            let pattern = &s.pattern;
            let doc = docs::doc_attrs(
                &format!(
                    "{}\n\nSubscribes consumer group `group` to pattern `{pattern}`: the contract's `{}` \
                     subscription, checked against the routing keys when the code was generated.",
                    if s.doc.is_empty() { format!("The `{}` subscription.", s.name) } else { s.doc.clone() },
                    s.name
                ),
                "",
            );
            quote! {
                #doc
                pub fn #function(bus: &::warren::Bus, group: &str) -> ::warren::Subscriber<Self> {
                    Self::subscribe(bus, group, #pattern)
                }
            }
        });
        out.extend(quote! {
            #enum_doc
            #[derive(Clone, PartialEq, Debug)]
            pub enum #name {
                #( #variant_docs #variants(#types), )*
            }

            impl ::warren::__codegen::Inbound for #name {
                fn exchange() -> &'static ::warren::__codegen::ExchangeSpec {
                    const EXCHANGE: ::warren::__codegen::ExchangeSpec = #exchange;
                    &EXCHANGE
                }

                fn routing_keys() -> ::std::vec::Vec<&'static str> {
                    ::std::vec![ #( <#types as ::warren::__codegen::Event>::SPEC.binding ),* ]
                }

                fn queue_suffix() -> &'static str {
                    Self::exchange().name
                }

                fn prioritized() -> bool {
                    #prioritized
                }

                fn quorum() -> bool {
                    #quorum
                }

                #limit_fn

                fn retry_policy() -> ::std::option::Option<::warren::RetryPolicy> {
                    #retry
                }

                fn decode(
                    type_name: &str,
                    format: ::warren::WireFormat,
                    payload: &[u8],
                ) -> ::std::result::Result<Self, ::warren::__codegen::DecodeError> {
                    match type_name {
                        #( #type_names => ::warren::__codegen::decode_as::<#types>(type_name, format, payload).map(Self::#variants), )*
                        other => ::std::result::Result::Err(::warren::__codegen::DecodeError::unexpected_type(other)),
                    }
                }

                fn fingerprint(type_name: &str) -> ::std::option::Option<&'static str> {
                    match type_name {
                        #( #type_names => ::std::option::Option::Some(<#types as ::warren::Payload>::FINGERPRINT), )*
                        _ => ::std::option::Option::None,
                    }
                }
            }

            impl #name {
                #subscribe_doc
                pub fn subscribe(bus: &::warren::Bus, group: &str, pattern: &str) -> ::warren::Subscriber<Self> {
                    ::warren::Subscriber::new(bus, group).pattern(pattern)
                }

                #( #declared )*
            }
        });
    }
    out
}

/// The length limit of a queue that takes all of `events`: the strictest of theirs when every one has one.
pub(crate) fn group_limit(events: &[&crate::model::Event]) -> Option<crate::model::QueueLimit> {
    events.iter().map(|e| e.limit).reduce(|a, b| a.zip(b).map(|(a, b)| a.strictest(b))).flatten()
}

/// A contract's queue limit as an expression of generated code.
pub(crate) fn limit(limit: Option<crate::model::QueueLimit>) -> TokenStream {
    let bound = |value: Option<u32>| match value {
        Some(n) => quote!(::std::option::Option::Some(#n)),
        None => quote!(::std::option::Option::None),
    };
    match limit {
        Some(limit) => {
            let (messages, bytes) = (bound(limit.max_messages), bound(limit.max_bytes));
            quote!(::std::option::Option::Some(::warren::__codegen::QueueLimit::new(#messages, #bytes)))
        }
        None => quote!(::std::option::Option::None),
    }
}
