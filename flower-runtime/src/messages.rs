//! Messages between this project's form and Flower's: metadata (times in seconds as Flower keeps
//! them, rather than milliseconds) and errors (Flower's numeric codes). Records cross in
//! [`crate::records`]; a message's id on Flower's side is the id of its object tree, so it is
//! set where a message is deflated, not here.

use crate::proto;
use wire::message::{ErrorCode, MessageError};
use wire::{Message, MessageBody};

/// Flower's error codes (`flwr.common.constant.ErrorCode`).
pub mod code {
    /// Anything else.
    pub const UNKNOWN: i64 = 0;
    /// The ClientApp could not be loaded.
    pub const LOAD_CLIENT_APP_EXCEPTION: i64 = 1;
    /// The ClientApp raised an exception.
    pub const CLIENT_APP_RAISED_EXCEPTION: i64 = 2;
    /// The instruction is unknown or expired.
    pub const MESSAGE_UNAVAILABLE: i64 = 3;
    /// The reply expired.
    pub const REPLY_MESSAGE_UNAVAILABLE: i64 = 4;
    /// The destination node is offline or unknown.
    pub const NODE_UNAVAILABLE: i64 = 5;
    /// A mod refused the message.
    pub const MOD_FAILED_PRECONDITION: i64 = 6;
    /// The FAB could not be installed.
    pub const INVALID_FAB: i64 = 7;
    /// The ClientApp process ended without a reply.
    pub const CLIENT_APP_CRASHED: i64 = 8;
}

/// Seconds, as Flower keeps times, of `ms` milliseconds.
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// An instruction's metadata as Flower's: the same run, nodes, group, type and lifetime; no
/// message id (its object tree's id becomes it).
pub fn metadata_to_proto(message: &Message) -> proto::Metadata {
    let metadata = &message.metadata;
    proto::Metadata {
        run_id: metadata.run_id.0,
        message_id: String::new(),
        src_node_id: metadata.src_node_id.0,
        dst_node_id: metadata.dst_node_id.0,
        reply_to_message_id: String::new(),
        group_id: metadata.group_id.clone(),
        ttl: seconds(metadata.ttl_ms),
        message_type: metadata.message_type.as_str().to_string(),
        created_at: seconds(metadata.created_at_ms),
        ..proto::Metadata::default()
    }
}

/// A Flower error as this project's: the code mapped where it means the same here and kept as
/// [`ErrorCode::Flower`] otherwise, and the reason as given, so that it goes back to Flower as it
/// came ([`error_to_proto`]).
pub fn error_from_proto(error: &proto::Error) -> MessageError {
    let code = match error.code {
        code::CLIENT_APP_RAISED_EXCEPTION => ErrorCode::ClientAppRaisedException,
        code::MESSAGE_UNAVAILABLE => ErrorCode::MessageUnavailable,
        code::NODE_UNAVAILABLE => ErrorCode::NodeUnavailable,
        other => ErrorCode::Flower(other),
    };
    MessageError {
        code,
        reason: error.reason.clone(),
    }
}

/// This project's error as Flower's.
pub fn error_to_proto(error: &MessageError) -> proto::Error {
    let code = match error.code {
        ErrorCode::ClientAppRaisedException => code::CLIENT_APP_RAISED_EXCEPTION,
        ErrorCode::MessageUnavailable => code::MESSAGE_UNAVAILABLE,
        ErrorCode::NodeUnavailable => code::NODE_UNAVAILABLE,
        ErrorCode::UnknownApp | ErrorCode::UntrustedApp => code::LOAD_CLIENT_APP_EXCEPTION,
        ErrorCode::InvalidReply | ErrorCode::RunStopped => code::UNKNOWN,
        ErrorCode::Flower(code) => code,
    };
    proto::Error {
        code,
        reason: error.reason.clone(),
    }
}

/// A message body as Flower's.
pub fn body_to_objects(body: &MessageBody) -> crate::objects::Body {
    match body {
        MessageBody::Content(content) => crate::objects::Body::Content(content.clone()),
        MessageBody::Error(error) => crate::objects::Body::Error(error_to_proto(error)),
    }
}

/// A Flower message body as this project's.
pub fn body_from_objects(body: crate::objects::Body) -> MessageBody {
    match body {
        crate::objects::Body::Content(content) => MessageBody::Content(content),
        crate::objects::Body::Error(error) => MessageBody::Error(error_from_proto(&error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flower_error_goes_back_to_flower_as_it_came() {
        for flower_code in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, -1, i64::MAX] {
            let error = proto::Error {
                code: flower_code,
                reason: "ValueError: boom\n  at line 3".into(),
            };
            assert_eq!(error_to_proto(&error_from_proto(&error)), error);
        }
        let raised = error_from_proto(&proto::Error {
            code: code::CLIENT_APP_RAISED_EXCEPTION,
            reason: String::new(),
        });
        assert_eq!(raised.code, ErrorCode::ClientAppRaisedException);
        let offline = error_from_proto(&proto::Error {
            code: code::NODE_UNAVAILABLE,
            reason: String::new(),
        });
        assert_eq!(offline.code, ErrorCode::NodeUnavailable);
    }
}
