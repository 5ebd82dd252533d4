//! What to compile and how to lay out the output.

use std::path::{Path, PathBuf};

/// How the generated files are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A complete crate (`Cargo.toml`, `src/lib.rs`, one pair of files per package), as in `generated/`.
    Crate {
        /// The crate's package name, e.g. `warren-contracts`.
        name: String,
        /// Path from the generated crate to the `warren` runtime crate, written into its `Cargo.toml`.
        runtime_path: String,
    },
    /// Files for a `build.rs` that writes to `OUT_DIR`: one pair per package plus `warren_contracts.rs`,
    /// which mounts them all; `include!` it from your crate.
    OutDir,
}

/// Inputs and options for one code generation run.
///
/// Setters take `&mut self` and return `&mut Self`, as in prost-build.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) includes: Vec<PathBuf>,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) layout: Layout,
    pub(crate) command: String,
    pub(crate) source_label: Option<String>,
    pub(crate) prost: ProstSettings,
}

/// Settings passed through to prost-build for the message types (see [`Config::type_attribute`],
/// [`Config::field_attribute`], [`Config::extern_path`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProstSettings {
    pub(crate) type_attributes: Vec<(String, String)>,
    pub(crate) field_attributes: Vec<(String, String)>,
    pub(crate) extern_paths: Vec<(String, String)>,
}

impl ProstSettings {
    /// Applies these settings to a prost-build config.
    pub(crate) fn apply(&self, config: &mut prost_build::Config) {
        for (path, attribute) in &self.type_attributes {
            config.type_attribute(path, attribute);
        }
        for (path, attribute) in &self.field_attributes {
            config.field_attribute(path, attribute);
        }
        for (proto_path, rust_path) in &self.extern_paths {
            config.extern_path(proto_path, rust_path);
        }
    }
}

impl Config {
    /// A config that compiles `files` (paths relative to one of the `includes`, e.g. `gametrade/v1/events.proto`).
    ///
    /// `warren/options.proto` is found automatically when it is not on the include path.
    pub fn new<I, F>(includes: I, files: F) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<Path>,
        F: IntoIterator,
        F::Item: AsRef<Path>,
    {
        Config {
            includes: includes.into_iter().map(|p| p.as_ref().to_path_buf()).collect(),
            files: files.into_iter().map(|p| p.as_ref().to_path_buf()).collect(),
            layout: Layout::OutDir,
            command: "warren-codegen".to_owned(),
            source_label: None,
            prost: ProstSettings::default(),
        }
    }

    /// Sets how the output is mounted (default [`Layout::OutDir`]).
    pub fn layout(&mut self, layout: Layout) -> &mut Self {
        self.layout = layout;
        self
    }

    /// The config `cargo xtask regen` uses: every `.proto` under `<root>/proto` (Warren's own options excepted),
    /// as the `warren-contracts` crate, with headers naming `proto/<file>` whatever the checkout's location.
    pub fn for_workspace(root: &Path) -> std::io::Result<Config> {
        let include = root.join("proto");
        let mut files = Vec::new();
        let mut dirs = vec![include.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "proto") {
                    let relative = path.strip_prefix(&include).expect("walked under include").to_path_buf();
                    if relative != Path::new(crate::compile::OPTIONS_PROTO_NAME) {
                        files.push(relative);
                    }
                }
            }
        }
        files.sort();
        let mut config = Config::new([include], files);
        config
            .layout(Layout::Crate { name: "warren-contracts".into(), runtime_path: "../runtime".into() })
            .command("cargo xtask regen");
        config.source_label = Some("proto".into());
        Ok(config)
    }

    /// Adds `attribute` (e.g. `#[derive(Eq, Hash)]`) to the message or enum types matched by `path`, as
    /// prost-build's `type_attribute`: `.` for all, `.shop.v1` for a package, `.shop.v1.OrderPlaced` for one.
    pub fn type_attribute(&mut self, path: impl Into<String>, attribute: impl Into<String>) -> &mut Self {
        self.prost.type_attributes.push((path.into(), attribute.into()));
        self
    }

    /// Adds `attribute` (e.g. `#[serde(default)]`) to the fields matched by `path`, as prost-build's
    /// `field_attribute` (`.shop.v1.OrderPlaced.order_id`).
    pub fn field_attribute(&mut self, path: impl Into<String>, attribute: impl Into<String>) -> &mut Self {
        self.prost.field_attributes.push((path.into(), attribute.into()));
        self
    }

    /// Uses the Rust type at `rust_path` for the proto type or package `proto_path` instead of generating it,
    /// as prost-build's `extern_path`: for messages another crate already generates (with prost, or with
    /// Warren, when they carry validation rules: Warren's code validates nested messages through them).
    pub fn extern_path(&mut self, proto_path: impl Into<String>, rust_path: impl Into<String>) -> &mut Self {
        self.prost.extern_paths.push((proto_path.into(), rust_path.into()));
        self
    }

    /// Names the command that regenerates the files, for their `@generated` header.
    pub fn command(&mut self, command: impl Into<String>) -> &mut Self {
        self.command = command.into();
        self
    }
}
