//! Doc attributes for generated items: the proto comment when there is one, a useful sentence otherwise.

use proc_macro2::TokenStream;
use quote::quote;

/// `#[doc = "..."]` lines for `comment`, or for `fallback` when the proto has no comment.
pub(crate) fn doc_attrs(comment: &str, fallback: &str) -> TokenStream {
    let text = if comment.trim().is_empty() { fallback } else { comment };
    let lines = text.lines().map(|line| format!(" {line}").trim_end().to_owned());
    quote! { #( #[doc = #lines] )* }
}

/// Appends a paragraph to doc attributes.
pub(crate) fn doc_paragraph(text: &str) -> TokenStream {
    let lines = std::iter::once(String::new()).chain(text.lines().map(|l| format!(" {l}").trim_end().to_owned()));
    quote! { #( #[doc = #lines] )* }
}
