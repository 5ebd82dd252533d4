//! RPC outcomes that cross the wire: a code and a message, as in gRPC.

use std::fmt;

/// What kind of failure an RPC [`Status`] reports. Numbered as gRPC's codes, and sent as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// Success (never inside an `Err`).
    Ok,
    /// The call was cancelled, e.g. because the bus is shutting down.
    Cancelled,
    /// An error with no better code.
    Unknown,
    /// The request is malformed: it did not decode, or failed validation.
    InvalidArgument,
    /// The deadline passed before a reply arrived.
    DeadlineExceeded,
    /// Something the request names does not exist.
    NotFound,
    /// The caller may not do this.
    PermissionDenied,
    /// The server has no such method.
    Unimplemented,
    /// The server failed.
    Internal,
    /// The service cannot be reached now (no broker, no queue); retrying later may work.
    Unavailable,
    /// The caller is not authenticated.
    Unauthenticated,
}

impl Code {
    /// The gRPC number of the code.
    pub fn as_i32(self) -> i32 {
        match self {
            Code::Ok => 0,
            Code::Cancelled => 1,
            Code::Unknown => 2,
            Code::InvalidArgument => 3,
            Code::DeadlineExceeded => 4,
            Code::NotFound => 5,
            Code::PermissionDenied => 7,
            Code::Unimplemented => 12,
            Code::Internal => 13,
            Code::Unavailable => 14,
            Code::Unauthenticated => 16,
        }
    }

    /// The code for a gRPC number; unknown numbers are [`Code::Unknown`].
    pub fn from_i32(n: i32) -> Code {
        match n {
            0 => Code::Ok,
            1 => Code::Cancelled,
            3 => Code::InvalidArgument,
            4 => Code::DeadlineExceeded,
            5 => Code::NotFound,
            7 => Code::PermissionDenied,
            12 => Code::Unimplemented,
            13 => Code::Internal,
            14 => Code::Unavailable,
            16 => Code::Unauthenticated,
            _ => Code::Unknown,
        }
    }

    /// The gRPC-style name, e.g. `INVALID_ARGUMENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of an RPC: returned by server implementations, and received by callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
}

impl Status {
    /// A status with `code` and a message for humans.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Status { code, message: message.into() }
    }

    /// The request is malformed.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// Something the request names does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// The server failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// The service cannot be reached now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// The deadline passed.
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(Code::DeadlineExceeded, message)
    }

    /// The caller is not authenticated.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message)
    }

    /// The server has no such method.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(Code::Unimplemented, message)
    }

    /// The call was cancelled.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(Code::Cancelled, message)
    }

    /// What kind of failure this is.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message for humans.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

impl From<crate::Error> for Status {
    fn from(error: crate::Error) -> Self {
        let code = match &error {
            crate::Error::Closed => Code::Cancelled,
            crate::Error::Timeout { .. } => Code::DeadlineExceeded,
            crate::Error::Config { .. } => Code::InvalidArgument,
            _ => Code::Unavailable,
        };
        Status::new(code, error.to_string())
    }
}
