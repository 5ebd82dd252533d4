//! Per RPC service: a server trait with one async method per rpc, a server that serves it on the
//! service's queue, and a client with one typed async method per rpc.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{docs, rust_path};
use crate::model::{Package, Service};

pub(super) fn emit(package: &Package) -> TokenStream {
    package.services.iter().map(emit_service).collect()
}

fn emit_service(service: &Service) -> TokenStream {
    let trait_name = format_ident!("{}", crate::ident::type_name(&service.name));
    let server = format_ident!("{}Server", trait_name);
    let client = format_ident!("{}Client", trait_name);
    let full_name = &service.full_name;
    let queue = &service.queue;
    let default_timeout = u64::from(service.default_timeout_ms);
    let fingerprint = &service.fingerprint;
    let quorum = service.quorum;

    let service_doc = docs::doc_attrs(&service.doc, &format!("The `{full_name}` service."));
    let trait_doc = docs::doc_paragraph(&format!(
        "Implement this trait and serve it with [`{server}`]; callers use [`{client}`]. Requests arrive on \
         queue `{queue}`."
    ));
    let server_doc = docs::doc_attrs(
        &format!(
            "Serves a [`{trait_name}`] implementation on queue `{queue}`.\n\n\
             A request that does not decode is answered with `INVALID_ARGUMENT`; an unknown method with \
             `UNIMPLEMENTED`."
        ),
        "",
    );
    let client_doc = docs::doc_attrs(
        &format!(
            "Calls the `{full_name}` service over the bus. Cheap to clone.\n\n\
             Each call has a deadline: the method's, else the service's default ({default_timeout} ms), unless \
             set with [`{client}::with_timeout`]."
        ),
        "",
    );

    let mut trait_methods = Vec::new();
    let mut dispatch_arms = Vec::new();
    let mut client_methods = Vec::new();
    let mut method_specs = Vec::new();
    for method in &service.methods {
        let rust_name = super::ident(&method.rust_name);
        let input = rust_path(&method.input_rust);
        let output = rust_path(&method.output_rust);
        let name = &method.name;
        let path = format!("/{}/{}", service.full_name, method.name);
        let timeout = match method.timeout_ms {
            Some(ms) => {
                let ms = u64::from(ms);
                quote!(::std::option::Option::Some(::std::time::Duration::from_millis(#ms)))
            }
            None => quote!(::std::option::Option::None),
        };
        let doc = docs::doc_attrs(&method.doc, &format!("The `{}` rpc.", method.name));
        let (error, call, call_with) = match &method.errors {
            Some(set) => {
                let errors = rust_path(&set.enum_path);
                (quote!(::warren::RpcError<#errors>), quote!(call_with_errors), quote!(call_with_errors_with))
            }
            None => (quote!(::warren::Status), quote!(call), quote!(call_with)),
        };
        let rust_name_with = format_ident!("{}_with", method.rust_name.trim_start_matches("r#"));
        // rustdoc cannot link to a raw identifier (`r#type`): name it in plain code instead.
        let plain = match method.rust_name.strip_prefix("r#") {
            Some(raw) => format!("`{raw}`"),
            None => format!("[`Self::{}`]", method.rust_name),
        };
        let with_doc = docs::doc_attrs(
            &format!(
                "{plain} with per-call options (deadline, headers); the reply comes with the headers the server sent."
            ),
            "",
        );
        // One description of the method, used by both of its client methods.
        let spec = format_ident!("{}_METHOD", method.rust_name.trim_start_matches("r#").to_uppercase());
        let errors_doc = match &method.errors {
            Some(set) => docs::doc_paragraph(&format!(
                "Fails with one of the errors of `{}` ([`::warren::RpcError::Service`]), or a transport-level \
                 [`::warren::Status`].",
                set.full_name
            )),
            None => TokenStream::new(),
        };
        trait_methods.push(quote! {
            #doc
            #errors_doc
            fn #rust_name(
                &self,
                request: #input,
                context: ::warren::RpcContext,
            ) -> impl ::std::future::Future<Output = ::std::result::Result<#output, #error>> + ::std::marker::Send;
        });
        dispatch_arms.push(quote! {
            #path => {
                let format = context.format();
                let request = ::warren::__codegen::decode_request::<#input>(&context, &payload)?;
                ::warren::__codegen::encode_reply(service.#rust_name(request, context).await, format)
            }
        });
        client_methods.push(quote! {
            #doc
            #errors_doc
            pub async fn #rust_name(&self, request: #input) -> ::std::result::Result<#output, #error> {
                self.inner.#call(&Self::#spec, &request).await
            }

            #with_doc
            pub async fn #rust_name_with(
                &self,
                request: #input,
                options: ::warren::CallOptions,
            ) -> ::std::result::Result<::warren::Response<#output>, #error> {
                self.inner.#call_with(&Self::#spec, &request, &options).await
            }
        });
        method_specs.push(quote! {
            const #spec: ::warren::__codegen::MethodSpec = ::warren::__codegen::MethodSpec {
                service: #client::SERVICE,
                name: #name,
                path: #path,
                timeout: #timeout,
            };
        });
    }

    quote! {
        #service_doc
        #trait_doc
        pub trait #trait_name: ::std::marker::Send + ::std::marker::Sync + 'static {
            #( #trait_methods )*
        }

        #server_doc
        #[derive(Debug)]
        pub struct #server<T> {
            service: ::std::sync::Arc<T>,
            options: ::warren::ServerOptions,
        }

        impl<T: #trait_name> #server<T> {
            /// Wraps the service implementation.
            pub fn new(service: T) -> Self {
                Self { service: ::std::sync::Arc::new(service), options: ::warren::ServerOptions::new() }
            }

            /// Answers up to `n` requests at once (at least one; default [`::warren::DEFAULT_SERVER_CONCURRENCY`]),
            /// each in a task of its own. The broker sends no more than that before they are acknowledged.
            pub fn concurrency(mut self, n: u16) -> Self {
                self.options = self.options.concurrency(n);
                self
            }

            /// Adds `layer` around this server's requests, after the bus's layers and those added before it: it
            /// may refuse a request, which is then answered with its status without running the handler (see
            /// [`::warren::Middleware`]).
            pub fn middleware(mut self, layer: impl ::warren::Middleware) -> Self {
                self.options = self.options.middleware(layer);
                self
            }

            /// Also replies to requests whose `reply_to` starts with `prefix`; by default only direct reply-to
            /// addresses and server-named queues are replied to (see [`::warren::ServerOptions::allow_reply_to`]).
            pub fn allow_reply_to(mut self, prefix: impl ::std::convert::Into<::std::string::String>) -> Self {
                self.options = self.options.allow_reply_to(prefix);
                self
            }

            /// Declares the service's queue and starts answering requests; returns once the server is consuming.
            /// Stop it with the returned handle, or by shutting the bus down.
            pub async fn serve(self, bus: &::warren::Bus) -> ::std::result::Result<::warren::Serving, ::warren::Error> {
                let service = self.service;
                ::warren::__codegen::serve_options(bus, #client::SERVICE, self.options, move |method, payload, context| {
                    let service = ::std::sync::Arc::clone(&service);
                    ::std::boxed::Box::pin(async move {
                        match method.as_str() {
                            #( #dispatch_arms )*
                            _ => ::std::result::Result::Err(::warren::__codegen::unimplemented(&method)),
                        }
                    })
                })
                .await
            }
        }

        #client_doc
        #[derive(Clone, Debug)]
        pub struct #client {
            inner: ::warren::__codegen::RpcClient,
        }

        impl #client {
            /// The service's name, queue and default deadline, from the contract.
            pub const SERVICE: &'static ::warren::__codegen::ServiceSpec = &::warren::__codegen::ServiceSpec {
                name: #full_name,
                queue: #queue,
                default_timeout: ::std::time::Duration::from_millis(#default_timeout),
                fingerprint: #fingerprint,
                quorum: #quorum,
            };

            /// A client that calls through `bus`.
            pub fn new(bus: &::warren::Bus) -> Self {
                Self { inner: ::warren::__codegen::RpcClient::new(bus, Self::SERVICE) }
            }

            /// The same client with `timeout` as the deadline of every call, instead of the contract's.
            pub fn with_timeout(mut self, timeout: ::std::time::Duration) -> Self {
                self.inner = self.inner.with_timeout(timeout);
                self
            }

            #( #method_specs )*

            #( #client_methods )*
        }
    }
}
