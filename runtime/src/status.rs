//! RPC outcomes that cross the wire: a code and a message, as in gRPC.

use std::fmt;

/// What kind of failure an RPC [`Status`] reports: gRPC's 17 status codes, numbered as gRPC numbers them, and
/// sent as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// Not an error: the call succeeded (never inside an `Err`).
    Ok,
    /// The operation was cancelled, typically by the caller; here also because the bus is shutting down.
    Cancelled,
    /// Unknown error: a status from an unknown error space (a number this side does not know arrives as
    /// this), or an error that gives no better information. A contract's declared error travels with this code.
    Unknown,
    /// The client gave an invalid argument, whatever the state of the system: here, a request that did not
    /// decode or failed its contract's validation. Compare [`Code::FailedPrecondition`].
    InvalidArgument,
    /// The deadline expired before the operation could complete (here: before a reply arrived). The
    /// operation may have completed nonetheless.
    DeadlineExceeded,
    /// Some requested entity (a file, a directory, a record) was not found.
    NotFound,
    /// The entity that a client attempted to create already exists.
    AlreadyExists,
    /// The caller does not have permission to execute the operation. Not for a caller that could not be
    /// identified ([`Code::Unauthenticated`]) nor for an exhausted resource ([`Code::ResourceExhausted`]).
    PermissionDenied,
    /// Some resource has been exhausted: perhaps a per-user quota, or perhaps the entire file system is out
    /// of space.
    ResourceExhausted,
    /// The operation was rejected because the system is not in a state required for its execution, e.g. a
    /// directory to be deleted is not empty. The client should not retry until the state has been fixed.
    FailedPrecondition,
    /// The operation was aborted, typically because of a concurrency issue such as a failed sequencer check or
    /// an aborted transaction; the client may retry at a higher level.
    Aborted,
    /// The operation was attempted past the valid range, e.g. seeking or reading past the end of a file.
    /// Unlike [`Code::InvalidArgument`], the problem may go away as the system's state changes.
    OutOfRange,
    /// The operation is not implemented, or not supported or enabled, in this service: here, a method the
    /// server does not have.
    Unimplemented,
    /// Internal error: some invariant expected by the underlying system has been broken (here also: the
    /// server's handler panicked).
    Internal,
    /// The service is currently unavailable (no broker, no queue): most likely a transient condition, which
    /// retrying with a backoff may correct.
    Unavailable,
    /// Unrecoverable data loss or corruption.
    DataLoss,
    /// The request does not have valid authentication credentials for the operation.
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
            Code::AlreadyExists => 6,
            Code::PermissionDenied => 7,
            Code::ResourceExhausted => 8,
            Code::FailedPrecondition => 9,
            Code::Aborted => 10,
            Code::OutOfRange => 11,
            Code::Unimplemented => 12,
            Code::Internal => 13,
            Code::Unavailable => 14,
            Code::DataLoss => 15,
            Code::Unauthenticated => 16,
        }
    }

    /// The code for a gRPC number; unknown numbers are [`Code::Unknown`].
    pub fn from_i32(n: i32) -> Code {
        match n {
            0 => Code::Ok,
            1 => Code::Cancelled,
            2 => Code::Unknown,
            3 => Code::InvalidArgument,
            4 => Code::DeadlineExceeded,
            5 => Code::NotFound,
            6 => Code::AlreadyExists,
            7 => Code::PermissionDenied,
            8 => Code::ResourceExhausted,
            9 => Code::FailedPrecondition,
            10 => Code::Aborted,
            11 => Code::OutOfRange,
            12 => Code::Unimplemented,
            13 => Code::Internal,
            14 => Code::Unavailable,
            15 => Code::DataLoss,
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
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
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

    /// An error with no better code.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(Code::Unknown, message)
    }

    /// What the caller attempted to create already exists.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(Code::AlreadyExists, message)
    }

    /// The caller may not do this.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, message)
    }

    /// Some resource (a quota, space) has been exhausted.
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(Code::ResourceExhausted, message)
    }

    /// The system is not in the state the operation requires.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }

    /// The operation was aborted, typically by a concurrency conflict.
    pub fn aborted(message: impl Into<String>) -> Self {
        Self::new(Code::Aborted, message)
    }

    /// The operation was attempted past the valid range.
    pub fn out_of_range(message: impl Into<String>) -> Self {
        Self::new(Code::OutOfRange, message)
    }

    /// Unrecoverable data loss or corruption.
    pub fn data_loss(message: impl Into<String>) -> Self {
        Self::new(Code::DataLoss, message)
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
            crate::Error::Blocked { .. } => Code::ResourceExhausted,
            crate::Error::Config { .. } => Code::InvalidArgument,
            _ => Code::Unavailable,
        };
        Status::new(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_round_trips_through_its_number_and_its_name() {
        let names = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        let codes: Vec<Code> = (0..=16).map(Code::from_i32).collect();
        for (n, name) in (0..=16).zip(names) {
            let code = Code::from_i32(n);
            assert_eq!(code.as_i32(), n, "{code:?}");
            assert_eq!(code.as_str(), name, "{n}");
            assert_eq!(code.to_string(), name, "{n}");
            // The name picks out this code and no other.
            let named: Vec<Code> = codes.iter().copied().filter(|c| c.as_str() == name).collect();
            assert_eq!(named, [code], "{name}");
        }
        for n in [17, -1, i32::MAX, i32::MIN] {
            assert_eq!(Code::from_i32(n), Code::Unknown, "{n}");
        }
        assert_eq!(Status::already_exists("user 7").code().as_i32(), 6);
        assert_eq!(Status::already_exists("user 7").to_string(), "ALREADY_EXISTS: user 7");
    }
}
