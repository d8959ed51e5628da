//! The SuperLink's ServerAppIo API: where the server app program of a run connects back
//! (`--serverappio-api-address`, 127.0.0.1:9091 by default, as in Flower). A connection is
//! handed to the run whose one-time token it shows in its hello; anything else is dropped
//! without a word. Only this host's processes may connect ([`ops::token_gate`] holds the bounds).

use ops::token_gate::{Bound, HelloFuture, Rules, Shown, TokenGate};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use wire::clientappio::{AppHello, HELLO_FRAME_LIMIT, TOKEN_LEN};
use wire::io::read_value;
use wire::serverappio::SERVERAPPIO_VERSION;

pub use ops::token_gate::bind;

/// A one-time token.
pub type Token = [u8; TOKEN_LEN];

/// The SuperLink's side of the ServerAppIo API.
pub struct ServerAppIo {
    gate: Arc<TokenGate<Token>>,
}

/// A program's hello: this API's version and a token.
fn read_hello(stream: &mut TcpStream) -> HelloFuture<'_, Token> {
    Box::pin(async move {
        let hello = read_value::<AppHello, _>(stream, HELLO_FRAME_LIMIT)
            .await
            .map_err(|e| format!("it sent no ServerAppIo hello: {e}"))?;
        if hello.version != SERVERAPPIO_VERSION {
            return Err(format!(
                "its hello is of ServerAppIo version {} (this SuperLink speaks version \
                 {SERVERAPPIO_VERSION})",
                hello.version
            ));
        }
        Ok(Shown::Token(hello.token))
    })
}

impl ServerAppIo {
    /// The API over `bound`, served until `shutdown`.
    pub fn serve(bound: Bound, shutdown: CancellationToken) -> std::io::Result<Arc<Self>> {
        let rules = Rules {
            api: "ServerAppIo",
            allow_remote: false,
            remote_hint: "",
            accept_any: false,
            any_refused: "a ServerAppIo connection showed no token; dropped",
        };
        let gate = TokenGate::serve(bound, rules, read_hello, shutdown)?;
        Ok(Arc::new(ServerAppIo { gate }))
    }

    /// The address programs connect to.
    pub fn address(&self) -> SocketAddr {
        self.gate.address()
    }

    /// A fresh token, and where the connection showing it will arrive.
    pub fn expect(&self) -> (Token, oneshot::Receiver<TcpStream>) {
        let token: Token = rand::random();
        (token, self.gate.expect(token))
    }

    /// Stops waiting for `token`.
    pub fn forget(&self, token: &Token) {
        self.gate.forget(token);
    }

    /// `reason` a program failed to connect, with what the API refused since `since` (see
    /// [`TokenGate::explained`]).
    pub fn explained(&self, reason: String, since: std::time::Instant) -> String {
        self.gate.explained(reason, since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the hello reader makes of `bytes`.
    async fn shown(bytes: Vec<u8>) -> Result<Shown<Token>, String> {
        ops::token_gate::shown_by(read_hello, bytes).await
    }

    #[tokio::test]
    async fn a_hello_shows_a_token_in_this_apis_version_only() {
        let hello = |version, token| wire::frame::encode(&AppHello { version, token }).unwrap();
        assert_eq!(
            shown(hello(SERVERAPPIO_VERSION, [1; TOKEN_LEN])).await,
            Ok(Shown::Token([1; TOKEN_LEN]))
        );
        assert!(
            shown(hello(SERVERAPPIO_VERSION + 1, [1; TOKEN_LEN]))
                .await
                .is_err_and(|why| why.contains(&format!(
                    "version {} (this SuperLink speaks version {SERVERAPPIO_VERSION})",
                    SERVERAPPIO_VERSION + 1
                )))
        );
        assert!(shown(vec![0xFF; 16]).await.is_err());
    }
}
