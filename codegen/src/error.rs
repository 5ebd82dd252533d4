//! Errors that name the file, the line and the fix.

use std::fmt;
use std::path::PathBuf;

/// Where in a proto file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, as found on the include path (e.g. `proto/gametrade/v1/events.proto`).
    pub file: PathBuf,
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        Ok(())
    }
}

/// Everything that can go wrong while turning contracts into code.
///
/// Each variant's message says what is wrong, where, and how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// protox rejected a proto file: a syntax error, an unknown option field, an unresolved import or type.
    #[error("{location}: {message}{}", help.as_deref().map(|h| format!("\n  help: {h}")).unwrap_or_default())]
    Proto {
        /// Where protox found the problem.
        location: Location,
        /// protox's description of it.
        message: String,
        /// protox's suggested fix, when it has one.
        help: Option<String>,
        /// The original protox error.
        #[source]
        source: Box<protox::Error>,
    },
    /// The protos compile, but Warren's options in them are wrong or inconsistent.
    #[error("{location}: {message}\n  help: {help}")]
    Contract {
        /// Where the offending declaration is.
        location: Location,
        /// What is wrong.
        message: String,
        /// How to fix it.
        help: String,
    },
    /// prost-build could not generate message types.
    #[error("generating message types with prost-build failed: {0}")]
    Prost(#[source] std::io::Error),
    /// The generated Rust did not parse; a bug in warren-codegen.
    #[error("warren-codegen produced Rust that does not parse in {file}: {source} (please report this bug)")]
    Syntax {
        /// The generated file.
        file: String,
        /// The parser's complaint.
        #[source]
        source: syn::Error,
    },
    /// Rendering a template failed; a bug in warren-codegen.
    #[error("rendering {file} failed: {source}")]
    Template {
        /// The file being rendered.
        file: String,
        /// The template engine's complaint.
        #[source]
        source: askama::Error,
    },
    /// Writing generated files failed (builder only; the core never does IO).
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn contract(location: Location, message: impl Into<String>, help: impl Into<String>) -> Self {
        Error::Contract { location, message: message.into(), help: help.into() }
    }

    /// Where in the protos the problem is, when it is in the protos.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Error::Proto { location, .. } | Error::Contract { location, .. } => Some(location),
            _ => None,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
