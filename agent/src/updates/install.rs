//! Installed releases in the data dir: checking one (the launcher does before every
//! start), installing a verified download as a sequence of steps each atomic on the file
//! system, and removing what is no longer needed.
//!
//! `versions/<version>/` holds the binary (`tether`), its manifest and the manifest's
//! signature, so the launcher can check the files again with the box's release keys
//! without trusting whoever wrote them. A version directory appears whole (it is built
//! as `.<version>.tmp` and renamed); the switch request is written last.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::PublicKey;

use super::state::{Layout, SwitchRequest};
use crate::release::{BinaryScan, MANIFEST_FILE, Manifest, Refusal, SIGNATURE_FILE, THIS_ARCH};

/// The binary's name inside a version directory.
pub const BINARY: &str = "tether";

/// The binary of an installed version.
pub fn binary_path(layout: &Layout, version: &str) -> PathBuf {
    layout.versions().join(version).join(BINARY)
}

/// Checks an installed version's files: its manifest's signature with `keys`, the
/// manifest against the directory name and this box, and the binary against the
/// manifest.
pub fn verify_installed(layout: &Layout, version: &str, keys: &[PublicKey]) -> Result<(), String> {
    let dir = layout.versions().join(version);
    // Named by the file alone: the data dir's path is a config value, and this reason is
    // shown in the state document.
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let manifest =
        crate::release::verify_manifest(&read(MANIFEST_FILE)?, &read(SIGNATURE_FILE)?, keys)
            .map_err(|e| e.to_string())?;
    if manifest.version.to_string() != version {
        return Err(format!("its manifest is for {}", manifest.version));
    }
    if manifest.arch != THIS_ARCH {
        return Err(format!("it is built for {}", manifest.arch));
    }
    check_file(&manifest, &dir.join(BINARY)).map_err(|e| match e {
        FileCheck::Io(e) => format!("{BINARY}: {e}"),
        refused => refused.to_string(),
    })
}

/// A file on disk against its manifest (read in pieces). An I/O error is the OS's words
/// without the path (the caller says which file: the path is in the data dir, a config
/// value).
pub fn check_file(manifest: &Manifest, path: &Path) -> Result<(), FileCheck> {
    let mut f = std::fs::File::open(path).map_err(|e| FileCheck::Io(e.to_string()))?;
    let mut scan = BinaryScan::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| FileCheck::Io(e.to_string()))?;
        if n == 0 {
            break;
        }
        scan.feed(&buf[..n]);
    }
    scan.finish(manifest).map_err(FileCheck::Refused)
}

/// Why a file did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileCheck {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Refused(Refusal),
}

/// One step of an install; each leaves the file system in a state the launcher handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Removes a directory and everything in it, if it is there.
    Remove(PathBuf),
    MakeDir(PathBuf),
    /// Writes a file and syncs it.
    Write(PathBuf, Vec<u8>),
    /// Makes the verified download the version's binary: mode 0755, synced, renamed in.
    MoveIn {
        from: PathBuf,
        to: PathBuf,
    },
    /// Syncs a directory (its entries are durable after this).
    SyncDir(PathBuf),
    /// Renames the complete version directory into place and syncs its parent.
    Publish {
        from: PathBuf,
        to: PathBuf,
    },
    /// Writes the switch request (atomically).
    Request(SwitchRequest),
}

/// The steps that install a verified download (`partial`) as `manifest.version` and ask
/// the launcher to switch to it.
pub fn install_steps(
    layout: &Layout,
    manifest_text: &[u8],
    signature: &[u8],
    manifest: &Manifest,
    partial: &Path,
    request: SwitchRequest,
) -> Vec<Step> {
    let version = manifest.version.to_string();
    let tmp = layout.versions().join(format!(".{version}.tmp"));
    let dir = layout.versions().join(&version);
    vec![
        Step::Remove(tmp.clone()),
        Step::MakeDir(tmp.clone()),
        Step::Write(tmp.join(MANIFEST_FILE), manifest_text.to_vec()),
        Step::Write(tmp.join(SIGNATURE_FILE), signature.to_vec()),
        Step::MoveIn {
            from: partial.to_path_buf(),
            to: tmp.join(BINARY),
        },
        Step::SyncDir(tmp.clone()),
        Step::Remove(dir.clone()),
        Step::Publish { from: tmp, to: dir },
        Step::Request(request),
    ]
}

/// Carries out one step.
pub fn apply(layout: &Layout, step: &Step) -> std::io::Result<()> {
    match step {
        Step::Remove(dir) => match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
        Step::MakeDir(dir) => std::fs::create_dir_all(dir),
        Step::Write(path, bytes) => {
            let mut f = std::fs::File::create(path)?;
            f.write_all(bytes)?;
            f.sync_all()
        }
        Step::MoveIn { from, to } => {
            std::fs::set_permissions(from, std::fs::Permissions::from_mode(0o755))?;
            std::fs::File::open(from)?.sync_all()?;
            std::fs::rename(from, to)
        }
        Step::SyncDir(dir) => std::fs::File::open(dir)?.sync_all(),
        Step::Publish { from, to } => {
            std::fs::rename(from, to)?;
            crate::journal::sync_dir_of(to)
        }
        Step::Request(request) => layout.save_request(request),
    }
}

/// Removes installed versions other than `keep`, half-built version directories, and
/// downloads other than `keep_download`.
pub fn prune(layout: &Layout, keep: &[String], keep_download: Option<&Path>) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if let Ok(entries) = std::fs::read_dir(layout.versions()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) && std::fs::remove_dir_all(e.path()).is_ok() {
                removed.push(e.path());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(layout.downloads()) {
        for e in entries.flatten() {
            if Some(e.path().as_path()) != keep_download && std::fs::remove_file(e.path()).is_ok() {
                removed.push(e.path());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{NAMESPACE, parse_version};
    use crate::updates::launcher::plan;
    use crate::updates::state::LauncherState;
    use russh::keys::ssh_key::{HashAlg, LineEnding, PrivateKey};

    struct Release {
        text: Vec<u8>,
        sig: Vec<u8>,
        manifest: Manifest,
        binary: Vec<u8>,
    }

    /// A small stand-in for a release binary: an ELF header for this box and a version.
    fn release(key: &PrivateKey, version: &str) -> Release {
        let mut binary = vec![0u8; 64];
        binary[..4].copy_from_slice(b"\x7fELF");
        binary[4] = 2;
        binary[5] = 1;
        binary[16] = 3;
        let machine: u16 = if THIS_ARCH == "aarch64" { 183 } else { 62 };
        binary[18..20].copy_from_slice(&machine.to_le_bytes());
        binary.extend_from_slice(&crate::version::slot_for(version).unwrap());
        let manifest =
            Manifest::describe(parse_version(version).unwrap(), THIS_ARCH, BINARY, &binary);
        let text = manifest.to_toml().into_bytes();
        let sig = key
            .sign(NAMESPACE, HashAlg::Sha512, &text)
            .unwrap()
            .to_pem(LineEnding::LF)
            .unwrap()
            .into_bytes();
        Release {
            text,
            sig,
            manifest,
            binary,
        }
    }

    fn key() -> PrivateKey {
        let seed: [u8; 32] = rand::random();
        PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
            &seed,
        ))
    }

    fn install_all(layout: &Layout, r: &Release, from: &str, steps_done: usize) {
        std::fs::create_dir_all(layout.downloads()).unwrap();
        let partial = layout.downloads().join("x.partial");
        std::fs::write(&partial, &r.binary).unwrap();
        let request = SwitchRequest {
            version: r.manifest.version.to_string(),
            baseline: "in_sync".into(),
            from: from.into(),
        };
        for step in install_steps(layout, &r.text, &r.sig, &r.manifest, &partial, request)
            .iter()
            .take(steps_done)
        {
            apply(layout, step).unwrap();
        }
    }

    #[test]
    fn an_installed_version_verifies_until_its_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let k = key();
        let keys = vec![k.public_key().clone()];
        let r = release(&k, "9.0.1");
        install_all(&layout, &r, "9.0.0", usize::MAX);
        assert_eq!(verify_installed(&layout, "9.0.1", &keys), Ok(()));
        let bin = binary_path(&layout, "9.0.1");
        assert_eq!(
            std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let other = key();
        assert!(verify_installed(&layout, "9.0.1", &[other.public_key().clone()]).is_err());
        let mut bytes = std::fs::read(&bin).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&bin, &bytes).unwrap();
        let e = verify_installed(&layout, "9.0.1", &keys).unwrap_err();
        assert!(e.contains("SHA-256"), "{e}");
        assert!(verify_installed(&layout, "9.0.2", &keys).is_err());
    }

    /// A power cut after any step of an install leaves a box whose launcher starts a
    /// version that verifies: the old one, or the new one on trial.
    #[test]
    fn a_cut_after_any_install_step_leaves_a_runnable_box() {
        let k = key();
        let keys = vec![k.public_key().clone()];
        let old = release(&k, "9.0.1");
        let new = release(&k, "9.0.2");
        let factory = parse_version("9.0.0").unwrap();
        let steps = 9;
        for done in 0..=steps {
            let dir = tempfile::tempdir().unwrap();
            let layout = Layout::new(dir.path());
            install_all(&layout, &old, "9.0.0", usize::MAX);
            layout.clear_request().unwrap();
            let mut state = LauncherState {
                current: Some("9.0.1".into()),
                ..Default::default()
            };
            install_all(&layout, &new, "9.0.1", done);
            let request = layout.load_request();
            let verify = |v: &str| verify_installed(&layout, v, &keys);
            let (p, said) = plan(&mut state, &factory, request.as_ref(), &verify, 0);
            let runs = p.version.clone().expect("an installed version runs");
            assert!(
                verify_installed(&layout, &runs, &keys).is_ok(),
                "after {done} steps the launcher would run {runs}: {said:?}"
            );
            if done == steps {
                assert_eq!(runs, "9.0.2", "{said:?}");
                assert!(p.trial.is_some());
            } else {
                assert_eq!(runs, "9.0.1", "after {done} steps: {said:?}");
            }
            let removed = prune(&layout, &["9.0.1".into(), "9.0.2".into()], None);
            assert!(removed.iter().all(|p| !p.ends_with("9.0.1")), "{removed:?}");
            assert!(verify_installed(&layout, &runs, &keys).is_ok());
        }
    }
}
