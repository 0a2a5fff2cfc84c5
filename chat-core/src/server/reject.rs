//! Why a client command was refused: the error frame's code and message, the strikes it
//! costs, and whether it also ends the connection.

use super::outputs::CloseReason;
use crate::protocol::ErrorCode;

/// A refused command. Commands return it; the dispatcher turns it into the `error`
/// frame (with the command's request id), the `Rejected` event, the strikes and, when
/// set or when the strikes run out, the close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reject {
    pub code: ErrorCode,
    pub message: String,
    /// Counted against the session; too many close it as a flood.
    pub strikes: u32,
    /// Close the connection after the error frame.
    pub close: Option<CloseReason>,
}

impl Reject {
    /// A refusal that costs one strike: the usual answer to a command that cannot be done.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Reject {
        Reject {
            code,
            message: message.into(),
            strikes: 1,
            close: None,
        }
    }

    /// A refusal that is not the client's fault (the server is shutting down, the store
    /// failed): no strike.
    pub fn blameless(code: ErrorCode, message: impl Into<String>) -> Reject {
        Reject {
            strikes: 0,
            ..Reject::new(code, message)
        }
    }

    /// A frame that could not be decoded: two strikes.
    pub fn bad_frame(message: String) -> Reject {
        Reject {
            strikes: 2,
            ..Reject::new(ErrorCode::BadFrame, message)
        }
    }

    /// The connection ends after the error frame (no strike: it is closed anyway).
    pub fn closing(code: ErrorCode, message: impl Into<String>, reason: CloseReason) -> Reject {
        Reject {
            close: Some(reason),
            ..Reject::blameless(code, message)
        }
    }

    /// `join {room} first`: the session is not in the room.
    pub fn not_member(room: impl std::fmt::Display) -> Reject {
        Reject::new(ErrorCode::NotMember, format!("join {room} first"))
    }
}
