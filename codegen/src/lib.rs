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
//! - `model.rs`: the contract model, and every rule a contract must follow (each error says file:line and the fix).
//! - `ident.rs`: proto names to Rust names, matching prost-build.
//! - `emit/`: one emitter per artifact (`events.rs`, `rpc.rs`), and the module tree / crate files (`mod.rs`).
//! - `builder.rs`: the `build.rs` entry point.

mod builder;
mod compile;
mod config;
mod emit;
mod error;
pub mod ident;
pub mod model;

pub use builder::Builder;
pub use config::{Config, Layout};
pub use emit::{Files, OUT_DIR_INCLUDE_FILE};
pub use error::{Error, Location, Result};
pub use model::Contracts;

/// Compiles the configured protos and checks their contracts.
pub fn load(config: &Config) -> Result<Contracts> {
    let compiled = compile::compile(&config.includes, &config.files)?;
    Contracts::build(compiled)
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
