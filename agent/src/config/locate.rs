//! Turning the toml crate's byte spans and serde's wording into `line:column`, dotted keys
//! and sentences, and keeping secret values out of every message.

use crate::secret::Secret;
use toml::de::{DeTable, DeValue};

/// Keys whose values are secrets, wherever they appear.
const SECRET_KEYS: &[&str] = &["password", "password_hash"];

pub(super) fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}

pub(super) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_owned()
}

/// The text between the first `start` and the next `end` after it.
pub(super) fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The dotted path of the deepest key whose key or value covers `offset`.
pub(super) fn path_at(table: &DeTable<'_>, offset: usize) -> Vec<String> {
    for (k, v) in table {
        let in_key = k.span().contains(&offset);
        let in_value = v.span().contains(&offset);
        if !(in_key || in_value) {
            continue;
        }
        let mut path = vec![k.get_ref().to_string()];
        if in_value && let DeValue::Table(inner) = v.get_ref() {
            path.extend(path_at(inner, offset));
        }
        return path;
    }
    // Tables from `[header]` lines may not cover their keys: look inside each.
    for (k, v) in table {
        if let DeValue::Table(inner) = v.get_ref() {
            let sub = path_at(inner, offset);
            if !sub.is_empty() {
                let mut path = vec![k.get_ref().to_string()];
                path.extend(sub);
                return path;
            }
        }
    }
    Vec::new()
}

/// Where the value of a dotted key is written (its header for a table), if it is.
pub(super) fn written(table: &DeTable<'_>, dotted: &str) -> Option<usize> {
    let mut table = table;
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part)?;
        match v.get_ref() {
            DeValue::Table(inner) if parts.peek().is_some() => table = inner,
            DeValue::Table(_) => return Some(k.span().start),
            _ if parts.peek().is_some() => return None,
            _ => return Some(v.span().start),
        }
    }
    None
}

/// Where the nearest written parent of a dotted key is (the file's start if none is).
pub(super) fn nearest(table: &DeTable<'_>, dotted: &str) -> usize {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    while !parts.is_empty() {
        if let Some(offset) = written(table, &parts.join(".")) {
            return offset;
        }
        parts.pop();
    }
    0
}

/// Every value written under a secret key: both as written and, for strings, unquoted.
pub(super) fn secret_values(table: &DeTable<'_>, text: &str) -> Vec<Secret> {
    let mut out = Vec::new();
    collect_secrets(table, text, &mut out);
    out
}

fn collect_secrets(table: &DeTable<'_>, text: &str, out: &mut Vec<Secret>) {
    for (k, v) in table {
        if is_secret_key(k.get_ref()) {
            if let Some(raw) = text.get(v.span()) {
                out.push(Secret::new(raw));
            }
            if let DeValue::String(s) = v.get_ref() {
                out.push(Secret::new(s.to_string()));
            }
        } else if let DeValue::Table(inner) = v.get_ref() {
            collect_secrets(inner, text, out);
        }
    }
}

/// Replaces every secret value in `message` with `***`.
///
/// Values shorter than 4 characters are left alone: replacing them would garble
/// the message (a password "1" in "1..=65535") and reveals close to nothing.
pub(super) fn scrub(message: &str, secrets: &[Secret]) -> String {
    let mut out = message.to_owned();
    for s in secrets {
        if s.expose().chars().count() >= 4 {
            out = out.replace(s.expose(), "***");
        }
    }
    out
}

/// A message about a secret key's value that cannot quote it.
pub(super) fn secret_message(raw: &str) -> String {
    if raw.starts_with("missing field") {
        "required key is missing".into()
    } else {
        "must be a string in quotes (the value is not shown)".into()
    }
}

/// serde's phrasing, in the words of a config file.
pub(super) fn reword(raw: &str) -> String {
    if raw.starts_with("missing field `") {
        return "required key is missing".into();
    }
    if let Some(rest) = raw.strip_prefix("unknown field `") {
        let expected = ticked(rest.split_once(',').map_or("", |(_, e)| e));
        return match expected.as_slice() {
            [] => "unknown key (this table takes no keys)".into(),
            [one] => format!("unknown key (the only key here is {one})"),
            many => format!("unknown key (expected one of {})", many.join(", ")),
        };
    }
    if let Some(rest) = raw.strip_prefix("unknown variant `")
        && let Some((value, expected)) = rest.split_once("`, ")
    {
        return format!("`{value}` is not one of {}", ticked(expected).join(", "));
    }
    raw.to_owned()
}

/// The `backticked` words of a serde list, in order.
fn ticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("é=1", 2), (1, 2), "columns count characters");
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn rewording() {
        assert_eq!(
            reword("unknown field `hots`, expected one of `host`, `port`"),
            "unknown key (expected one of host, port)"
        );
        assert_eq!(
            reword("unknown field `x`, expected `dir`"),
            "unknown key (the only key here is dir)"
        );
        assert_eq!(
            reword("unknown variant `rot13`, expected one of `auto`, `aes128-gcm`"),
            "`rot13` is not one of auto, aes128-gcm"
        );
        assert_eq!(reword("missing field `id`"), "required key is missing");
        assert_eq!(reword("anything else"), "anything else");
    }

    #[test]
    fn locating_keys() {
        let text = "a = 1\n[t]\nx = \"v\"\n[t.u]\ny = 2\n";
        let doc = DeTable::parse(text).unwrap();
        let doc = doc.get_ref();
        assert_eq!(written(doc, "t.x").map(|o| line_col(text, o)), Some((3, 5)));
        assert_eq!(
            written(doc, "t.u.y").map(|o| line_col(text, o)),
            Some((5, 5))
        );
        assert_eq!(written(doc, "t.z"), None);
        assert_eq!(written(doc, "a.b"), None);
        assert_eq!(line_col(text, nearest(doc, "t.z")), (2, 2));
        assert_eq!(nearest(doc, "q.z"), 0);
    }
}
