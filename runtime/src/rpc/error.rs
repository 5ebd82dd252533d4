//! How RPC fails: a declared error of the method's contract, or a transport-level [`Status`].

use crate::codec::{self, Payload, WireFormat};
use crate::error::Result;
use crate::status::{Code, Status};

/// The error of a call to a method whose contract declares errors: one of those, or a transport-level
/// [`Status`] (deadline exceeded, unavailable, invalid argument, internal, …).
///
/// ```
/// # #[derive(Debug)] enum AuthError { InvalidCredentials, AccountLocked }
/// # fn show(result: Result<(), warren::RpcError<AuthError>>) {
/// match result {
///     Ok(()) => {}
///     Err(warren::RpcError::Service(AuthError::InvalidCredentials)) => println!("wrong password"),
///     Err(warren::RpcError::Service(AuthError::AccountLocked)) => println!("locked"),
///     Err(warren::RpcError::Status(status)) => println!("call failed: {status}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum RpcError<E> {
    /// One of the errors the contract declares for the method.
    Service(E),
    /// A failure outside the contract's errors.
    Status(Status),
}

impl<E> RpcError<E> {
    /// The status, when the failure is not one of the declared errors.
    pub fn status(&self) -> Option<&Status> {
        match self {
            RpcError::Service(_) => None,
            RpcError::Status(status) => Some(status),
        }
    }

    /// The status code; a declared error travels as `UNKNOWN`.
    pub fn code(&self) -> Code {
        match self {
            RpcError::Service(_) => Code::Unknown,
            RpcError::Status(status) => status.code(),
        }
    }
}

impl<E> From<Status> for RpcError<E> {
    fn from(status: Status) -> Self {
        RpcError::Status(status)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for RpcError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcError::Service(error) => error.fmt(f),
            RpcError::Status(status) => status.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RpcError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RpcError::Service(error) => Some(error),
            RpcError::Status(status) => Some(status),
        }
    }
}

/// The errors a method declares: the enum of an error message's oneof. Implemented by generated code.
pub trait ServiceError: std::fmt::Display + Sized + Send + 'static {
    /// The error message, whose oneof this enum is.
    type Message: Payload;
    /// Wraps the error in its message, to send it.
    fn into_message(self) -> Self::Message;
    /// The error a received message holds; `None` when it holds a case this side does not know.
    fn from_message(message: Self::Message) -> Option<Self>;
}

/// How a server handler failed, as it is sent back. Used by generated servers.
pub enum Failure {
    /// A transport-level status.
    Status(Status),
    /// A declared error, encoded in the request's format when the reply is sent.
    Service(Box<dyn DeclaredError>),
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(status) => f.debug_tuple("Status").field(status).finish(),
            Failure::Service(error) => f.debug_tuple("Service").field(&error.describe()).finish(),
        }
    }
}

/// A declared error with its type erased, for [`Failure`].
pub trait DeclaredError: Send {
    /// Full proto name of the error message.
    fn type_name(&self) -> &'static str;
    /// Human-readable description.
    fn describe(&self) -> String;
    /// The error message, encoded.
    fn encode(self: Box<Self>, format: WireFormat) -> Result<Vec<u8>>;
}

impl<E: ServiceError> DeclaredError for E {
    fn type_name(&self) -> &'static str {
        E::Message::TYPE_NAME
    }

    fn describe(&self) -> String {
        self.to_string()
    }

    fn encode(self: Box<Self>, format: WireFormat) -> Result<Vec<u8>> {
        codec::encode(&self.into_message(), format)
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Status(status)
    }
}

impl<E: ServiceError> From<RpcError<E>> for Failure {
    fn from(error: RpcError<E>) -> Self {
        match error {
            RpcError::Service(error) => Failure::Service(Box::new(error)),
            RpcError::Status(status) => Failure::Status(status),
        }
    }
}
