//! The one error type: what failed, where, and where to look.

use std::fmt;

/// Starting, stopping or asking a private node something failed. The message says what failed and, for a node,
/// where its log is.
#[derive(Debug)]
pub struct Error {
    message: String,
    source: Option<std::io::Error>,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Error {
        Error { message: message.into(), source: None }
    }

    pub(crate) fn io(message: impl Into<String>, source: std::io::Error) -> Error {
        Error { message: message.into(), source: Some(source) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}
