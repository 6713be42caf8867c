//! Password hashes for the status page's basic auth: PBKDF2-HMAC-SHA256 in the PHC string
//! format (`$pbkdf2-sha256$i=100000,l=32$<salt>$<hash>`, unpadded base64), as
//! `tether web-passwd` writes them into `web.password_hash`.
//!
//! PBKDF2 rather than argon2: it needs no memory (argon2's recommended 19 MiB would more
//! than double the agent's footprint on every check) and its code is already in the
//! binary through the SSH key support. Checks are slow on purpose; the web server runs
//! them off the runtime, one at a time, and remembers the last accepted header.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

use crate::secret::Secret;

/// Iterations `tether web-passwd` uses: 0.03 s on this x86 machine (SHA instructions),
/// several times that on a Raspberry Pi 4 (none); paid once per new login, since the
/// server remembers the last accepted one.
pub const DEFAULT_ITERATIONS: u32 = 100_000;
const MIN_ITERATIONS: u32 = 1_000;
const MAX_ITERATIONS: u32 = 10_000_000;
const SCHEME: &str = "pbkdf2-sha256";

/// A parsed `web.password_hash`.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordHash({SCHEME}, i={}, ***)", self.iterations)
    }
}

impl PasswordHash {
    /// Parses the PHC string; the error never quotes the value.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let shape = || {
            format!(
                "must be a `${SCHEME}$i=...,l=32$salt$hash` string as `tether web-passwd` prints it"
            )
        };
        let parts: Vec<&str> = text.trim().split('$').collect();
        let ["", scheme, params, salt, hash] = parts.as_slice() else {
            return Err(shape());
        };
        if *scheme != SCHEME {
            return Err(format!(
                "the scheme must be `{SCHEME}` (from `tether web-passwd`)"
            ));
        }
        let mut iterations = None;
        let mut length = None;
        for param in params.split(',') {
            match param.split_once('=') {
                Some(("i", v)) => iterations = v.parse::<u32>().ok(),
                Some(("l", v)) => length = v.parse::<usize>().ok(),
                _ => return Err(shape()),
            }
        }
        let iterations = iterations.ok_or_else(shape)?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!(
                "i= must be {MIN_ITERATIONS}..={MAX_ITERATIONS} iterations"
            ));
        }
        let salt = STANDARD_NO_PAD.decode(salt).map_err(|_| shape())?;
        let hash = STANDARD_NO_PAD.decode(hash).map_err(|_| shape())?;
        if !(8..=64).contains(&salt.len()) || !(16..=64).contains(&hash.len()) {
            return Err(shape());
        }
        if length.is_some_and(|l| l != hash.len()) {
            return Err(shape());
        }
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// Hashes `password` with a fresh random salt.
    pub fn create(password: &Secret, iterations: u32) -> PasswordHash {
        let salt: [u8; 16] = rand::random();
        let mut hash = vec![0u8; 32];
        let bytes = password.expose().as_bytes();
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(bytes, &salt, iterations, &mut hash);
        PasswordHash {
            iterations,
            salt: salt.to_vec(),
            hash,
        }
    }

    /// The PHC string (goes into the config file, never into a page or a log).
    pub fn to_phc(&self) -> Secret {
        Secret::new(format!(
            "${SCHEME}$i={},l={}${}${}",
            self.iterations,
            self.hash.len(),
            STANDARD_NO_PAD.encode(&self.salt),
            STANDARD_NO_PAD.encode(&self.hash)
        ))
    }

    /// Whether `password` matches. Slow by design; compares in constant time.
    pub fn verify(&self, password: &Secret) -> bool {
        let mut out = vec![0u8; self.hash.len()];
        let bytes = password.expose().as_bytes();
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(bytes, &self.salt, self.iterations, &mut out);
        constant_time_eq(&out, &self.hash)
    }
}

/// Equal slices, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user and password of an `Authorization: Basic ...` header value; `None` when it
/// is not one. A password that is not UTF-8 is not one either: `tether web-passwd`
/// hashes UTF-8 text, so such a password could never match.
pub fn basic_credentials(header: &Secret) -> Option<(String, Secret)> {
    let (scheme, encoded) = header.expose().trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    let password: Secret = String::from_utf8(decoded[colon + 1..].to_vec())
        .ok()?
        .into();
    Some((user, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_verifies() {
        let h = PasswordHash::create(&Secret::new("correct horse"), MIN_ITERATIONS);
        let text = h.to_phc();
        assert!(text.expose().starts_with("$pbkdf2-sha256$i=1000,l=32$"));
        let parsed = PasswordHash::parse(text.expose()).unwrap();
        assert_eq!(parsed, h);
        assert!(parsed.verify(&Secret::new("correct horse")));
        assert!(!parsed.verify(&Secret::new("correct horsf")));
        assert!(!parsed.verify(&Secret::new("")));
        assert!(!format!("{parsed:?}").contains(&STANDARD_NO_PAD.encode(&h.hash)));
    }

    /// RFC 7914 section 11's PBKDF2-HMAC-SHA256 vector (P="passwd", S="salt", c=1) is
    /// below the minimum iterations, so check the function directly, then a known
    /// PHC string (passlib's format) end to end.
    #[test]
    fn matches_the_published_vector() {
        let mut out = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(b"passwd", b"salt", 1, &mut out);
        assert_eq!(out[..8], [0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f]);
        let h = PasswordHash {
            iterations: 1000,
            salt: b"saltsalt".to_vec(),
            hash: {
                let mut o = vec![0u8; 32];
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(b"pw", b"saltsalt", 1000, &mut o);
                o
            },
        };
        let again = PasswordHash::parse(h.to_phc().expose()).unwrap();
        assert!(again.verify(&Secret::new("pw")));
    }

    #[test]
    fn bad_strings_are_refused_without_being_quoted() {
        let good = PasswordHash::create(&Secret::new("x"), MIN_ITERATIONS).to_phc();
        let good = good.expose();
        let salt_and_hash = good.splitn(4, '$').nth(3).unwrap();
        for bad in [
            "",
            "hunter2",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
            &format!("$pbkdf2-sha256$i=10,l=32${salt_and_hash}"),
            &format!("$pbkdf2-sha256$l=32${salt_and_hash}"),
            &format!("$pbkdf2-sha256$i=1000,l=31${salt_and_hash}"),
            &format!("$pbkdf2-sha256$i=1000,x=1${salt_and_hash}"),
            "$pbkdf2-sha256$i=1000,l=32$!!$!!",
        ] {
            let e = PasswordHash::parse(bad).unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
    }

    #[test]
    fn basic_headers() {
        let header = Secret::new(format!("Basic {}", STANDARD.encode("admin:pa:ss")));
        let (user, password) = basic_credentials(&header).unwrap();
        assert_eq!((user.as_str(), password.expose()), ("admin", "pa:ss"));
        assert_eq!(format!("{password:?}"), "***");
        let lower = Secret::new(header.expose().replace("Basic", "basic"));
        assert_eq!(basic_credentials(&lower).unwrap().0, "admin");
        let mut not_utf8 = b"admin:".to_vec();
        not_utf8.push(0xff);
        for bad in [
            "Bearer abc".to_owned(),
            "Basic".to_owned(),
            "Basic !!!".to_owned(),
            format!("Basic {}", STANDARD.encode("no-colon")),
            format!("Basic {}", STANDARD.encode(&not_utf8)),
        ] {
            assert_eq!(basic_credentials(&Secret::new(bad.clone())), None, "{bad}");
        }
    }

    #[test]
    fn equal_in_constant_time() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
