//! ECDSA identity keys. P-256 is what we generate; P-384 is accepted because Flower's own scripts
//! (`ssh-keygen -t ecdsa -b 384`) make such keys.
//!
//! A public key's identity is its canonical SubjectPublicKeyInfo DER: the same bytes whether the key
//! came from an OpenSSH line, a PEM file or a peer's TLS certificate.

use crate::CertsError;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::elliptic_curve::Generate;
use p256::pkcs8::{DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use sha2::{Digest, Sha256};
use std::fmt;

/// Curves we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (`nistp256`).
    P256,
    /// NIST P-384 (`nistp384`).
    P384,
}

impl Curve {
    /// The OpenSSH curve identifier.
    pub fn ssh_name(self) -> &'static str {
        match self {
            Curve::P256 => "nistp256",
            Curve::P384 => "nistp384",
        }
    }

    /// The OpenSSH key type.
    pub fn ssh_key_type(self) -> &'static str {
        match self {
            Curve::P256 => "ecdsa-sha2-nistp256",
            Curve::P384 => "ecdsa-sha2-nistp384",
        }
    }

    /// Bit size, as `ssh-keygen -l` prints it.
    pub fn bits(self) -> u32 {
        match self {
            Curve::P256 => 256,
            Curve::P384 => 384,
        }
    }

    /// Length of a private scalar in bytes.
    pub fn scalar_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// A private identity key.
#[derive(Clone)]
pub enum IdentityKey {
    /// P-256.
    P256(p256::ecdsa::SigningKey),
    /// P-384.
    P384(p384::ecdsa::SigningKey),
}

// Never print key material, not even in debug output.
impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", self.public_key().fingerprint())
    }
}

impl IdentityKey {
    /// A fresh P-256 key from the operating system's randomness.
    pub fn generate() -> Self {
        IdentityKey::P256(p256::ecdsa::SigningKey::generate_from_rng(&mut rand::rng()))
    }

    /// The P-256 key number `index` of the family `secret` stands for: the same secret and index
    /// always give the same key, and knowing some of a family's keys tells nothing of the others
    /// nor of the secret (each scalar is a SHA-256 of the secret, the index and a counter, the
    /// counter stepping past the rare digest that is no valid scalar).
    pub fn derived(secret: &[u8], index: u64) -> Self {
        use sha2::Digest as _;
        (0u32..)
            .find_map(|counter| {
                let scalar = sha2::Sha256::new()
                    .chain_update(b"flower-rs derived identity key\0")
                    .chain_update((secret.len() as u64).to_be_bytes())
                    .chain_update(secret)
                    .chain_update(index.to_be_bytes())
                    .chain_update(counter.to_be_bytes())
                    .finalize();
                p256::ecdsa::SigningKey::from_slice(&scalar).ok()
            })
            .map(IdentityKey::P256)
            .unwrap_or_else(IdentityKey::generate)
    }

    /// Builds a key from its curve and big-endian private scalar.
    pub fn from_scalar(curve: Curve, scalar: &[u8]) -> Result<Self, CertsError> {
        let bad = |_| CertsError::Key(format!("invalid {} private scalar", curve.ssh_name()));
        Ok(match curve {
            Curve::P256 => {
                IdentityKey::P256(p256::ecdsa::SigningKey::from_slice(scalar).map_err(bad)?)
            }
            Curve::P384 => {
                IdentityKey::P384(p384::ecdsa::SigningKey::from_slice(scalar).map_err(bad)?)
            }
        })
    }

    /// The curve.
    pub fn curve(&self) -> Curve {
        match self {
            IdentityKey::P256(_) => Curve::P256,
            IdentityKey::P384(_) => Curve::P384,
        }
    }

    /// The big-endian private scalar (secret: never log it).
    pub fn scalar_bytes(&self) -> Vec<u8> {
        match self {
            IdentityKey::P256(key) => key.to_bytes().to_vec(),
            IdentityKey::P384(key) => key.to_bytes().to_vec(),
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            IdentityKey::P256(key) => PublicKey::P256(*key.verifying_key()),
            IdentityKey::P384(key) => PublicKey::P384(*key.verifying_key()),
        }
    }

    /// PKCS#8 DER, the form rustls and rcgen take (secret).
    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, CertsError> {
        let document = match self {
            IdentityKey::P256(key) => key.to_pkcs8_der(),
            IdentityKey::P384(key) => key.to_pkcs8_der(),
        }
        .map_err(|e| CertsError::Key(e.to_string()))?;
        Ok(document.as_bytes().to_vec())
    }

    /// A DER-encoded ECDSA signature over `message` (SHA-256 for P-256, SHA-384 for P-384).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            IdentityKey::P256(key) => {
                let signature: p256::ecdsa::Signature = key.sign(message);
                signature.to_der().as_bytes().to_vec()
            }
            IdentityKey::P384(key) => {
                let signature: p384::ecdsa::Signature = key.sign(message);
                signature.to_der().as_bytes().to_vec()
            }
        }
    }
}

/// A public identity key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PublicKey {
    /// P-256.
    P256(p256::ecdsa::VerifyingKey),
    /// P-384.
    P384(p384::ecdsa::VerifyingKey),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// Parses an uncompressed or compressed SEC1 point on `curve`.
    pub fn from_sec1(curve: Curve, point: &[u8]) -> Result<Self, CertsError> {
        let bad = |_| CertsError::Key(format!("not a valid {} public point", curve.ssh_name()));
        Ok(match curve {
            Curve::P256 => {
                PublicKey::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(bad)?)
            }
            Curve::P384 => {
                PublicKey::P384(p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(bad)?)
            }
        })
    }

    /// Parses a SubjectPublicKeyInfo DER; anything but an ECDSA key on P-256 or P-384 is refused.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CertsError> {
        if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::P256(key));
        }
        if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::P384(key));
        }
        Err(CertsError::Key(
            "not an ECDSA public key on NIST P-256 or P-384".into(),
        ))
    }

    /// The curve.
    pub fn curve(&self) -> Curve {
        match self {
            PublicKey::P256(_) => Curve::P256,
            PublicKey::P384(_) => Curve::P384,
        }
    }

    /// The uncompressed SEC1 point.
    pub fn sec1_uncompressed(&self) -> Vec<u8> {
        match self {
            PublicKey::P256(key) => key.to_sec1_point(false).as_bytes().to_vec(),
            PublicKey::P384(key) => key.to_sec1_point(false).as_bytes().to_vec(),
        }
    }

    /// The key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as Flower's SuperNode sends it.
    pub fn to_pem(&self) -> String {
        crate::files::pem_block("PUBLIC KEY", &self.to_spki_der())
    }

    /// The canonical SubjectPublicKeyInfo DER: this key's identity in the registry.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let document = match self {
            PublicKey::P256(key) => key.to_public_key_der(),
            PublicKey::P384(key) => key.to_public_key_der(),
        };
        // Encoding a valid point into a fixed ASN.1 structure cannot fail; an empty identity would
        // match nothing, which is the safe outcome should it ever happen.
        document.map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    /// The OpenSSH public key blob (`string type, string curve, string point`).
    pub fn ssh_blob(&self) -> Vec<u8> {
        let mut blob = Vec::new();
        crate::openssh::put_string(&mut blob, self.curve().ssh_key_type().as_bytes());
        crate::openssh::put_string(&mut blob, self.curve().ssh_name().as_bytes());
        crate::openssh::put_string(&mut blob, &self.sec1_uncompressed());
        blob
    }

    /// `SHA256:...`, exactly as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        use base64::Engine as _;
        let digest = Sha256::digest(self.ssh_blob());
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }

    /// Whether `signature` (DER) is a valid signature of `message` by this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::P256(key) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| key.verify(message, &s).is_ok()),
            PublicKey::P384(key) => p384::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| key.verify(message, &s).is_ok()),
        }
    }

    /// When `signature` (DER) is a valid ECDSA signature with SHA-256 of `message` by this key,
    /// as Flower signs on every curve, the one form every encoding of that signature shares (`r`
    /// and the low `s`, fixed width): an ECDSA signature `(r, s)` is as valid as `(r, n - s)`, so
    /// a check that each signature is used once must compare this form, not the bytes received.
    pub fn verify_sha256_canonical(&self, message: &[u8], signature: &[u8]) -> Option<Vec<u8>> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(message);
        match self {
            PublicKey::P256(key) => {
                let signature = p256::ecdsa::Signature::from_der(signature).ok()?;
                key.verify_prehash(&digest, &signature).ok()?;
                Some(signature.normalize_s().to_bytes().to_vec())
            }
            PublicKey::P384(key) => {
                let signature = p384::ecdsa::Signature::from_der(signature).ok()?;
                key.verify_prehash(&digest, &signature).ok()?;
                Some(signature.normalize_s().to_bytes().to_vec())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_are_the_same_for_the_same_secret_and_index_only() {
        let key = |secret: &[u8], index| IdentityKey::derived(secret, index).public_key();
        assert_eq!(key(b"seed", 7), key(b"seed", 7));
        assert_ne!(key(b"seed", 7), key(b"seed", 8));
        assert_ne!(key(b"seed", 7), key(b"seef", 7));
        // The secret's length is bound in: no secret and index pair shifts into another.
        assert_ne!(key(b"", 7), key(b"\0", 7));
        let signature = IdentityKey::derived(b"seed", 7).sign(b"message");
        assert!(key(b"seed", 7).verify(b"message", &signature));
    }

    #[test]
    fn spki_round_trip_is_canonical() {
        let key = IdentityKey::generate().public_key();
        let der = key.to_spki_der();
        assert_eq!(PublicKey::from_spki_der(&der).unwrap(), key);
        let pem = crate::load::parse_public_key(&key.to_pem()).unwrap();
        assert_eq!(pem.key, key);
    }

    #[test]
    fn signatures_verify_only_with_the_signing_key() {
        let (a, b) = (IdentityKey::generate(), IdentityKey::generate());
        let signature = a.sign(b"hello");
        assert!(a.public_key().verify(b"hello", &signature));
        assert!(!a.public_key().verify(b"hellO", &signature));
        assert!(!b.public_key().verify(b"hello", &signature));
        assert!(!a.public_key().verify(b"hello", b"garbage"));
    }

    #[test]
    fn both_forms_of_one_signature_share_their_canonical_form() {
        let key = IdentityKey::generate();
        let der = key.sign(b"2026-12-06T19:00:00+00:00");
        let signature = p256::ecdsa::Signature::from_der(&der).unwrap();
        // The same signature with s and n - s swapped: as valid, other bytes.
        let (r, s) = (signature.r(), signature.s());
        let flipped = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        let flipped = flipped.to_der().as_bytes().to_vec();
        assert_ne!(der, flipped);
        let public = key.public_key();
        let a = public.verify_sha256_canonical(b"2026-12-06T19:00:00+00:00", &der);
        let b = public.verify_sha256_canonical(b"2026-12-06T19:00:00+00:00", &flipped);
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_eq!(
            public.verify_sha256_canonical(b"another message", &der),
            None
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let key = IdentityKey::generate();
        let debug = format!("{key:?}");
        assert!(debug.starts_with("IdentityKey(SHA256:"));
    }
}
