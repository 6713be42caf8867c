//! `Secret`: a password or key held so that Debug, Display and errors never show it.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret string.
///
/// `{:?}` and `{}` print `***`; only [`Secret::expose`] gives the value. Deserialising
/// something other than a string fails without quoting what was found. Serialising
/// writes the real value: that exists only so a program (the lab) can write a config
/// file; never serialise a `Secret` into logs, state documents or MQTT.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value, for the one place that needs it (a login).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Accepts strings only. serde's default "invalid type" errors quote the value found
/// (`integer `1234``), so every other kind is refused with a message naming the kind.
struct SecretVisitor;

impl SecretVisitor {
    fn refuse<E: de::Error>(kind: &str) -> E {
        E::custom(format!(
            "expected a string in quotes, found {kind} (the value is not shown)"
        ))
    }
}

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string in quotes")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(Self::refuse("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(Self::refuse("a number"))
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
        Err(Self::refuse("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(Self::refuse("a number"))
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
        Err(Self::refuse("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(Self::refuse("a number"))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        Err(Self::refuse("bytes"))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(Self::refuse("a list"))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        // TOML dates arrive as maps too.
        Err(Self::refuse("a table or date"))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_string(SecretVisitor)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Holder {
        password: Secret,
    }

    #[test]
    fn never_shown() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s} {s:#?}"), "*** *** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn reads_and_writes_the_real_value() {
        let h: Holder = toml::from_str("password = \"hunter2\"").unwrap();
        assert_eq!(h.password.expose(), "hunter2");
        assert_eq!(format!("{h:?}"), "Holder { password: *** }");
        assert_eq!(
            toml::to_string(&h).unwrap().trim(),
            "password = \"hunter2\""
        );
    }

    #[test]
    fn wrong_types_are_refused_without_the_value() {
        for (text, kind) in [
            ("password = 918273645", "a number"),
            ("password = 91827.3645", "a number"),
            ("password = true", "a boolean"),
            ("password = [\"hunter2\"]", "a list"),
            ("password = { x = \"hunter2\" }", "a table"),
            ("password = 1979-05-27T07:32:00Z", "a table or date"),
        ] {
            let e = toml::from_str::<Holder>(text)
                .unwrap_err()
                .message()
                .to_owned();
            assert!(e.contains(kind), "{text}: {e}");
            for v in ["918273645", "91827", "hunter2", "1979"] {
                assert!(!e.contains(v), "{text}: {e}");
            }
        }
    }
}
