//! Writes the agent's database passwords into `tether.toml` the way a person would edit
//! it: only those two values change; comments, order, spacing and the file's mode and
//! owner stay as they were (toml_edit keeps the document as written), and the file is
//! replaced atomically.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::secret::Secret;

/// Sets `office_db.password` and `hub_db.password` in the TOML `text`; the rest of the
/// text is kept byte for byte.
pub fn with_passwords(text: &str, office: &Secret, hub: &Secret) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| format!("cannot read it as TOML: {e}"))?;
    for (table, password) in [("office_db", office), ("hub_db", hub)] {
        let item = doc
            .get_mut(table)
            .and_then(toml_edit::Item::as_table_like_mut)
            .ok_or_else(|| format!("it has no [{table}] table"))?;
        match item.get_mut("password") {
            Some(toml_edit::Item::Value(v)) => {
                // Keep the comment and spacing around the old value.
                let decor = v.decor().clone();
                let mut new = toml_edit::Value::from(password.expose());
                *new.decor_mut() = decor;
                *v = new;
            }
            _ => {
                item.insert("password", toml_edit::value(password.expose()));
            }
        }
    }
    Ok(doc.to_string())
}

/// Rewrites the config file at `path` with the agent's new passwords, keeping its mode
/// and owner.
pub fn write_passwords(path: &Path, office: &Secret, hub: &Secret) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let new = with_passwords(&text, office, hub).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::config::Config::parse(&new, path)
        .map_err(|e| format!("{}: the edited file would not load: {e}", path.display()))?;
    let mode = meta.mode() & 0o7777;
    crate::journal::write_atomic(path, new.as_bytes(), Some(mode))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    // The new file was created with this process's umask and owner: give it the old ones.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    if let Err(e) = std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid())) {
        // Only root can give a file away; a config owned by the one running setup is fine.
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(format!("cannot keep the owner of {}: {e}", path.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# The office's box\n[site]\nid = \"office\"  # in topics\n\n[office_db]\n# the agent's own account\npassword = \"old\"   # set by tether setup\nport = 3306\n\n[hub_db]\nuser = \"tether\"\n";

    #[test]
    fn only_the_passwords_change() {
        let out = with_passwords(TEXT, &Secret::new("n\"ew"), &Secret::new("hubpw")).unwrap();
        assert_eq!(
            out,
            "# The office's box\n[site]\nid = \"office\"  # in topics\n\n[office_db]\n# the agent's own account\npassword = 'n\"ew'   # set by tether setup\nport = 3306\n\n[hub_db]\nuser = \"tether\"\npassword = \"hubpw\"\n"
        );
    }

    #[test]
    fn a_file_without_the_tables_is_refused() {
        let e = with_passwords("[site]\n", &Secret::new("a"), &Secret::new("b")).unwrap_err();
        assert!(e.contains("[office_db]"), "{e}");
    }

    #[test]
    fn the_file_keeps_its_mode_and_comments() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.toml");
        let mut config = crate::config::Config::example();
        config.data.dir = dir.path().join("data");
        let text = format!(
            "# kept: a comment at the top\n{}",
            toml::to_string(&config).unwrap()
        );
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_passwords(&path, &Secret::new("office-new"), &Secret::new("hub-new")).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.starts_with("# kept: a comment at the top\n"));
        let loaded = crate::config::Config::load(&path).unwrap();
        assert_eq!(loaded.office_db.password.expose(), "office-new");
        assert_eq!(loaded.hub_db.password.expose(), "hub-new");
        // Nothing else changed.
        let mut expected = config.clone();
        expected.office_db.password = Secret::new("office-new");
        expected.hub_db.password = Secret::new("hub-new");
        assert_eq!(
            toml::to_string(&loaded).unwrap(),
            toml::to_string(&expected).unwrap()
        );
        assert!(!dir.path().join("tether.toml.tmp").exists());
    }
}
