//! Who may look at the dashboard.
//!
//! Without operator keys the dashboard, like the Control API, answers loopback clients only, and
//! only for a loopback host name (`localhost`, `127.0.0.1`, `[::1]`): a web page elsewhere that
//! rebinds its own name to 127.0.0.1 cannot read it through the visitor's browser.
//!
//! With operator keys, a browser gets in with a login link that `flwr dashboard` asks for over
//! the Control API, signed in with the operator's key: the link's token works once and for
//! [`LINK_LIFETIME`], and buys a session cookie (HttpOnly, SameSite=Strict, Secure over TLS)
//! that expires after [`SESSION_LIFETIME`]. No password, no new secret to keep: the key that
//! runs the federation opens the dashboard. Tokens are 256 random bits, kept only as their
//! SHA-256, so a memory dump holds nothing a browser could present.

use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a login link works.
pub const LINK_LIFETIME: Duration = Duration::from_secs(120);

/// How long a session lasts from its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// Most login links outstanding; the oldest goes when another is issued.
pub const MAX_LINKS: usize = 64;

/// Most sessions at once; the oldest goes when another starts.
pub const MAX_SESSIONS: usize = 256;

/// The session cookie's name over plain HTTP (loopback).
pub const COOKIE: &str = "flwr-dashboard";

/// Its name over HTTPS: the `__Host-` prefix makes browsers keep it to this host, `Secure`, with
/// `Path=/` and no `Domain`, so a sibling subdomain or another service cannot plant one that
/// shadows it.
pub const SECURE_COOKIE: &str = "__Host-flwr-dashboard";

/// The cookie's name with or without TLS.
pub fn cookie_name(tls: bool) -> &'static str {
    if tls { SECURE_COOKIE } else { COOKIE }
}

/// A token's digest: what the tables keep.
type Digest = [u8; 32];

fn digest(token: &str) -> Digest {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh token: 256 random bits in hex.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who the dashboard lets in.
pub enum Access {
    /// Loopback clients asking for a loopback host (no operator keys).
    Loopback,
    /// Browsers holding a session that a login link started.
    Operators(Logins),
}

/// Something an operator holds until it expires.
struct Grant {
    operator: String,
    expires: Instant,
}

/// Outstanding login links and live sessions.
pub struct Logins {
    links: Mutex<HashMap<Digest, Grant>>,
    sessions: Mutex<HashMap<Digest, Grant>>,
    link_lifetime: Duration,
    session_lifetime: Duration,
}

/// Inserts `grant` under `key`, first dropping expired entries and then, at `max`, the one that
/// expires first.
fn insert_bounded(table: &mut HashMap<Digest, Grant>, key: Digest, grant: Grant, max: usize) {
    let now = Instant::now();
    table.retain(|_, grant| grant.expires > now);
    if table.len() >= max
        && let Some(oldest) = table
            .iter()
            .min_by_key(|(_, grant)| grant.expires)
            .map(|(key, _)| *key)
    {
        table.remove(&oldest);
    }
    table.insert(key, grant);
}

impl Logins {
    /// Links and sessions with the given lifetimes (tests shorten them).
    pub fn new(link_lifetime: Duration, session_lifetime: Duration) -> Self {
        Logins {
            links: Mutex::default(),
            sessions: Mutex::default(),
            link_lifetime,
            session_lifetime,
        }
    }

    /// How long a link works.
    pub fn link_lifetime(&self) -> Duration {
        self.link_lifetime
    }

    /// How long a session lasts.
    pub fn session_lifetime(&self) -> Duration {
        self.session_lifetime
    }

    /// A login link's token for `operator`.
    pub fn issue_link(&self, operator: &str) -> String {
        let token = new_token();
        let grant = Grant {
            operator: operator.to_string(),
            expires: Instant::now() + self.link_lifetime,
        };
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        insert_bounded(&mut links, digest(&token), grant, MAX_LINKS);
        token
    }

    /// Spends a link's token: a new session's token and its operator, or `None` for a token
    /// that is unknown, used or expired.
    pub fn redeem(&self, token: &str) -> Option<(String, String)> {
        let grant = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest(token))?;
        if grant.expires <= Instant::now() {
            return None;
        }
        let session = new_token();
        let operator = grant.operator.clone();
        let grant = Grant {
            operator: grant.operator,
            expires: Instant::now() + self.session_lifetime,
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        insert_bounded(&mut sessions, digest(&session), grant, MAX_SESSIONS);
        Some((session, operator))
    }

    /// The operator whose live session `token` is.
    pub fn session(&self, token: &str) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let grant = sessions.get(&digest(token))?;
        (grant.expires > Instant::now()).then(|| grant.operator.clone())
    }
}

/// Every value a `Cookie` header gives the session cookie `name`: other services on the host can
/// set one of that name too (without TLS), and a browser sends all of them.
pub fn session_cookies<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> {
    header.split(';').filter_map(move |pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(token: &str, lifetime: Duration, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!(
        "{}={token}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        cookie_name(tls),
        lifetime.as_secs()
    )
}

pub use ops::http::is_loopback_host;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_works_once_and_a_session_is_known_by_its_cookie() {
        let logins = Logins::new(LINK_LIFETIME, SESSION_LIFETIME);
        let link = logins.issue_link("alice");
        let (session, operator) = logins.redeem(&link).expect("a fresh link");
        assert_eq!(operator, "alice");
        assert!(logins.redeem(&link).is_none(), "a second use");
        assert_eq!(logins.session(&session).as_deref(), Some("alice"));
        assert!(logins.session(&link).is_none(), "a link is not a session");
        assert!(logins.session("00").is_none());
        let header = format!("theme=dark; {COOKIE}=planted; {COOKIE}={session}");
        let values: Vec<&str> = session_cookies(&header, COOKIE).collect();
        assert_eq!(values, ["planted", session.as_str()]);
        assert!(values.iter().any(|v| logins.session(v).is_some()));
    }

    #[test]
    fn expired_links_and_sessions_open_nothing() {
        let logins = Logins::new(Duration::ZERO, SESSION_LIFETIME);
        assert!(logins.redeem(&logins.issue_link("alice")).is_none());
        let logins = Logins::new(LINK_LIFETIME, Duration::ZERO);
        let (session, _) = logins.redeem(&logins.issue_link("alice")).unwrap();
        assert!(logins.session(&session).is_none());
    }

    #[test]
    fn links_and_sessions_are_bounded_oldest_first() {
        let logins = Logins::new(LINK_LIFETIME, SESSION_LIFETIME);
        let first = logins.issue_link("alice");
        for _ in 0..MAX_LINKS {
            logins.issue_link("alice");
        }
        assert_eq!(logins.links.lock().unwrap().len(), MAX_LINKS);
        assert!(logins.redeem(&first).is_none(), "the oldest link went");
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let cookie = set_cookie("abc", SESSION_LIFETIME, true);
        assert!(cookie.starts_with("__Host-flwr-dashboard=abc; Path=/;"));
        assert!(cookie.contains("HttpOnly"));
        assert!(cookie.contains("SameSite=Strict"));
        assert!(cookie.ends_with("; Secure"));
        assert!(!set_cookie("abc", SESSION_LIFETIME, false).contains("Secure"));
    }
}
