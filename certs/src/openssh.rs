//! The OpenSSH key formats for ECDSA keys: the one-line public key (`ecdsa-sha2-nistp256 AAAA... comment`)
//! and the `openssh-key-v1` private key, unencrypted, as `ssh-keygen -N ""` writes them.

use crate::keys::{Curve, IdentityKey, PublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const MAGIC: &[u8] = b"openssh-key-v1\0";
const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const END: &str = "-----END OPENSSH PRIVATE KEY-----";

/// Appends an SSH `string` (u32 big-endian length, then the bytes).
pub fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends an SSH `mpint` for a non-negative big-endian integer.
fn put_mpint(out: &mut Vec<u8>, magnitude: &[u8]) {
    let trimmed = match magnitude.iter().position(|&b| b != 0) {
        Some(start) => &magnitude[start..],
        None => &[][..],
    };
    if trimmed.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut padded = Vec::with_capacity(trimmed.len() + 1);
        padded.push(0);
        padded.extend_from_slice(trimmed);
        put_string(out, &padded);
    } else {
        put_string(out, trimmed);
    }
}

/// A cursor over SSH wire data; every read is bounds-checked.
struct Reader<'a> {
    /// Bytes not yet consumed.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err("truncated key data".into());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

fn curve_from_key_type(key_type: &[u8]) -> Result<Curve, String> {
    match key_type {
        b"ecdsa-sha2-nistp256" => Ok(Curve::P256),
        b"ecdsa-sha2-nistp384" => Ok(Curve::P384),
        b"ecdsa-sha2-nistp521" => {
            Err("ECDSA P-521 keys are not supported; use P-256 or P-384".into())
        }
        other => Err(format!(
            "key type {:?} is not supported; use an ECDSA key (ssh-keygen -t ecdsa)",
            String::from_utf8_lossy(other)
        )),
    }
}

/// Parses a public key blob (`string type, string curve, string point`).
fn parse_public_blob(blob: &[u8]) -> Result<PublicKey, String> {
    let mut reader = Reader { rest: blob };
    let curve = curve_from_key_type(reader.string()?)?;
    let curve_name = reader.string()?;
    if curve_name != curve.ssh_name().as_bytes() {
        return Err("curve name does not match the key type".into());
    }
    let point = reader.string()?;
    if !reader.rest.is_empty() {
        return Err("trailing bytes in the public key".into());
    }
    PublicKey::from_sec1(curve, point).map_err(|e| e.to_string())
}

/// A parsed public key line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyLine {
    /// The key.
    pub key: PublicKey,
    /// The comment after the key (an operator's or a node's name), possibly empty.
    pub comment: String,
}

/// Parses one OpenSSH public key line.
pub fn parse_public_line(line: &str) -> Result<PublicKeyLine, String> {
    let mut fields = line.split_whitespace();
    let key_type = fields.next().ok_or("empty public key")?;
    let encoded = fields.next().ok_or("missing key data after the key type")?;
    let comment = fields.collect::<Vec<_>>().join(" ");
    curve_from_key_type(key_type.as_bytes())?;
    let blob = STANDARD
        .decode(encoded)
        .map_err(|_| "key data is not valid base64".to_string())?;
    let key = parse_public_blob(&blob)?;
    if key.curve().ssh_key_type() != key_type {
        return Err("the key type does not match the key data".into());
    }
    Ok(PublicKeyLine { key, comment })
}

/// Formats a public key line (`type base64 comment`).
pub fn format_public_line(key: &PublicKey, comment: &str) -> String {
    let mut line = format!(
        "{} {}",
        key.curve().ssh_key_type(),
        STANDARD.encode(key.ssh_blob())
    );
    if !comment.is_empty() {
        line.push(' ');
        line.push_str(comment);
    }
    line
}

/// Whether `text` looks like an OpenSSH private key file.
pub fn is_private_key(text: &str) -> bool {
    text.trim_start().starts_with(BEGIN)
}

/// Parses an unencrypted `openssh-key-v1` private key; returns the key and its comment.
pub fn parse_private_key(text: &str) -> Result<(IdentityKey, String), String> {
    let body = text
        .trim()
        .strip_prefix(BEGIN)
        .and_then(|rest| rest.trim_end().strip_suffix(END))
        .ok_or("not an OpenSSH private key (missing BEGIN/END lines)")?;
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let data = STANDARD
        .decode(compact)
        .map_err(|_| "key body is not valid base64".to_string())?;
    let mut reader = Reader { rest: &data };
    if reader.take(MAGIC.len())? != MAGIC {
        return Err("not an openssh-key-v1 key".into());
    }
    let cipher = reader.string()?;
    let _kdf = reader.string()?;
    let _kdf_options = reader.string()?;
    if cipher != b"none" {
        return Err(
            "the key is encrypted; remove its passphrase with `ssh-keygen -p -N \"\" -f FILE`"
                .into(),
        );
    }
    if reader.u32()? != 1 {
        return Err("files holding several keys are not supported".into());
    }
    let public = parse_public_blob(reader.string()?)?;
    let mut private = Reader {
        rest: reader.string()?,
    };
    if private.u32()? != private.u32()? {
        return Err("corrupt private section (check values differ)".into());
    }
    let curve = curve_from_key_type(private.string()?)?;
    if private.string()? != curve.ssh_name().as_bytes() {
        return Err("curve name does not match the key type".into());
    }
    let point = private.string()?;
    let scalar = private.string()?;
    let comment = String::from_utf8_lossy(private.string()?).into_owned();
    let scalar = strip_mpint(scalar, curve.scalar_len())?;
    let key = IdentityKey::from_scalar(curve, &scalar).map_err(|e| e.to_string())?;
    if key.public_key() != public || key.public_key().sec1_uncompressed() != point {
        return Err("the private key does not match its public key".into());
    }
    Ok((key, comment))
}

/// Converts an mpint magnitude into a fixed-width big-endian scalar.
fn strip_mpint(mpint: &[u8], width: usize) -> Result<Vec<u8>, String> {
    let start = mpint.iter().position(|&b| b != 0).unwrap_or(mpint.len());
    let digits = &mpint[start..];
    if digits.len() > width {
        return Err("private scalar too large for the curve".into());
    }
    let mut scalar = vec![0u8; width - digits.len()];
    scalar.extend_from_slice(digits);
    Ok(scalar)
}

/// Formats an unencrypted `openssh-key-v1` private key, readable by `ssh-keygen`.
pub fn format_private_key(key: &IdentityKey, comment: &str) -> String {
    let public = key.public_key();
    let mut private = Vec::new();
    let check: u32 = rand::random();
    private.extend_from_slice(&check.to_be_bytes());
    private.extend_from_slice(&check.to_be_bytes());
    put_string(&mut private, key.curve().ssh_key_type().as_bytes());
    put_string(&mut private, key.curve().ssh_name().as_bytes());
    put_string(&mut private, &public.sec1_uncompressed());
    put_mpint(&mut private, &key.scalar_bytes());
    put_string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while !private.len().is_multiple_of(8) {
        private.push(pad);
        pad += 1;
    }

    let mut data = MAGIC.to_vec();
    put_string(&mut data, b"none");
    put_string(&mut data, b"none");
    put_string(&mut data, b"");
    data.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut data, &public.ssh_blob());
    put_string(&mut data, &private);

    let encoded = STANDARD.encode(&data);
    let mut text = String::from(BEGIN);
    text.push('\n');
    for line in encoded.as_bytes().chunks(70) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(END);
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_key_round_trips() {
        let key = IdentityKey::generate();
        let text = format_private_key(&key, "node-1");
        let (parsed, comment) = parse_private_key(&text).unwrap();
        assert_eq!(parsed.public_key(), key.public_key());
        assert_eq!(comment, "node-1");
    }

    #[test]
    fn public_line_round_trips_with_comment() {
        let key = IdentityKey::generate().public_key();
        let line = format_public_line(&key, "alice at lab");
        let parsed = parse_public_line(&line).unwrap();
        assert_eq!(parsed.key, key);
        assert_eq!(parsed.comment, "alice at lab");
    }

    #[test]
    fn every_truncation_of_a_private_key_is_refused() {
        let text = format_private_key(&IdentityKey::generate(), "x");
        for cut in 0..text.len() - 40 {
            assert!(
                parse_private_key(&text[..cut]).is_err(),
                "cut at {cut} accepted"
            );
        }
    }

    #[test]
    fn rsa_and_ed25519_lines_are_refused_with_a_reason() {
        let error = parse_public_line(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x",
        )
        .unwrap_err();
        assert!(error.contains("not supported"), "{error}");
    }

    #[test]
    fn mpint_with_high_bit_gets_a_leading_zero() {
        let mut out = Vec::new();
        put_mpint(&mut out, &[0x00, 0x80, 0x01]);
        assert_eq!(out, [0, 0, 0, 3, 0, 0x80, 0x01]);
    }
}
