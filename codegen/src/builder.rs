//! The `build.rs` entry point, for teams that generate into `OUT_DIR` instead of checking code in.

use std::path::{Path, PathBuf};

use crate::config::{Config, Layout, ProstSettings};
use crate::error::{Error, Result};

/// Generates contracts from a `build.rs`, tonic-build style.
///
/// ```no_run
/// // build.rs
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     warren_codegen::Builder::new().compile(&["proto/orders/v1/orders.proto"], &["proto"])?;
///     Ok(())
/// }
/// // src/lib.rs:
/// // include!(concat!(env!("OUT_DIR"), "/warren_contracts.rs"));
/// ```
///
/// The crate then depends on `warren`, `prost` and `prost-types`; no `protoc` is needed.
///
/// prost-build's settings for the message types pass through: [`Builder::type_attribute`],
/// [`Builder::field_attribute`], [`Builder::extern_path`].
///
/// ```no_run
/// // build.rs: serde on every message, and a shared package's types from the crate that generates them
/// warren_codegen::Builder::new()
///     .type_attribute(".", "#[derive(serde::Serialize)]")
///     .extern_path(".common.v1", "::common_contracts::common::v1")
///     .compile(&["proto/orders/v1/orders.proto"], &["proto"])?;
/// # Ok::<(), warren_codegen::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    out_dir: Option<PathBuf>,
    prost: ProstSettings,
}

impl Builder {
    /// A builder that writes to `$OUT_DIR`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes somewhere else than `$OUT_DIR`.
    pub fn out_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.out_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Adds `attribute` to the message and enum types matched by `path` (see [`Config::type_attribute`]).
    pub fn type_attribute(mut self, path: impl Into<String>, attribute: impl Into<String>) -> Self {
        self.prost.type_attributes.push((path.into(), attribute.into()));
        self
    }

    /// Adds `attribute` to the fields matched by `path` (see [`Config::field_attribute`]).
    pub fn field_attribute(mut self, path: impl Into<String>, attribute: impl Into<String>) -> Self {
        self.prost.field_attributes.push((path.into(), attribute.into()));
        self
    }

    /// Uses `rust_path` for the proto type or package `proto_path` instead of generating it (see
    /// [`Config::extern_path`]).
    pub fn extern_path(mut self, proto_path: impl Into<String>, rust_path: impl Into<String>) -> Self {
        self.prost.extern_paths.push((proto_path.into(), rust_path.into()));
        self
    }

    /// Compiles `protos` (paths under one of `includes`), writes the generated files, and tells cargo to
    /// rerun when a proto changes. `warren/options.proto` is provided if no include has it.
    pub fn compile(self, protos: &[impl AsRef<Path>], includes: &[impl AsRef<Path>]) -> Result<()> {
        let out_dir = match self.out_dir {
            Some(dir) => dir,
            None => PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| Error::Io {
                path: PathBuf::from("$OUT_DIR"),
                source: std::io::Error::other(
                    "OUT_DIR is not set: call Builder::compile from build.rs, or set out_dir",
                ),
            })?),
        };
        let mut config = Config::new(includes, protos);
        config.layout(Layout::OutDir).command("warren_codegen::Builder in build.rs");
        config.prost = self.prost;
        let contracts = crate::load(&config)?;
        for include in includes {
            println!("cargo:rerun-if-changed={}", include.as_ref().display());
        }
        for (path, contents) in crate::generate_from(&config, &contracts)? {
            let path = out_dir.join(path);
            if std::fs::read(&path).ok().as_deref() != Some(contents.as_slice()) {
                std::fs::write(&path, contents).map_err(|source| Error::Io { path, source })?;
            }
        }
        Ok(())
    }
}
