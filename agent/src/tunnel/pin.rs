//! The hub's pinned host key: a `SHA256:` fingerprint or a whole OpenSSH public key line.

use russh::keys::{HashAlg, PublicKey};

/// What the agent trusts the hub's host key to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPin {
    /// `SHA256:<base64>`, as `ssh-keygen -lf` prints it.
    Fingerprint(String),
    /// An OpenSSH public key line, `ssh-ed25519 AAAA... [comment]`.
    Key(PublicKey),
}

impl HostKeyPin {
    /// Parses either form; the error says which forms are accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("SHA256:") {
            if rest.is_empty()
                || !rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
            {
                return Err(format!("`{text}` is not a SHA256 fingerprint"));
            }
            return Ok(HostKeyPin::Fingerprint(
                text.trim_end_matches('=').to_owned(),
            ));
        }
        PublicKey::from_openssh(text)
            .map(HostKeyPin::Key)
            .map_err(|e| {
                format!("expected `SHA256:...` or an OpenSSH public key line (`ssh-ed25519 AAAA...`): {e}")
            })
    }

    /// Whether the key the hub presented is the pinned one.
    pub fn matches(&self, key: &PublicKey) -> bool {
        match self {
            HostKeyPin::Fingerprint(fp) => fingerprint(key) == *fp,
            HostKeyPin::Key(pinned) => pinned.key_data() == key.key_data(),
        }
    }

    /// The pinned key as a fingerprint, for messages.
    pub fn fingerprint(&self) -> String {
        match self {
            HostKeyPin::Fingerprint(fp) => fp.clone(),
            HostKeyPin::Key(key) => fingerprint(key),
        }
    }
}

/// `SHA256:<base64>` without padding, the form OpenSSH prints.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOkkTEjeAaTt8Xv4JQtQzscNVN4lfWbaXAOw5ymeX/x7 hub";
    const EXPECTED_FP: &str = "SHA256:DVZql0rBgQn+5Th/7oiVBr4h881tOVmZ8kfSF7ugfxI";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGwu+LuPUdlsD4ec43UV9qMscmhsNnIqla22/dnefCRT other";

    #[test]
    fn key_line_and_its_fingerprint_both_match() {
        let key = PublicKey::from_openssh(KEY).unwrap();
        let by_key = HostKeyPin::parse(KEY).unwrap();
        let by_fp = HostKeyPin::parse(&fingerprint(&key)).unwrap();
        assert!(by_key.matches(&key));
        assert!(by_fp.matches(&key));
        assert_eq!(by_key.fingerprint(), by_fp.fingerprint());
    }

    #[test]
    fn other_key_does_not_match() {
        let other = PublicKey::from_openssh(OTHER).unwrap();
        let pin = HostKeyPin::parse(KEY).unwrap();
        assert!(!pin.matches(&other));
    }

    #[test]
    fn a_fingerprint_matches_with_or_without_padding_and_surrounding_space() {
        let key = PublicKey::from_openssh(KEY).unwrap();
        let fp = fingerprint(&key);
        assert!(fp.starts_with("SHA256:") && !fp.ends_with('='), "{fp}");
        for text in [fp.clone(), format!("{fp}="), format!("  {fp}\n")] {
            let pin = HostKeyPin::parse(&text).unwrap();
            assert_eq!(pin, HostKeyPin::Fingerprint(fp.clone()), "{text:?}");
            assert!(pin.matches(&key), "{text:?}");
        }
    }

    #[test]
    fn a_key_line_matches_whatever_its_comment() {
        let key = PublicKey::from_openssh(KEY).unwrap();
        let bare = KEY.trim_end_matches(" hub");
        for text in [
            bare.to_owned(),
            format!("{bare} root@hub"),
            format!("{KEY}\n"),
        ] {
            assert!(HostKeyPin::parse(&text).unwrap().matches(&key), "{text:?}");
        }
    }

    #[test]
    fn the_fingerprint_is_openssh_s() {
        // `ssh-keygen -lf` of KEY.
        let key = PublicKey::from_openssh(KEY).unwrap();
        assert_eq!(fingerprint(&key), EXPECTED_FP);
        assert_eq!(HostKeyPin::parse(KEY).unwrap().fingerprint(), EXPECTED_FP);
    }

    #[test]
    fn a_fingerprint_with_characters_outside_base64_is_refused() {
        for bad in ["SHA256:abc def", "SHA256:abc-def", "SHA256:é", "SHA256:   "] {
            let err = HostKeyPin::parse(bad).unwrap_err();
            assert!(err.contains("not a SHA256 fingerprint"), "{bad}: {err}");
        }
        // MD5 fingerprints are not accepted.
        let err =
            HostKeyPin::parse("MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48").unwrap_err();
        assert!(err.contains("SHA256:"), "{err}");
    }

    #[test]
    fn junk_is_refused_with_the_accepted_forms() {
        let err = HostKeyPin::parse("hello").unwrap_err();
        assert!(err.contains("SHA256:"), "{err}");
        assert!(HostKeyPin::parse("SHA256:").is_err());
    }
}
