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
    fn junk_is_refused_with_the_accepted_forms() {
        let err = HostKeyPin::parse("hello").unwrap_err();
        assert!(err.contains("SHA256:"), "{err}");
        assert!(HostKeyPin::parse("SHA256:").is_err());
    }
}
