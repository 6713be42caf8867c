//! Every bad configuration gets an error naming the file, the line and the key, and saying
//! what is wrong; good files parse; secrets never appear in errors or Debug output.

use std::path::{Path, PathBuf};

use tether::config::Config;

fn fixture(kind: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(kind)
        .join(format!("{name}.toml"))
}

/// (file, expected line, expected fragments of the message)
const BAD: &[(&str, usize, &[&str])] = &[
    ("unknown_top_level", 9, &["huub", "unknown field"]),
    (
        "unknown_nested_key",
        4,
        &["hub.hots", "unknown field", "host"],
    ),
    (
        "port_wrong_type",
        5,
        &["hub.port", "invalid type", "twenty-two"],
    ),
    ("port_zero", 5, &["hub.port", "1..=65535"]),
    ("port_too_big", 7, &["office_db.port", "70000"]),
    ("missing_site_id", 1, &["site.id", "missing field"]),
    ("missing_hub_host", 3, &["hub.host", "missing field"]),
    (
        "missing_office_password",
        5,
        &["office_db.password", "missing field"],
    ),
    (
        "bad_duration",
        10,
        &["timings.connect_timeout", "5 parsecs", "duration"],
    ),
    (
        "keepalive_out_of_range",
        10,
        &["timings.keepalive_interval", "out of range", "1s"],
    ),
    (
        "reconnect_min_above_max",
        10,
        &["timings.reconnect_min", "longer than"],
    ),
    ("bad_site_id", 2, &["site.id", "a-z"]),
    (
        "forward_without_port",
        6,
        &["forwards.local_listen", "host:port"],
    ),
    ("bad_board_backend", 10, &["board.backend", "blinkenlights"]),
    ("bad_cipher", 5, &["hub.cipher", "rot13"]),
    ("toml_syntax", 2, &[]),
    ("bad_host_key", 5, &["hub.host_key", "SHA256:"]),
    (
        "checksum_hour_25",
        10,
        &["replication.checksum_hour", "0..=23"],
    ),
    ("tls_without_ca", 9, &["mqtt", "ca_file"]),
];

#[test]
fn every_bad_file_is_located_and_explained() {
    let mut failures = Vec::new();
    for (name, line, fragments) in BAD {
        let path = fixture("bad", name);
        let err = match Config::load(&path) {
            Ok(_) => {
                failures.push(format!("{name}: parsed, but must be refused"));
                continue;
            }
            Err(e) => e,
        };
        let shown = err.to_string();
        let want_prefix = format!("{}:{line}:", path.display());
        if !shown.starts_with(&want_prefix) {
            failures.push(format!(
                "{name}: expected `{want_prefix}...`, got `{shown}`"
            ));
        }
        for f in *fragments {
            if !shown.contains(f) {
                failures.push(format!("{name}: `{shown}` lacks `{f}`"));
            }
        }
        for secret in ["office-secret-1", "hub-secret-2"] {
            if shown.contains(secret) {
                failures.push(format!("{name}: error shows a password: {shown}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(BAD.len() >= 12);
}

#[test]
fn good_files_parse() {
    let c = Config::load(&fixture("good", "minimal")).unwrap();
    assert_eq!(c.site.id, "office");
    assert_eq!(c.hub.port, 22);
    assert_eq!(c.key_path(), Path::new("/var/lib/tether/device_key"));
    let shown = format!("{c:?}");
    assert!(!shown.contains("office-secret-1") && !shown.contains("hub-secret-2"));
    Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tether.example.toml")).unwrap();
}

#[test]
fn the_example_lists_every_key() {
    // Every key the types know, written out by serialising the defaults, must appear in
    // the shipped example (commented or not), so the example stays complete.
    let c = Config::example();
    let full = toml::to_string(&c).unwrap();
    let example = tether::config::EXAMPLE;
    let mut section = String::new();
    for line in full.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_owned();
            let inner = section.trim_matches(|c| c == '[' || c == ']');
            match inner.split_once('.') {
                // Sub-tables are written inline in the example: `green = { ... }`.
                Some((_, sub)) => assert!(
                    example.contains(&format!("\n{sub} = {{")),
                    "example lacks {section}"
                ),
                None => assert!(
                    example.contains(&section),
                    "example lacks section {section}"
                ),
            }
            continue;
        }
        if section.contains('.') {
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            assert!(
                example.contains(&format!("\n{key} ")) || example.contains(&format!("# {key} ")),
                "example lacks {section} {key}"
            );
        }
    }
}

#[test]
fn a_file_that_cannot_be_read_is_named() {
    let err = Config::load(Path::new("/nonexistent/tether.toml")).unwrap_err();
    assert!(
        err.to_string().starts_with("/nonexistent/tether.toml"),
        "{err}"
    );
}
