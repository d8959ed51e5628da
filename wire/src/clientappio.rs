//! The ClientAppIo API: a node and the `flwr-clientapp` process it starts for one instruction
//! (Flower's subprocess isolation), over TCP on the node's `--clientappio-api-address`.
//!
//! The child connects and sends [`AppHello`] with the one-time token the node gave it in its
//! environment ([`TOKEN_ENV`]); a connection without a token the node is waiting for gets
//! nothing. The node answers with [`AppJob`] followed by the instruction as a message stream;
//! the child sends the reply as a message stream and exits. A child that dies instead (abort, out
//! of memory, a signal) costs only that instruction: the node answers it with an error.
//!
//! Under process isolation the operator starts long-lived client app processes instead: each
//! shows [`PULL_TOKEN`], is handed the next instruction waiting for a process, answers it the same
//! way, and connects again for the next one.

use crate::fleet::InstructionHeader;
use crate::{ConfigRecord, NodeId};
use serde::{Deserialize, Serialize};

/// Version of this API; a child of another version is refused. Version 2 added the run's bundle
/// to the instruction header of [`AppJob`]; version 3 carries records and messages as Flower has
/// them (message types as text, list values, serialised arrays, Flower's own error codes).
pub const CLIENTAPPIO_VERSION: u16 = 3;

/// The environment variable carrying the token, hex-encoded (not a flag: flags are visible to
/// every local user in the process list).
pub const TOKEN_ENV: &str = "FLWR_CLIENTAPP_TOKEN";

/// The environment variable carrying the address of the node's ClientAppIo API (`host:port`)
/// for a program the node starts.
pub const ADDRESS_ENV: &str = "FLWR_CLIENTAPPIO_ADDRESS";

/// Length of a token in bytes.
pub const TOKEN_LEN: usize = 32;

/// The token shown by a client app process that the operator started (Flower's process
/// isolation, `flower-supernode --isolation process`): it asks for the next instruction waiting
/// for a process rather than for one it was started for. A node in any other mode drops it.
pub const PULL_TOKEN: [u8; TOKEN_LEN] = [0; TOKEN_LEN];

/// Largest [`AppJob`] frame.
pub const CONTROL_FRAME_LIMIT: u32 = 1024 * 1024;

/// Largest [`AppHello`] frame: its exact encoded size at most (a version of up to three varint
/// bytes and the token), so a connection that has shown no token costs a few bytes of buffer.
pub const HELLO_FRAME_LIMIT: u32 = 3 + TOKEN_LEN as u32;

/// Child to node, first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppHello {
    /// [`CLIENTAPPIO_VERSION`] of the child.
    pub version: u16,
    /// The token from [`TOKEN_ENV`].
    pub token: [u8; TOKEN_LEN],
}

/// Node to child: what to run. The instruction follows as a message stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppJob {
    /// The node the child works for.
    pub node_id: NodeId,
    /// The node's `--node-config`.
    pub node_config: ConfigRecord,
    /// App name, version and run config, as the broker sent them.
    pub header: InstructionHeader,
}

/// Hex text of a token.
pub fn encode_token(token: &[u8; TOKEN_LEN]) -> String {
    token.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token from its hex text; `None` unless it is exactly [`TOKEN_LEN`] bytes of hex.
pub fn decode_token(text: &str) -> Option<[u8; TOKEN_LEN]> {
    let text = text.trim();
    if text.len() != TOKEN_LEN * 2 || !text.is_ascii() {
        return None;
    }
    let mut token = [0u8; TOKEN_LEN];
    for (byte, pair) in token.iter_mut().zip(text.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_hello_fits_its_limit_exactly() {
        let hello = AppHello {
            version: u16::MAX,
            token: [0xFF; TOKEN_LEN],
        };
        let payload = postcard::to_stdvec(&hello).unwrap();
        assert_eq!(payload.len(), HELLO_FRAME_LIMIT as usize);
    }

    #[test]
    fn tokens_round_trip_through_hex_and_malformed_text_is_refused() {
        let token: [u8; TOKEN_LEN] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(decode_token(&encode_token(&token)), Some(token));
        assert_eq!(decode_token("00"), None);
        assert_eq!(decode_token(&"zz".repeat(TOKEN_LEN)), None);
        assert_eq!(decode_token(&"é".repeat(TOKEN_LEN)), None);
    }
}
