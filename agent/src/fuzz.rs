//! Fuzz targets: what must hold for any input to the agent's parsers. The cargo-fuzz
//! targets in `fuzz/`, the stable driver of `cargo xtask fuzz` and the property tests
//! below all call these same functions; each panics when a property is broken.

use std::path::Path;

use crate::config::{Config, EXAMPLE};
use crate::journal;
use crate::replication::{RawStatus, explain};

/// The secrets written into the config the config target mutates.
pub const CONFIG_SECRETS: [&str; 3] = ["Office-Pw-7f3a9c", "Hub-Pw-51be0d", "Mqtt-Pw-c28e44"];

/// The shipped example with distinctive passwords in every secret key (MQTT's too).
pub fn config_base() -> String {
    let mut text = EXAMPLE
        .replacen("\"change-me\"", &format!("\"{}\"", CONFIG_SECRETS[0]), 1)
        .replacen(
            "\"change-me-too\"",
            &format!("\"{}\"", CONFIG_SECRETS[1]),
            1,
        );
    text = text.replacen(
        "\n[board]",
        &format!(
            "username = \"box\"\npassword = \"{}\"\n\n[board]",
            CONFIG_SECRETS[2]
        ),
        1,
    );
    text
}

/// Config parser. The first byte picks how the rest is used: as a whole file, or as the
/// replacement of one line (or an insertion before it) of [`config_base`]. Whatever the
/// text: no panic; an error names the file and a line from 1, and holds no password
/// (unless the fuzzer wrote that password itself outside a password key); a parsed
/// config's Debug shows no password.
pub fn config(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let piece = String::from_utf8_lossy(rest);
    let text = if mode == 0 {
        piece.to_string()
    } else {
        let base = config_base();
        let mut lines: Vec<&str> = base.lines().collect();
        let at = usize::from(mode >> 1) % lines.len();
        if mode & 1 == 1 {
            lines[at] = &piece;
        } else {
            lines.insert(at, &piece);
        }
        lines.join("\n")
    };
    let path = Path::new("fuzz.toml");
    match Config::parse(&text, path) {
        Ok(c) => {
            let shown = format!("{c:?}");
            for s in CONFIG_SECRETS {
                assert!(!shown.contains(s), "Debug of a parsed config shows {s}");
            }
        }
        Err(e) => {
            assert_eq!(e.file, "fuzz.toml");
            assert!(
                e.line >= 1 && e.column >= 1,
                "error not located: {e} ({}:{})",
                e.line,
                e.column
            );
            let shown = e.to_string();
            assert!(!shown.contains('\n'), "error spans lines: {shown}");
            // The first 8 characters: a password cut short must not show either.
            for s in CONFIG_SECRETS.map(|s| &s[..8]) {
                if piece.contains(s) {
                    continue;
                }
                assert!(!shown.contains(s), "error shows a password: {shown}");
            }
        }
    }
}

/// Journal decoder: no panic on any bytes, and whatever decodes re-encodes to a file
/// that decodes to the same state. An input starting with `P` is a payload: it is framed
/// (magic, length, CRC) first, so the fuzzer gets past the checksum to the decoder.
pub fn journal(data: &[u8]) {
    let path = Path::new("state.bin");
    let framed;
    let bytes = match data.split_first() {
        Some((b'P', payload)) => {
            framed = journal::frame(payload);
            &framed[..]
        }
        _ => data,
    };
    if let Ok(state) = journal::decode(bytes, path) {
        let again = journal::encode(&state);
        let back = journal::decode(&again, path).expect("a re-encoded state decodes");
        assert_eq!(back, state);
    }
}

/// What the hub serves for updates, all outside input: the first byte picks the parser
/// (rollout file, manifest, signature with an empty key set, ELF header and version slot
/// of a binary), the rest is its input. No panic; a rollout that parses gives every site
/// a version or says why; a manifest that parses writes itself back to the same.
pub fn release(data: &[u8]) {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 4 {
        0 => {
            if let Ok(r) = crate::release::Rollout::parse(&text) {
                for site in ["office", "", "x-1"] {
                    if let Err(e) = r.target(site) {
                        assert!(e.starts_with("rollout.toml"), "{e}");
                    }
                }
            }
        }
        1 => {
            if let Ok(m) = crate::release::Manifest::parse(&text) {
                assert_eq!(crate::release::Manifest::parse(&m.to_toml()), Ok(m));
            }
        }
        2 => {
            let sig = crate::release::verify_manifest(b"format = 1", rest, &[]);
            assert!(sig.is_err());
        }
        _ => {
            let _ = crate::release::elf_arch(rest);
            let _ = crate::version::read(rest);
            let mut scan = crate::release::BinaryScan::default();
            scan.feed(rest);
        }
    }
}

/// Replication status parser: the bytes are a list of `column byte, value, 0x00`; a
/// column byte with the high bit set gives NULL. No panic; running means a "Yes" was
/// read; an explanation never suggests skipping events.
pub fn replication_status(data: &[u8]) {
    let mut cols: Vec<(&str, Option<String>)> = Vec::new();
    let mut rest = data;
    while let Some((&c, tail)) = rest.split_first() {
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        // The columns the parser knows, and one it must ignore.
        let known = crate::replication::KNOWN_COLUMNS;
        let i = usize::from(c & 0x7f) % (known.len() + 1);
        let name = known.get(i).copied().unwrap_or("Relay_Log_File");
        cols.push((name, (c & 0x80 == 0).then_some(value)));
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    let said_yes = |names: [&str; 2]| {
        cols.iter()
            .any(|(n, v)| names.contains(n) && v.as_deref() == Some("Yes"))
    };
    let io_yes = said_yes(["Slave_IO_Running", "Replica_IO_Running"]);
    let sql_yes = said_yes(["Slave_SQL_Running", "Replica_SQL_Running"]);
    let errors: Vec<(u32, String)> = cols
        .iter()
        .filter(|(n, _)| n.ends_with("_Error"))
        .map(|(_, v)| (1062, v.clone().unwrap_or_default()))
        .collect();
    let s = RawStatus::from_columns(cols);
    if s.io_running == Some(true) {
        assert!(io_yes);
    }
    if s.sql_running == Some(true) {
        assert!(sql_yes);
    }
    let probes = [(s.last_io_errno, s.last_io_error.clone())]
        .into_iter()
        .chain([(s.last_sql_errno, s.last_sql_error.clone())])
        .chain(errors)
        .chain([1236, 1593, 1045, 13114, 13117, 2061].map(|n| (n, s.last_sql_error.clone())));
    let dialects = crate::dialect::Family::BOTH.map(crate::dialect::Dialect::current);
    let channels = [None, Some("office7")];
    for ((errno, text), (d, channel)) in probes.flat_map(|p| {
        dialects
            .iter()
            .flat_map(move |d| channels.map(|c| (p.clone(), (*d, c))))
    }) {
        if let Some(x) = explain(errno, &text, &d, channel) {
            let said = x.to_lowercase();
            let quoted: String = text.to_lowercase();
            assert!(
                !said.contains("skip_counter") || quoted.contains("skip_counter"),
                "{x}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_base_config_parses_with_all_three_secrets() {
        let c = Config::parse(&config_base(), "fuzz.toml").unwrap();
        assert!(c.mqtt.password.is_some());
        config(&[0]);
        config(&[]);
    }

    fn config_lines() -> Vec<String> {
        config_base().lines().map(str::to_owned).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn config_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            config(&data);
        }

        /// One line of the good file replaced by a plausible-looking mistake.
        #[test]
        fn config_one_line_wrong(
            mode in any::<u8>(),
            key in "[a-z_]{1,16}",
            value in prop_oneof![
                "\"[ -~]{0,20}",
                "[0-9a-z .:-]{0,12}",
                "\\[[a-z0-9, \"]{0,10}",
                "\\{ ?[a-z]+ ?= ?[a-z0-9\"]{0,6}",
                Just(String::new()),
            ],
        ) {
            let mut data = vec![mode | 1];
            data.extend_from_slice(format!("{key} = {value}").as_bytes());
            config(&data);
        }

        /// A password line cut short, or with junk after it: neither the password nor a
        /// piece of it is ever echoed.
        #[test]
        fn config_password_line_wrong(which in 0usize..3, cut in 0usize..40, tail in "[ -~]{0,6}") {
            let mut lines = config_lines();
            let secret = CONFIG_SECRETS[which];
            let at = lines.iter().position(|l| l.contains(secret)).unwrap();
            let line = lines[at].clone();
            let cut = cut.min(line.len());
            let mut data = vec![((at as u8) << 1) | 1];
            data.extend_from_slice(&line.as_bytes()[..cut]);
            data.extend_from_slice(tail.as_bytes());
            config(&data);
            lines[at] = format!("{line} {tail}");
            if let Err(e) = Config::parse(&lines.join("\n"), "fuzz.toml") {
                let shown = e.to_string();
                for s in CONFIG_SECRETS {
                    prop_assert!(!shown.contains(&s[..8]), "{}", shown);
                }
            }
        }

        #[test]
        fn release_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            release(&data);
        }

        /// Plausible rollout and manifest lines.
        #[test]
        fn release_plausible_lines(
            which in 0u8..2,
            lines in proptest::collection::vec(
                prop_oneof![
                    "default = \"[a-z]{0,6}\"",
                    "\\[channels\\]",
                    "\\[sites\\]",
                    "[a-z]{1,6} = \"[0-9.]{0,8}\"",
                    "[a-z]{1,6} = \\{ (channel|version) = \"[a-z0-9.]{0,6}\" \\}",
                    "(format|size) = [0-9]{1,3}",
                    "(version|arch|file|sha256) = \"[ -~]{0,70}\"",
                ],
                0..8,
            ),
        ) {
            let mut data = vec![which];
            data.extend_from_slice(lines.join("\n").as_bytes());
            release(&data);
        }

        #[test]
        fn journal_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            journal(&data);
        }

        /// Framed payloads: past the CRC, straight into the decoder.
        #[test]
        fn journal_any_payload(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            journal(&[&b"P"[..], &data].concat());
        }

        /// A valid file with a few bytes changed (most of these fail the CRC; those that
        /// get past it must still decode cleanly or be refused).
        #[test]
        fn journal_valid_file_damaged(
            verdict in "[a-z_]{0,12}",
            reconnects in any::<u64>(),
            fp in proptest::option::of("[ -~]{0,60}"),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        ) {
            let state = journal::State {
                verdict,
                reconnects,
                hub_key_fingerprint: fp,
                ..journal::State::default()
            };
            let mut bytes = journal::encode(&state);
            journal(&bytes);
            prop_assert_eq!(journal::decode(&bytes, Path::new("x")).unwrap(), state);
            for (at, x) in flips {
                let n = bytes.len();
                bytes[at % n] ^= x;
            }
            journal(&bytes);
        }

        #[test]
        fn replication_status_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            replication_status(&data);
        }

        /// Realistic rows: known columns with values of the kinds servers send.
        #[test]
        fn replication_status_rows(
            row in proptest::collection::vec(
                (0u8..13, proptest::option::of(prop_oneof![
                    Just("Yes".to_owned()), Just("No".to_owned()), Just("Connecting".to_owned()),
                    "[0-9]{1,20}", "-[0-9]{1,5}",
                    "Could not execute Write_rows event on table [a-z]{1,8}\\.[a-z]{1,8}; Duplicate entry '[0-9]{1,4}' for key 'PRIMARY'",
                    "[ -~]{0,40}",
                ])),
                0..14,
            )
        ) {
            let mut data = Vec::new();
            for (c, v) in row {
                data.push(if v.is_some() { c } else { c | 0x80 });
                data.extend_from_slice(v.unwrap_or_default().as_bytes());
                data.push(0);
            }
            replication_status(&data);
        }
    }
}
