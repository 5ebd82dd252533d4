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
    /// Two or more of the other errors (contract errors, in practice), all found in one run, sorted by location:
    /// reading goes on past an item that fails, so one run reports every problem. A single problem is
    /// reported as itself, never wrapped in this.
    #[error("{}", list(.0))]
    Errors(Vec<Error>),
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
    #[error("rendering {file} failed: {source} (a bug in warren-codegen, not in your contracts: please report it)")]
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

    /// `Ok` when `errors` is empty; the error itself when there is one; [`Error::Errors`] (flattened, sorted
    /// by location) when there are more.
    fn from_all(errors: Vec<Error>) -> Result<()> {
        let mut errors: Vec<Error> = errors
            .into_iter()
            .flat_map(|error| match error {
                Error::Errors(inner) => inner,
                error => vec![error],
            })
            .collect();
        // Stable: problems at one place keep the order they were found in.
        errors.sort_by(|a, b| {
            let key = |e: &Error| e.location().map(|l| (l.file.clone(), l.line, l.column));
            key(a).cmp(&key(b))
        });
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Errors(errors)),
        }
    }

    /// Where in the protos the problem is, when it is in the protos; for [`Error::Errors`], where the first is.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Error::Proto { location, .. } | Error::Contract { location, .. } => Some(location),
            Error::Errors(errors) => errors.first().and_then(Error::location),
            _ => None,
        }
    }

    /// Each problem on its own: the errors of [`Error::Errors`], or this error alone.
    pub fn errors(&self) -> &[Error] {
        match self {
            Error::Errors(errors) => errors,
            error => std::slice::from_ref(error),
        }
    }
}

/// The text of [`Error::Errors`]: a count, then each error (location first, its `help:` line under it).
fn list(errors: &[Error]) -> String {
    let mut text = format!("{} errors in the contracts:", errors.len());
    for error in errors {
        text.push('\n');
        text.push_str(&error.to_string());
    }
    text
}

/// Errors found so far while reading the contracts. An item that fails is skipped (so that later checks do
/// not report it again in other words) and reading goes on, so that one run reports every problem.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Error>);

impl Problems {
    /// Keeps `error` for the report.
    pub(crate) fn push(&mut self, error: Error) {
        self.0.push(error);
    }

    /// The value of `result`, or `None` with its error kept for the report.
    pub(crate) fn keep<T>(&mut self, result: Result<T>) -> Option<T> {
        result.map_err(|error| self.push(error)).ok()
    }

    /// How many problems have been found so far.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Every problem found, as one error ([`Error::from_all`]); `Ok` when there is none.
    pub(crate) fn finish(self) -> Result<()> {
        Error::from_all(self.0)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
