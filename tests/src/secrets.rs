//! The secrets a test configured (passwords, device key material) and a scan of what the
//! agent left behind (logs, MQTT payloads, `tether status` output, the journal) for them.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

use crate::fixture::Fixture;

/// Named needles: every one must be absent from everything scanned.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    needles: Vec<(String, String)>,
}

impl Secrets {
    /// Every password of the fixture's databases and the device key's private material.
    pub fn of_fixture(f: &Fixture) -> Result<Secrets> {
        let mut s = Secrets::default();
        for db in [&f.hub_db, &f.office_db].into_iter().flatten() {
            s.add(&format!("{} root password", db.name), &db.root_password);
            s.add(
                &format!("{} replication password", db.name),
                &db.repl_password,
            );
            s.add(&format!("{} agent password", db.name), &db.agent_password);
        }
        if let Some(sshd) = &f.sshd {
            s.add_private_key("device key", &sshd.device_key)?;
        }
        Ok(s)
    }

    pub fn add(&mut self, what: &str, needle: &str) {
        // Short strings would match by chance; every password here is long and random.
        if needle.len() >= 8 {
            self.needles.push((what.to_owned(), needle.to_owned()));
        }
    }

    /// The base64 body of an OpenSSH private key, line by line (a leak of any line of it
    /// is a leak of key material), and its whole body on one line.
    pub fn add_private_key(&mut self, what: &str, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let body: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
            .collect();
        // The first line is the public header (magic, cipher "none", the public key):
        // only the lines after it carry private bytes.
        for (i, line) in body.iter().enumerate().skip(1) {
            self.add(&format!("{what} line {}", i + 1), line.trim());
        }
        self.add(&format!("{what} body"), &body.concat());
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.needles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// What of the secrets `haystack` holds, as "<secret> in <where>".
    pub fn scan(&self, place: &str, haystack: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(haystack);
        self.needles
            .iter()
            .filter(|(_, n)| text.contains(n.as_str()))
            .map(|(what, _)| format!("{what} in {place}"))
            .collect()
    }

    /// Scans a file (missing files hold nothing).
    pub fn scan_file(&self, place: &str, path: &Path) -> Vec<String> {
        match std::fs::read(path) {
            Ok(bytes) => self.scan(&format!("{place} ({})", path.display()), &bytes),
            Err(_) => Vec::new(),
        }
    }
}

/// Every message the broker passes on, topic and payload, appended to a file by a
/// `mosquitto_sub -v -t '#'` of its own (stopped on drop).
pub struct MqttTap {
    child: Child,
    pub file: std::path::PathBuf,
}

impl MqttTap {
    pub fn start(host: &str, port: u16, file: &Path) -> Result<MqttTap> {
        let out = std::fs::File::create(file)?;
        let child = Command::new(crate::process::program(
            "mosquitto_sub",
            "mosquitto-clients",
        )?)
        .args(["-h", host, "-p", &port.to_string(), "-v", "-t", "#"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start mosquitto_sub")?;
        Ok(MqttTap {
            child,
            file: file.to_path_buf(),
        })
    }
}

impl Drop for MqttTap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_was_configured_and_nothing_else() {
        let mut s = Secrets::default();
        s.add("pw", "Correct-Horse-9");
        s.add("short", "abc");
        assert_eq!(s.len(), 1);
        assert!(s.scan("log", b"password=***").is_empty());
        assert_eq!(
            s.scan("log", b"x Correct-Horse-9 y"),
            vec!["pw in log".to_owned()]
        );
    }
}
