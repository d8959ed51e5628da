//! Who sent a Fleet request, as Flower's SuperNode proves it: its public key (PEM, base64) in
//! `flwr-public-key`, the time in `flwr-timestamp` (ISO 8601), and its ECDSA signature of that
//! time (DER, base64) in `flwr-signature`. A signature is accepted within Flower's window (signed
//! at most 5 s in the future and less than 305 s ago) and, unlike Flower's SuperLink, once: a
//! request copied off the wire cannot be sent again while its signature is fresh.

use base64::Engine as _;
use hyper::HeaderMap;
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The header with the SuperNode's public key.
pub const PUBLIC_KEY_HEADER: &str = "flwr-public-key";
/// The header with the time signed.
pub const TIMESTAMP_HEADER: &str = "flwr-timestamp";
/// The header with the signature.
pub const SIGNATURE_HEADER: &str = "flwr-signature";

/// How far ahead of this clock a signature's time may be (Flower's `SYSTEM_TIME_TOLERANCE`).
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// How old a signature may be (Flower's `TIMESTAMP_TOLERANCE` plus the skew).
pub const MAX_AGE: Duration = Duration::from_secs(305);

/// Most signatures remembered at once: with a few requests per node every few seconds, a
/// thousand nodes keep about a hundred thousand.
pub const MAX_REMEMBERED: usize = 1 << 20;

/// Most signatures of one key remembered at once: Flower's SuperNode sends about a hundred
/// requests in a window (a pull every 3 s), and a few thousand more to push a large model's
/// objects. A key beyond it is refused until its oldest signatures expire; the others are not.
pub const MAX_REMEMBERED_PER_KEY: usize = 8192;

/// Why a request's signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A header is missing or is not what it should hold.
    #[error("{0}")]
    Malformed(&'static str),
    /// The time signed is outside the window.
    #[error("the signed time is {0}")]
    Stale(&'static str),
    /// The signature does not verify with the key.
    #[error("the signature does not verify")]
    Forged,
    /// The signature was accepted before.
    #[error("the signature was used before")]
    Replayed,
    /// Too many signatures are remembered (of this key, or in all) to tell a replay.
    #[error("too many requests to check for replays")]
    Full,
}

/// A request's verified signer.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Its key.
    pub key: certs::PublicKey,
    /// The key as sent (PEM bytes), as register and activate requests also carry it.
    pub pem: Vec<u8>,
    /// The signature in canonical form, to remember once the request is admitted.
    signature: Vec<u8>,
    /// Until when the signature is valid.
    valid_until: SystemTime,
}

/// Checks the signature headers at `now`: the key, the time within the window, the signature.
pub fn verify(headers: &HeaderMap, now: SystemTime) -> Result<Signed, AuthError> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .ok_or(AuthError::Malformed("a signature header is missing"))
    };
    let base64 = |name: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(text(name)?)
            .map_err(|_| AuthError::Malformed("a signature header is not base64"))
    };
    let pem = base64(PUBLIC_KEY_HEADER)?;
    let signature = base64(SIGNATURE_HEADER)?;
    let timestamp = text(TIMESTAMP_HEADER)?;
    let signed_at =
        parse_iso(timestamp).ok_or(AuthError::Malformed("the timestamp is not ISO 8601"))?;
    if signed_at > now + CLOCK_SKEW {
        return Err(AuthError::Stale("in the future"));
    }
    let valid_until = signed_at + MAX_AGE;
    if valid_until <= now {
        return Err(AuthError::Stale("too old"));
    }
    let key = std::str::from_utf8(&pem)
        .ok()
        .and_then(|text| certs::load::parse_public_key(text).ok())
        .ok_or(AuthError::Malformed("the public key is not a PEM EC key"))?
        .key;
    let signature = key
        .verify_sha256_canonical(timestamp.as_bytes(), &signature)
        .ok_or(AuthError::Forged)?;
    Ok(Signed {
        key,
        pem,
        signature,
        valid_until,
    })
}

/// A time as Python's `datetime.isoformat()` writes it (`2026-12-06T19:00:00.123456+00:00`), or
/// with `Z`; any offset.
pub fn parse_iso(text: &str) -> Option<SystemTime> {
    let (naive, offset) = match text.strip_suffix('Z') {
        Some(naive) => (naive, 0i64),
        None => {
            let split = text.len().checked_sub(6)?;
            let (naive, offset) = (text.get(..split)?, text.get(split..)?);
            let sign = match offset.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (hours, minutes) = offset.get(1..)?.split_once(':')?;
            let hours: i64 = hours.parse().ok()?;
            let minutes: i64 = minutes.parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            (naive, sign * (hours * 3600 + minutes * 60))
        }
    };
    if !naive.contains('T') {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(naive).ok()?;
    let shift = Duration::from_secs(offset.unsigned_abs());
    // A time at +02:00 is two hours ahead of UTC: UTC is the local time minus the offset.
    if offset >= 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

/// The signatures accepted and still valid: each is accepted once.
#[derive(Default)]
pub struct SeenSignatures {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    signatures: HashSet<Vec<u8>>,
    /// When each may be forgotten, with its key, in the order they came (nearly sorted: every
    /// entry's validity ends within the same window of its arrival).
    expiries: VecDeque<(SystemTime, Vec<u8>, Vec<u8>)>,
    /// How many each key has remembered.
    per_key: std::collections::HashMap<Vec<u8>, usize>,
}

impl SeenSignatures {
    /// Remembers `signed`'s signature until it is no longer valid; refuses one seen before, or
    /// any when [`MAX_REMEMBERED`] valid ones are remembered already.
    pub fn admit_once(&self, signed: &Signed, now: SystemTime) -> Result<(), AuthError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some((expiry, _, _)) = seen.expiries.front() {
            // An entry stays until the newest possible expiry passed: the window bounds how
            // much later an entry behind it may expire.
            if *expiry + MAX_AGE + CLOCK_SKEW > now {
                break;
            }
            if let Some((_, signature, key)) = seen.expiries.pop_front() {
                seen.signatures.remove(&signature);
                if let Some(count) = seen.per_key.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        seen.per_key.remove(&key);
                    }
                }
            }
        }
        if seen.signatures.contains(&signed.signature) {
            return Err(AuthError::Replayed);
        }
        let key = signed.key.to_spki_der();
        let of_key = seen.per_key.get(&key).copied().unwrap_or(0);
        if seen.signatures.len() >= MAX_REMEMBERED || of_key >= MAX_REMEMBERED_PER_KEY {
            return Err(AuthError::Full);
        }
        seen.signatures.insert(signed.signature.clone());
        seen.per_key.insert(key.clone(), of_key + 1);
        seen.expiries
            .push_back((signed.valid_until, signed.signature.clone(), key));
        Ok(())
    }

    /// How many signatures are remembered.
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .signatures
            .len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn signed_headers(key: &certs::IdentityKey, timestamp: &str) -> HeaderMap {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let pem = key.public_key().to_pem();
        let mut headers = HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            headers.insert(name, HeaderValue::from_str(&value).unwrap());
        };
        put(PUBLIC_KEY_HEADER, b64(pem.as_bytes()));
        put(TIMESTAMP_HEADER, timestamp.to_string());
        put(SIGNATURE_HEADER, b64(&key.sign(timestamp.as_bytes())));
        headers
    }

    fn at(text: &str) -> SystemTime {
        parse_iso(text).unwrap()
    }

    #[test]
    fn python_isoformat_times_parse_with_their_offset() {
        let utc = at("2026-12-06T19:00:00.250000+00:00");
        assert_eq!(at("2026-12-06T19:00:00.25Z"), utc);
        assert_eq!(at("2026-12-06T21:00:00.250000+02:00"), utc);
        assert_eq!(at("2026-12-06T18:30:00.250000-00:30"), utc);
        for bad in [
            "",
            "2026-12-06 19:00:00+00:00",
            "yesterday",
            "2026-12-06T19:00:00+24:00",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_signature_counts_within_flowers_window_only() {
        let key = certs::IdentityKey::generate();
        let now = at("2026-12-06T19:00:00+00:00");
        let ok = |time: &str| verify(&signed_headers(&key, time), now);
        assert!(ok("2026-12-06T19:00:04.900000+00:00").is_ok());
        assert!(ok("2026-12-06T18:55:00.100000+00:00").is_ok());
        assert_eq!(
            ok("2026-12-06T19:00:05.100000+00:00").unwrap_err(),
            AuthError::Stale("in the future")
        );
        assert_eq!(
            ok("2026-12-06T18:54:55+00:00").unwrap_err(),
            AuthError::Stale("too old")
        );
    }

    #[test]
    fn a_signature_by_another_key_or_of_another_time_is_forged() {
        let (key, other) = (
            certs::IdentityKey::generate(),
            certs::IdentityKey::generate(),
        );
        let now = at("2026-12-06T19:00:00+00:00");
        let mut headers = signed_headers(&key, "2026-12-06T19:00:00+00:00");
        let others = signed_headers(&other, "2026-12-06T19:00:00+00:00");
        headers.insert(SIGNATURE_HEADER, others[SIGNATURE_HEADER].clone());
        assert_eq!(verify(&headers, now).unwrap_err(), AuthError::Forged);
        let mut headers = signed_headers(&key, "2026-12-06T19:00:00+00:00");
        headers.insert(
            TIMESTAMP_HEADER,
            HeaderValue::from_static("2026-12-06T19:00:01+00:00"),
        );
        assert_eq!(verify(&headers, now).unwrap_err(), AuthError::Forged);
        headers.remove(SIGNATURE_HEADER);
        assert!(matches!(
            verify(&headers, now).unwrap_err(),
            AuthError::Malformed(_)
        ));
    }

    #[test]
    fn each_signature_is_admitted_once_while_it_is_valid() {
        let key = certs::IdentityKey::generate();
        let now = at("2026-12-06T19:00:00+00:00");
        let seen = SeenSignatures::default();
        let first = verify(&signed_headers(&key, "2026-12-06T19:00:00+00:00"), now).unwrap();
        let next = verify(
            &signed_headers(&key, "2026-12-06T19:00:00.000001+00:00"),
            now,
        )
        .unwrap();
        seen.admit_once(&first, now).unwrap();
        // The next request signs the next time: another signature.
        seen.admit_once(&next, now).unwrap();
        assert_eq!(seen.admit_once(&first, now), Err(AuthError::Replayed));
        // Long after, when it could no longer verify, it is forgotten.
        let later = now + MAX_AGE * 3;
        assert_eq!(seen.admit_once(&first, later), Ok(()));
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn a_key_over_its_quota_is_refused_and_the_others_are_not() {
        let (busy, quiet) = (
            certs::IdentityKey::generate(),
            certs::IdentityKey::generate(),
        );
        let now = at("2026-12-06T19:00:00+00:00");
        let seen = SeenSignatures::default();
        let signed = |key: &certs::IdentityKey, n: usize| {
            let time = format!(
                "2026-12-06T18:59:{:02}.{:06}+00:00",
                n / 1_000_000,
                n % 1_000_000
            );
            verify(&signed_headers(key, &time), now).unwrap()
        };
        for n in 0..MAX_REMEMBERED_PER_KEY {
            seen.admit_once(&signed(&busy, n), now).unwrap();
        }
        let over = signed(&busy, MAX_REMEMBERED_PER_KEY);
        assert_eq!(seen.admit_once(&over, now), Err(AuthError::Full));
        seen.admit_once(&signed(&quiet, 0), now).unwrap();
        // Once its signatures expire, the busy key may go on.
        assert_eq!(seen.admit_once(&over, now + MAX_AGE * 3), Ok(()));
    }
}
