//! Warren's code generator: `.proto` contracts with Warren's options become typed Rust.
//!
//! The pipeline is `protox` (compile, no `protoc`) → `prost-reflect` (read Warren's options) → a checked
//! [contract model](model) → `quote!` + `prettyplease` (prost message types plus Warren's typed layer).
//! The core does no IO: [`generate`] returns the files in memory, and callers decide where they go
//! (`cargo xtask regen` writes `generated/`; [`Builder`] writes `OUT_DIR` from a `build.rs`).
//!
//! ```no_run
//! use warren_codegen::{Config, Layout};
//! let mut config = Config::new(["proto"], ["gametrade/v1/events.proto"]);
//! config.layout(Layout::Crate { name: "my-contracts".into(), runtime_path: "../runtime".into() });
//! let files = warren_codegen::generate(&config)?;
//! for (path, contents) in &files {
//!     println!("{} ({} bytes)", path.display(), contents.len());
//! }
//! # Ok::<(), warren_codegen::Error>(())
//! ```
//!
//! # Layout
//!
//! - `compile.rs`: protox with an embedded `warren/options.proto`; source positions and comments.
//! - `model/`: the contract model, and every rule a contract must follow (each error says file:line and the fix):
//!   the types (`mod.rs`), reading Warren's options out of the descriptors (`options.rs`; RPC services in
//!   `services.rs`), checks across items (`validate.rs`), routing keys and subscriptions (`keys.rs`), messages'
//!   validation rules (`messages.rs`). Every problem is reported in one run, not only the first.
//! - `options_pb.rs`: prost's types for `warren/options.proto`, which the model reads Warren's options into;
//!   written by `cargo xtask regen`, never by hand.
//! - `ident.rs`: proto names to Rust names, matching prost-build.
//! - `emit/`: one emitter per artifact (`events.rs`, `rpc.rs`), and the module tree / crate files (`mod.rs`).
//! - `builder.rs`: the `build.rs` entry point.
//! - `manifest/`: the contract manifest (`proto/warren.lock`): building it from the model, its text form.
//! - `compat/`: the breaking-change rules, comparing a baseline manifest with the current one.
//! - `docs/`: the AsyncAPI document and the Markdown catalog, from askama templates (`templates/`).
//! - `sources.rs`: display paths, positions and comments of the requested files, for the manifest and the docs.
//!
//! `manifest/`, `compat/`, `docs/` and `sources.rs` are the tooling of `cargo xtask` (the lock file, the
//! breaking-change checker, the docs): behind the `tooling` feature, off by default, so a `build.rs` that only
//! generates code compiles none of them.

mod builder;
#[cfg(feature = "tooling")]
pub mod compat;
mod compile;
mod config;
#[cfg(feature = "tooling")]
pub mod docs;
mod emit;
mod error;
pub mod ident;
#[cfg(feature = "tooling")]
pub mod manifest;
pub mod model;
/// prost's types for `warren/options.proto`, which the model reads options into; written by `cargo xtask regen`.
#[rustfmt::skip]
#[allow(dead_code, unreachable_pub)]
mod options_pb;
#[cfg(feature = "tooling")]
mod sources;

pub use builder::Builder;
pub use config::{Config, Layout};
pub use emit::{Files, OUT_DIR_INCLUDE_FILE};
pub use error::{Error, Location, Result};
#[cfg(feature = "tooling")]
pub use manifest::Manifest;
pub use model::Contracts;

/// The version of the runtime's `__codegen` API this generator writes code for. Generated code asserts, at
/// compile time, that the runtime it builds against speaks the same one (`warren::__codegen::API_VERSION`),
/// so a mismatched pair fails to build with a message saying to regenerate. Raise it with the runtime's
/// whenever generated code would no longer build or behave the same against the other.
pub const RUNTIME_API_VERSION: u32 = 6;

/// Compiles the configured protos and checks their contracts.
pub fn load(config: &Config) -> Result<Contracts> {
    let compiled = compile::compile(&config.includes, &config.files)?;
    Contracts::build(compiled)
}

/// Reads and checks the contracts of an encoded `FileDescriptorSet` that includes its imports: a generated
/// crate's `FILE_DESCRIPTOR_SET`, or what `protoc --include_imports --include_source_info -o` writes. What
/// tools that read contracts at run time start from (the `warren` CLI, the gateway); proto comments are kept
/// when the set has source info.
pub fn load_descriptor_set(bytes: &[u8]) -> Result<Contracts> {
    Contracts::build(compile::from_descriptor_set(bytes)?)
}

/// Compiles, checks and generates: the files for `config`, in memory, sorted by path.
pub fn generate(config: &Config) -> Result<Files> {
    let contracts = load(config)?;
    generate_from(config, &contracts)
}

/// Generates the files for already loaded contracts.
pub fn generate_from(config: &Config, contracts: &Contracts) -> Result<Files> {
    emit::generate(config, contracts)
}

/// Where `cargo xtask regen` writes [`options_types()`], relative to the workspace root.
pub const OPTIONS_TYPES_FILE: &str = "codegen/src/options_pb.rs";

/// The Rust types of Warren's own options (`warren/options.proto`), as prost-build writes them, under an
/// `@generated` header: what `cargo xtask regen` writes to [`OPTIONS_TYPES_FILE`].
///
/// Codegen reads each option into these types, so renaming an option's field breaks its build rather than
/// leaving the value unread; a unit test fails while the checked-in file differs from this.
pub fn options_types() -> Result<String> {
    model::options_types()
}

/// The contract manifest of already loaded contracts (what `cargo xtask regen` writes to `proto/warren.lock`).
///
/// Fails only on a `warren:allow` marker that names no rule.
#[cfg(feature = "tooling")]
pub fn manifest(config: &Config, contracts: &Contracts) -> Result<Manifest> {
    manifest::build(config, contracts)
}

/// The text of `proto/warren.lock` for already loaded contracts: [`manifest()`] rendered under an `@generated`
/// header naming the config's command.
#[cfg(feature = "tooling")]
pub fn manifest_file(config: &Config, contracts: &Contracts) -> Result<String> {
    let source = match &config.source_label {
        Some(label) => format!("{label}/"),
        None => "the protos".to_owned(),
    };
    let header = format!("# @generated by `{}` from {source}. Do not edit.\n", config.command);
    Ok(manifest(config, contracts)?.render(&header))
}
