//! Which apps a node runs (`--trusted-apps FILE`). Without the flag a node runs whatever its
//! authenticated SuperLink sends, as Flower's SuperNode does. With it, only what the file lists:
//! one entry per line, `#` starting a comment:
//!
//! ```text
//! # an app bundle, by the SHA-256 that `flwr run` prints and `flwr ls` shows
//! 3f5a...e1 (64 hex digits; a "sha256:" prefix is accepted)
//! # a built-in app started without a bundle, by name
//! fedavg-cnn
//! # a publisher: every bundle they signed (flwr app sign), by their OpenSSH public key
//! ecdsa-sha2-nistp256 AAAAE2VjZHNh... alice@example.org
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use wire::BundleHash;
use wire::bundle::{BundleSignature, signing_message};

/// The apps a node agreed to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedApps {
    /// Bundles, by hash.
    bundles: BTreeSet<BundleHash>,
    /// Built-in apps run without a bundle, by name.
    builtins: BTreeSet<String>,
    /// Publishers whose signed bundles run.
    publishers: Vec<certs::PublicKey>,
}

impl TrustedApps {
    /// Parses a trusted-apps file's text; a line that is neither a hash nor an app name is an
    /// error naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut trusted = TrustedApps {
            bundles: BTreeSet::new(),
            builtins: BTreeSet::new(),
            publishers: Vec::new(),
        };
        for (number, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or_default().trim();
            if entry.is_empty() {
                continue;
            }
            let hex = entry.strip_prefix("sha256:").unwrap_or(entry);
            if entry.starts_with("ecdsa-sha2-") {
                let line = certs::openssh::parse_public_line(entry)
                    .map_err(|e| format!("line {}: a publisher key: {e}", number + 1))?;
                trusted.publishers.push(line.key);
            } else if let Some(hash) = BundleHash::from_hex(hex) {
                trusted.bundles.insert(hash);
            } else if app_bundle::manifest::is_app_name(entry) {
                trusted.builtins.insert(entry.to_string());
            } else {
                return Err(format!(
                    "line {}: {:?} is neither a bundle's SHA-256 (64 hex digits), an app name, nor \
                     a publisher's public key",
                    number + 1,
                    wire::text::sanitize(entry, 80)
                ));
            }
        }
        Ok(trusted)
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        TrustedApps::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// How many entries it has.
    pub fn len(&self) -> usize {
        self.bundles.len() + self.builtins.len() + self.publishers.len()
    }

    /// Whether it names publishers, whose signatures can make a bundle trusted.
    pub fn has_publishers(&self) -> bool {
        !self.publishers.is_empty()
    }

    /// The fingerprint of a trusted publisher whose valid signature of `hash` is among
    /// `signatures`.
    pub fn signer(&self, hash: BundleHash, signatures: &[BundleSignature]) -> Option<String> {
        let message = signing_message(hash);
        signatures.iter().find_map(|signature| {
            let key = certs::PublicKey::from_spki_der(&signature.public_key).ok()?;
            (self.publishers.contains(&key) && key.verify(&message, &signature.signature))
                .then(|| key.fingerprint())
        })
    }

    /// Whether it has none (every app is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the app of an instruction may run by what this list names: its bundle's hash,
    /// or, for a built-in app started without a bundle, its name (publishers aside: see
    /// [`TrustedApps::signer`]).
    pub fn allows(&self, bundle: Option<BundleHash>, app_name: &str) -> bool {
        match bundle {
            Some(hash) => self.bundles.contains(&hash),
            None => self.builtins.contains(app_name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_names_are_trusted_and_nothing_else() {
        let hash = BundleHash([0x3f; 32]);
        let text = format!("# apps\n{hash}\n\nsha256:{}  # upper case\nfedavg-cnn\n", {
            BundleHash([0x11; 32]).to_string().to_uppercase()
        });
        let trusted = TrustedApps::parse(&text).unwrap();
        assert_eq!(trusted.len(), 3);
        assert!(trusted.allows(Some(hash), "anything"));
        assert!(trusted.allows(Some(BundleHash([0x11; 32])), "x"));
        assert!(!trusted.allows(Some(BundleHash([0x12; 32])), "fedavg-cnn"));
        assert!(trusted.allows(None, "fedavg-cnn"));
        assert!(!trusted.allows(None, "vector-add"));
        let error = TrustedApps::parse("abc def\n").unwrap_err();
        assert!(error.contains("line 1"), "{error}");
        assert!(TrustedApps::parse("").unwrap().is_empty());
    }

    #[test]
    fn a_publisher_makes_trusted_exactly_the_bundles_it_signed() {
        let publisher = certs::IdentityKey::generate();
        let stranger = certs::IdentityKey::generate();
        let line = certs::openssh::format_public_line(&publisher.public_key(), "alice");
        let trusted = TrustedApps::parse(&format!("{line}\n")).unwrap();
        assert!(trusted.has_publishers());
        let hash = BundleHash([7; 32]);
        let sign = |key: &certs::IdentityKey, hash: BundleHash| BundleSignature {
            public_key: key.public_key().to_spki_der(),
            signature: key.sign(&signing_message(hash)),
        };
        assert_eq!(
            trusted.signer(hash, &[sign(&publisher, hash)]),
            Some(publisher.public_key().fingerprint())
        );
        // Another bundle's signature, a stranger's, or a publisher's key with a forged
        // signature: not trusted.
        assert_eq!(
            trusted.signer(hash, &[sign(&publisher, BundleHash([8; 32]))]),
            None
        );
        assert_eq!(trusted.signer(hash, &[sign(&stranger, hash)]), None);
        let forged = BundleSignature {
            public_key: publisher.public_key().to_spki_der(),
            signature: sign(&stranger, hash).signature,
        };
        assert_eq!(trusted.signer(hash, &[forged]), None);
        assert!(!trusted.allows(Some(hash), "x"));
    }
}
