//! Per task: the `Task` impl (work queue, prefetch, retry policy), its `Inbound` impl (workers consume the
//! contract's queue, whatever their group), `enqueue` and `worker`.

use proc_macro2::TokenStream;
use quote::quote;

use super::events::{format, retry};
use super::{docs, rust_path};
use crate::model::Package;

pub(super) fn emit(package: &Package) -> TokenStream {
    package
        .tasks
        .iter()
        .map(|task| {
            let ty = rust_path(&task.rust_path);
            let type_name = &task.full_name;
            let queue = &task.queue;
            let prefetch = match task.prefetch {
                Some(n) => quote!(::std::option::Option::Some(#n)),
                None => quote!(::std::option::Option::None),
            };
            let retry = retry(task.retry);
            let quorum = task.quorum;
            let limit = super::events::limit(task.limit);
            let wire = format(task.json);
            let name = task.full_name.rsplit('.').next().unwrap_or_default();
            let enqueue_doc = docs::doc_attrs(
                &format!(
                    "Puts this task on queue `{queue}` for exactly one worker; returns once the broker has \
                     confirmed it. Same as `bus.enqueue(&task)`."
                ),
                "",
            );
            let worker_doc = docs::doc_attrs(
                &format!(
                    "A worker for [`{name}`] tasks on queue `{queue}`: every worker started on the queue competes \
                     for its tasks, each task goes to one of them. Configure it (`concurrency`, `prefetch`, \
                     `retry`, `handler_timeout`), then call `handle`."
                ),
                "",
            );
            quote! {
                impl ::warren::__codegen::Task for #ty {
                    const SPEC: &'static ::warren::__codegen::TaskSpec = &::warren::__codegen::TaskSpec {
                        type_name: #type_name,
                        queue: #queue,
                        prefetch: #prefetch,
                        retry: #retry,
                        quorum: #quorum,
                        limit: #limit,
                        format: #wire,
                    };
                }

                impl ::warren::__codegen::Inbound for #ty {
                    fn exchange() -> &'static ::warren::__codegen::ExchangeSpec {
                        &::warren::__codegen::DEFAULT_EXCHANGE
                    }

                    fn routing_keys() -> ::std::vec::Vec<&'static str> {
                        ::std::vec![#queue]
                    }

                    fn queue_suffix() -> &'static str {
                        #queue
                    }

                    fn decode(
                        type_name: &str,
                        format: ::warren::WireFormat,
                        payload: &[u8],
                    ) -> ::std::result::Result<Self, ::warren::__codegen::DecodeError> {
                        ::warren::__codegen::decode_as::<Self>(type_name, format, payload)
                    }

                    fn fingerprint(type_name: &str) -> ::std::option::Option<&'static str> {
                        ::warren::__codegen::fingerprint_of::<Self>(type_name)
                    }

                    fn sole_type() -> ::std::option::Option<&'static str> {
                        ::std::option::Option::Some(<Self as ::warren::Payload>::TYPE_NAME)
                    }

                    fn quorum() -> bool {
                        #quorum
                    }

                    fn retry_policy() -> ::std::option::Option<::warren::RetryPolicy> {
                        <Self as ::warren::__codegen::Task>::SPEC.retry
                    }

                    fn queue_limit() -> ::std::option::Option<::warren::__codegen::QueueLimit> {
                        <Self as ::warren::__codegen::Task>::SPEC.limit
                    }

                    fn work_queue() -> ::std::option::Option<&'static str> {
                        ::std::option::Option::Some(#queue)
                    }

                    fn default_prefetch() -> ::std::option::Option<u16> {
                        #prefetch
                    }
                }

                impl #ty {
                    #enqueue_doc
                    pub async fn enqueue(&self, bus: &::warren::Bus) -> ::std::result::Result<(), ::warren::Error> {
                        bus.enqueue(self).await
                    }

                    #worker_doc
                    pub fn worker(bus: &::warren::Bus) -> ::warren::Subscriber<Self> {
                        ::warren::Subscriber::new(bus, #queue)
                    }
                }
            }
        })
        .collect()
}
