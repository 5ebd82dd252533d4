//! Compiling proto files with protox (no protoc anywhere) and finding source positions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The text that starts a `warren:allow` marker in a proto comment (see `compat`): left out of generated docs.
pub(crate) const MARKER: &str = "warren:allow";

use miette::Diagnostic;
use prost_reflect::DescriptorPool;
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver};

use crate::error::{Error, Location, Result};

/// Warren's options, embedded so that a team's `build.rs` needs no copy of them.
pub(crate) const OPTIONS_PROTO_NAME: &str = "warren/options.proto";
const OPTIONS_PROTO: &str = include_str!("../../proto/warren/options.proto");

/// Serves `warren/options.proto` when the include path does not have it.
struct EmbeddedOptions;

impl FileResolver for EmbeddedOptions {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == OPTIONS_PROTO_NAME {
            File::from_source(name, OPTIONS_PROTO)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// The compiled protos: a descriptor pool with source info, the encoded set, and where each file lives.
pub(crate) struct Compiled {
    pub(crate) pool: DescriptorPool,
    pub(crate) descriptor_set: Vec<u8>,
    /// proto name (`gametrade/v1/events.proto`) → path shown in errors (`proto/gametrade/v1/events.proto`).
    pub(crate) paths: BTreeMap<String, PathBuf>,
    /// Names of the files that were asked for (not only imported).
    pub(crate) requested: Vec<String>,
}

fn resolver(includes: &[PathBuf]) -> ChainFileResolver {
    let mut chain = ChainFileResolver::new();
    for include in includes {
        chain.add(IncludeFileResolver::new(include.clone()));
    }
    chain.add(EmbeddedOptions);
    chain.add(GoogleFileResolver::new());
    chain
}

pub(crate) fn compile(includes: &[PathBuf], files: &[PathBuf]) -> Result<Compiled> {
    let mut compiler = protox::Compiler::with_file_resolver(resolver(includes));
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(files).map_err(|e| proto_error(includes, e))?;
    let mut paths = BTreeMap::new();
    let mut requested = Vec::new();
    for meta in compiler.files() {
        let path = meta.path().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(meta.name()));
        paths.insert(meta.name().to_owned(), path);
        if !meta.is_import() {
            requested.push(meta.name().to_owned());
        }
    }
    // Sorted so output does not depend on the order files were listed in.
    requested.sort();
    // Encoded from the pool, not from protox's `FileDescriptorSet`: prost's descriptor types drop the options'
    // extensions (Warren's own), which tools reading the set at run time need.
    let pool = compiler.descriptor_pool();
    Ok(Compiled { descriptor_set: pool.encode_to_vec(), pool, paths, requested })
}

/// Contracts already compiled: an encoded `FileDescriptorSet` with its imports (as generated crates embed it,
/// or `protoc --include_imports --include_source_info -o` writes it). Every file but Warren's options and
/// Google's well-known types counts as asked for.
pub(crate) fn from_descriptor_set(bytes: &[u8]) -> Result<Compiled> {
    let pool = DescriptorPool::decode(bytes).map_err(|error| {
        Error::contract(
            Location { file: PathBuf::from("<descriptor set>"), line: 0, column: 0 },
            format!("the descriptor set does not decode: {error}"),
            "give an encoded google.protobuf.FileDescriptorSet that includes its imports \
             (protoc --include_imports -o FILE)",
        )
    })?;
    let mut paths = BTreeMap::new();
    let mut requested = Vec::new();
    for file in pool.files() {
        let name = file.name().to_owned();
        paths.insert(name.clone(), PathBuf::from(&name));
        if name != OPTIONS_PROTO_NAME && !name.starts_with("google/protobuf/") {
            requested.push(name);
        }
    }
    requested.sort();
    Ok(Compiled { pool, descriptor_set: bytes.to_vec(), paths, requested })
}

/// Turns a protox error into one that says file:line:column and names the real problem.
///
/// protox nests the useful text (e.g. "field 'routnig_key' not found") in miette's `diagnostic_source`
/// chain, not in `std::error::Error::source`; walk it for the message.
fn proto_error(includes: &[PathBuf], error: protox::Error) -> Error {
    let mut messages = vec![error.to_string()];
    let mut help = error.help().map(|h| h.to_string());
    // The outer label's position is in the file; inner labels point into an option's own text.
    let offset = error.labels().and_then(|mut labels| labels.next()).map(|label| label.offset());
    let mut inner = error.diagnostic_source();
    while let Some(diagnostic) = inner {
        let text = diagnostic.to_string();
        if !messages.iter().any(|m| m.contains(&text)) {
            messages.push(text);
        }
        if let Some(h) = diagnostic.help() {
            help = Some(h.to_string());
        }
        inner = diagnostic.diagnostic_source();
    }
    let name = error.file().unwrap_or_default().to_owned();
    let mut location = Location { file: PathBuf::from(&name), line: 0, column: 0 };
    // Read the text without parsing it: the file is the one that failed to parse.
    let found = includes
        .iter()
        .map(|dir| dir.join(&name))
        .find_map(|path| std::fs::read_to_string(&path).ok().map(|source| (path, source)));
    let found =
        found.or_else(|| (name == OPTIONS_PROTO_NAME).then(|| (PathBuf::from(&name), OPTIONS_PROTO.to_owned())));
    if let Some((path, source)) = found {
        location.file = path;
        if let Some(offset) = offset {
            (location.line, location.column) = line_column(&source, offset);
        }
    }
    Error::Proto { location, message: messages.join(": "), help, source: Box::new(error) }
}

/// 1-based line and column of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Positions and comments of one file, by descriptor path.
pub(crate) struct SourceInfo<'a> {
    path: PathBuf,
    locations: HashMap<&'a [i32], &'a prost_types::source_code_info::Location>,
}

impl<'a> SourceInfo<'a> {
    pub(crate) fn new(file: &'a prost_types::FileDescriptorProto, path: PathBuf) -> Self {
        let locations = file
            .source_code_info
            .iter()
            .flat_map(|info| &info.location)
            .map(|loc| (loc.path.as_slice(), loc))
            .collect();
        SourceInfo { path, locations }
    }

    /// Where the element at `path` starts; falls back to enclosing elements, then to the file itself.
    pub(crate) fn location(&self, path: &[i32]) -> Location {
        let mut path = path;
        loop {
            if let Some(loc) = self.locations.get(path) {
                let line = loc.span.first().map_or(0, |l| *l as usize + 1);
                let column = loc.span.get(1).map_or(0, |c| *c as usize + 1);
                return Location { file: self.path.clone(), line, column };
            }
            match path.split_last() {
                Some((_, rest)) => path = rest,
                None => {
                    return Location { file: self.path.clone(), line: 0, column: 0 };
                }
            }
        }
    }

    /// The comment at the top of the file: the one before `syntax`, attached or detached.
    pub(crate) fn file_comment(&self) -> String {
        const SYNTAX: i32 = 12;
        let attached = self.comment(&[SYNTAX]);
        if !attached.is_empty() {
            return attached;
        }
        self.locations
            .get([SYNTAX].as_slice())
            .and_then(|loc| loc.leading_detached_comments.first())
            .map(|c| clean_comment(c))
            .unwrap_or_default()
    }

    /// The leading comment of the element at `path`, trimmed; empty when there is none.
    pub(crate) fn comment(&self, path: &[i32]) -> String {
        self.locations.get(path).and_then(|loc| loc.leading_comments.as_deref()).map(clean_comment).unwrap_or_default()
    }
}

/// A proto comment as doc text: one leading space per line removed, trailing blanks trimmed, and
/// compatibility waivers (`warren:allow …` lines, meant for `check-compat`) left out.
fn clean_comment(comment: &str) -> String {
    let lines: Vec<&str> = comment
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .filter(|l| !l.starts_with(MARKER))
        .collect();
    lines.join("\n").trim().to_owned()
}
