//! Every bad configuration gets an error naming the file, the line and the key, and saying
//! what is wrong; good files parse; secrets never appear in errors or Debug output.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tether::config::{Config, EXAMPLE};

fn fixture(kind: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(kind)
        .join(format!("{name}.toml"))
}

/// The passwords written in the bad fixtures; no message may contain them.
const SECRETS: &[&str] = &["office-secret-1", "hub-secret-2", "8675309"];

/// (file, expected `line:column`, expected fragments of the message)
const BAD: &[(&str, &str, &[&str])] = &[
    (
        "unknown_top_level",
        "9:2",
        &[
            "huub:",
            "unknown key",
            "expected one of site, hub, forwards",
        ],
    ),
    (
        "unknown_nested_key",
        "4:1",
        &["hub.hots:", "unknown key", "host, port, user"],
    ),
    (
        "port_wrong_type",
        "5:8",
        &["hub.port:", "invalid type", "twenty-two", "1..=65535"],
    ),
    (
        "port_zero",
        "5:8",
        &["hub.port:", "0 is out of range (1..=65535)"],
    ),
    (
        "port_too_big",
        "7:8",
        &["office_db.port:", "70000 is out of range (1..=65535)"],
    ),
    ("mqtt_port_zero", "10:8", &["mqtt.port:", "out of range"]),
    ("missing_site_id", "1:1", &["site.id:", "missing"]),
    ("missing_hub_host", "3:1", &["hub.host:", "missing"]),
    (
        "missing_office_password",
        "5:1",
        &["office_db.password:", "missing"],
    ),
    (
        "password_wrong_type",
        "8:12",
        &["hub_db.password:", "string in quotes", "not shown"],
    ),
    (
        "bad_duration",
        "10:19",
        &[
            "timings.connect_timeout:",
            "`5 parsecs` is not a duration",
            "\"2s\"",
        ],
    ),
    (
        "keepalive_out_of_range",
        "10:22",
        &[
            "timings.keepalive_interval:",
            "0s is out of range (1s..=1m)",
        ],
    ),
    (
        "reconnect_min_above_max",
        "10:17",
        &[
            "timings.reconnect_min:",
            "longer than timings.reconnect_max (5s)",
        ],
    ),
    (
        "login_backoff_too_short",
        "11:21",
        &["timings.login_backoff_min:", "5s is out of range (10s..="],
    ),
    ("bad_site_id", "2:6", &["site.id:", "`Main Office!`", "a-z"]),
    (
        "forward_without_port",
        "6:16",
        &["forwards.local_listen:", "`127.0.0.1` is not host:port"],
    ),
    (
        "bad_board_backend",
        "10:11",
        &[
            "board.backend:",
            "`blinkenlights` is not one of none, sim, gpio",
        ],
    ),
    (
        "bad_cipher",
        "5:10",
        &["hub.cipher:", "`rot13` is not one of auto, aes128-gcm"],
    ),
    ("toml_syntax", "2:13", &["string"]),
    ("bad_host_key", "5:12", &["hub.host_key:", "SHA256:"]),
    (
        "checksum_hour_25",
        "10:17",
        &["replication.checksum_hour:", "25 is out of range (0..=23)"],
    ),
    (
        "tls_without_ca",
        "10:7",
        &["mqtt.tls:", "mqtt.ca_file must be set"],
    ),
];

#[test]
fn every_bad_file_is_located_and_explained() {
    let mut failures = Vec::new();
    for (name, place, fragments) in BAD {
        let path = fixture("bad", name);
        let err = match Config::load(&path) {
            Ok(_) => {
                failures.push(format!("{name}: parsed, but must be refused"));
                continue;
            }
            Err(e) => e,
        };
        let shown = err.to_string();
        let want_prefix = format!("{}:{place}: ", path.display());
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
        for secret in SECRETS {
            if shown.contains(secret) || format!("{err:?}").contains(secret) {
                failures.push(format!("{name}: error shows a password: {shown}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_bad_fixture_is_in_the_table() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/bad");
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = BAD.iter().map(|(n, _, _)| n.to_string()).collect();
    assert_eq!(on_disk, listed);
    assert!(BAD.len() >= 14);
}

#[test]
fn good_files_parse() {
    let c = Config::load(fixture("good", "minimal")).unwrap();
    assert_eq!(c.site.id, "office");
    assert_eq!(c.site.display_name(), "office");
    assert_eq!(c.hub.port, 22);
    assert_eq!(c.key_path(), Path::new("/var/lib/tether/device_key"));
    assert_eq!(c.mqtt_client_id(), "tether-office");
    assert_eq!(c.office_db.password.expose(), "office-secret-1");
    let shown = format!("{c:?} {c:#?}");
    assert!(!shown.contains("office-secret-1") && !shown.contains("hub-secret-2"));

    let example =
        Config::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("tether.example.toml")).unwrap();
    assert_eq!(example, Config::example());
    let shown = format!("{example:?}");
    assert!(
        !shown.contains(example.office_db.password.expose()),
        "{shown}"
    );
    assert!(!shown.contains(example.hub_db.password.expose()), "{shown}");
}

/// The keys a table of the config accepts, read from the refusal of an unknown key.
fn accepted_keys(table_path: &[&str]) -> Vec<String> {
    let mut doc: toml::Table = toml::from_str(EXAMPLE).unwrap();
    let mut table = &mut doc;
    for part in table_path {
        table = table.get_mut(*part).unwrap().as_table_mut().unwrap();
    }
    table.insert("zz_not_a_key".into(), toml::Value::Integer(1));
    let err = Config::parse(&toml::to_string(&doc).unwrap(), "probe.toml").unwrap_err();
    assert_eq!(
        err.key.as_deref(),
        Some(
            table_path
                .iter()
                .copied()
                .chain(["zz_not_a_key"])
                .collect::<Vec<_>>()
                .join(".")
                .as_str()
        ),
        "{err}"
    );
    let list = err
        .message
        .split_once("expected one of ")
        .or_else(|| err.message.split_once("the only key here is "))
        .unwrap_or_else(|| panic!("no key list in `{err}`"))
        .1
        .trim_end_matches(')');
    list.split(", ").map(str::to_owned).collect()
}

#[test]
fn the_example_lists_every_key() {
    // The types themselves say which keys exist (by refusing an unknown one), so a key
    // added to a struct but not to the example fails here.
    let written = |key: &str| {
        ["\n", "\n# ", "{ ", ", "]
            .iter()
            .any(|before| EXAMPLE.contains(&format!("{before}{key} = ")))
    };
    let sections = accepted_keys(&[]);
    assert!(sections.len() >= 12, "{sections:?}");
    let mut checked = 0;
    for section in &sections {
        assert!(
            EXAMPLE.contains(&format!("\n[{section}]")),
            "example lacks [{section}]"
        );
        let keys = accepted_keys(&[section.as_str()]);
        for key in &keys {
            assert!(written(key), "example lacks {section}.{key}");
            checked += 1;
        }
        if section == "board" {
            for led in ["green", "amber", "red", "button"] {
                for key in accepted_keys(&["board", led]) {
                    assert!(
                        EXAMPLE.contains(&format!("\n{led} = {{ ")) && written(&key),
                        "example lacks board.{led}.{key}"
                    );
                }
            }
        }
    }
    assert!(checked >= 60, "only {checked} keys found");
}

#[test]
fn a_file_that_cannot_be_read_is_named() {
    let err = Config::load(Path::new("/nonexistent/tether.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/tether.toml: cannot read"),
        "{err}"
    );
}
