//! The requested proto files as the manifest and the docs show them: display paths, positions and comments.

use std::collections::HashMap;
use std::path::PathBuf;

use prost_reflect::FileDescriptor;
use prost_types::FileDescriptorProto;

use crate::compile::{OPTIONS_PROTO_NAME, SourceInfo};
use crate::config::Config;
use crate::error::Location;
use crate::model::Contracts;

/// The requested files (Warren's options excepted), sorted by proto name.
pub(crate) struct Sources<'a> {
    pub(crate) files: Vec<Source<'a>>,
    /// Path the compiler found a file at → path to show for it.
    display: HashMap<PathBuf, PathBuf>,
}

/// One proto file.
pub(crate) struct Source<'a> {
    /// Its descriptor.
    pub(crate) descriptor: FileDescriptor,
    /// Its descriptor proto, with source info.
    pub(crate) proto: &'a FileDescriptorProto,
    /// The path to show: `proto/<name>` in the workspace, whatever the checkout's location, else as found.
    pub(crate) display: PathBuf,
    info: SourceInfo<'a>,
}

impl<'a> Sources<'a> {
    pub(crate) fn new(config: &Config, contracts: &'a Contracts) -> Sources<'a> {
        let mut found: HashMap<&str, &PathBuf> = HashMap::new();
        for package in &contracts.packages {
            found.extend(package.files.iter().map(String::as_str).zip(&package.paths));
        }
        let mut display = HashMap::new();
        let mut files = Vec::new();
        for name in contracts.requested.iter().filter(|n| n.as_str() != OPTIONS_PROTO_NAME) {
            let descriptor = contracts.pool.get_file_by_name(name).expect("requested files are in the pool");
            let proto = contracts
                .pool
                .file_descriptor_protos()
                .find(|f| f.name() == name)
                .expect("requested files are in the pool");
            let path = found.get(name.as_str()).map_or_else(|| PathBuf::from(name), |p| (*p).clone());
            let shown = match &config.source_label {
                Some(label) => PathBuf::from(label).join(name),
                None => path.clone(),
            };
            display.insert(path, shown.clone());
            files.push(Source { descriptor, proto, info: SourceInfo::new(proto, shown.clone()), display: shown });
        }
        Sources { files, display }
    }

    /// `location` (as the model records it) with the file's display path.
    pub(crate) fn display(&self, location: &Location) -> Location {
        match self.display.get(&location.file) {
            Some(shown) => Location { file: shown.clone(), ..location.clone() },
            None => location.clone(),
        }
    }

    /// The file whose proto name is `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Source<'a>> {
        self.files.iter().find(|f| f.descriptor.name() == name)
    }
}

impl Source<'_> {
    /// Where the element at descriptor `path` is declared.
    pub(crate) fn location(&self, path: &[i32]) -> Location {
        self.info.location(path)
    }

    /// The leading comment of the element at descriptor `path`.
    pub(crate) fn comment(&self, path: &[i32]) -> String {
        self.info.comment(path)
    }

    /// Every comment of the file with the descriptor path it belongs to; `attached` is false for a comment
    /// standing alone between blank lines.
    pub(crate) fn comments<'s>(&'s self) -> impl Iterator<Item = Comment<'s>> {
        self.proto.source_code_info.iter().flat_map(|info| &info.location).flat_map(move |loc| {
            let line = loc.span.first().map_or(0, |l| *l as usize + 1);
            let comment = move |text: &'s String, leading: bool, attached: bool| Comment {
                path: &loc.path,
                text,
                attached,
                file: &self.display,
                // A leading comment ends on the line before its element.
                first_line: if leading { line.saturating_sub(text.lines().count()) } else { line },
                leading,
            };
            let leading = loc.leading_comments.iter().map(move |text| comment(text, true, true));
            let trailing = loc.trailing_comments.iter().map(move |text| comment(text, false, true));
            let detached = loc.leading_detached_comments.iter().map(move |text| comment(text, false, false));
            leading.chain(trailing).chain(detached)
        })
    }
}

/// One comment in a proto file.
pub(crate) struct Comment<'a> {
    /// Descriptor path of the element the comment is attached to (or stands before, when detached).
    pub(crate) path: &'a [i32],
    /// The text, comment markers removed.
    pub(crate) text: &'a str,
    /// Whether it is the element's leading or trailing comment.
    pub(crate) attached: bool,
    file: &'a PathBuf,
    /// Its first line, for a leading comment; else the line of its element.
    first_line: usize,
    leading: bool,
}

impl Comment<'_> {
    /// Where the text at byte `offset` of the comment is (for a comment that does not lead an element: where
    /// the element is).
    pub(crate) fn location_at(&self, offset: usize) -> Location {
        let line = if self.leading {
            self.first_line + self.text[..offset.min(self.text.len())].matches('\n').count()
        } else {
            self.first_line
        };
        Location { file: self.file.clone(), line, column: 0 }
    }
}
