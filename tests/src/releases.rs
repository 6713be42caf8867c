//! Releases as a publisher makes them: a release key pair, signed manifests laid out in
//! the hub's release directory, and the rollout file. `cargo xtask release` and the
//! update tests share this; the tests also make the binaries of later versions (a copy
//! of a real binary with another version in its slot) and deliberately broken ones.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use tether::release::{MANIFEST_FILE, Manifest, NAMESPACE, SIGNATURE_FILE, Version};

/// A release key pair in OpenSSH format (the private half never goes near a box).
#[derive(Debug, Clone)]
pub struct ReleaseKey {
    pub private: PathBuf,
    /// The `.pub` file: what a package or image ships as `release-key.pub`.
    pub public: PathBuf,
}

impl ReleaseKey {
    /// A throwaway key pair without a passphrase in `dir` (tests only: a real release key
    /// has a passphrase and lives offline).
    pub fn generate(dir: &Path, name: &str) -> Result<ReleaseKey> {
        std::fs::create_dir_all(dir)?;
        let private = dir.join(name);
        let _ = std::fs::remove_file(&private);
        let _ = std::fs::remove_file(private.with_extension("pub"));
        run(Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "tether-release",
                "-f",
            ])
            .arg(&private))?;
        Ok(ReleaseKey {
            public: PathBuf::from(format!("{}.pub", private.display())),
            private,
        })
    }

    /// A key pair already on disk (`PATH` and `PATH.pub`).
    pub fn at(private: &Path) -> ReleaseKey {
        ReleaseKey {
            private: private.to_path_buf(),
            public: PathBuf::from(format!("{}.pub", private.display())),
        }
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Signs `file` as a release manifest: `ssh-keygen -Y sign -n tether-release`, which also
/// works with a passphrase (it asks), a key held by ssh-agent or a hardware key. Writes
/// `<file>.sig`.
pub fn sign(key: &ReleaseKey, file: &Path) -> Result<PathBuf> {
    let sig = PathBuf::from(format!("{}.sig", file.display()));
    let _ = std::fs::remove_file(&sig);
    run(Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", NAMESPACE, "-f"])
        .arg(&key.private)
        .arg(file))?;
    Ok(sig)
}

/// Lays out one release in the hub's release directory: `<version>/<arch>/` with the
/// binary, its manifest and the manifest's signature, all world-readable (the hub's sshd
/// serves them as the boxes' account). The binary's own version must be `version`.
pub fn publish(releases: &Path, binary: &Path, arch: &str, key: &ReleaseKey) -> Result<PathBuf> {
    let bytes =
        std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let version: Version = tether::release::parse_version(
        &tether::version::read(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", binary.display()))?,
    )
    .map_err(anyhow::Error::msg)?;
    let dir = releases.join(tether::release::release_dir(&version, arch));
    std::fs::create_dir_all(&dir)?;
    let manifest = Manifest::describe(version, arch, "tether", &bytes);
    std::fs::write(dir.join("tether"), &bytes)?;
    std::fs::write(dir.join(MANIFEST_FILE), manifest.to_toml())?;
    let sig = sign(key, &dir.join(MANIFEST_FILE))?;
    debug_assert!(sig.ends_with(SIGNATURE_FILE));
    readable(releases)?;
    Ok(dir)
}

/// Writes the hub's `rollout.toml`.
pub fn write_rollout(releases: &Path, text: &str) -> Result<()> {
    let path = releases.join(tether::release::ROLLOUT_FILE);
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    readable(releases)
}

/// A rollout giving every site `version`.
pub fn everyone(version: &str) -> String {
    format!("default = \"stable\"\n[channels]\nstable = \"{version}\"\n")
}

/// Directories 0755 and files 0644 below `root`.
fn readable(root: &Path) -> Result<()> {
    let meta = std::fs::metadata(root)?;
    let mode = if meta.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode))?;
    if meta.is_dir() {
        for e in std::fs::read_dir(root)? {
            readable(&e?.path())?;
        }
    }
    Ok(())
}

/// A copy of a tether binary that says it is `version` (the code is byte for byte the
/// same: what a later release changes does not matter to the update machinery).
pub fn versioned_copy(binary: &Path, version: &str, out: &Path) -> Result<PathBuf> {
    let mut bytes = std::fs::read(binary)?;
    tether::version::write(&mut bytes, version).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(out, &bytes)?;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755))?;
    Ok(out.to_path_buf())
}

/// The next patch version after `v` plus `n` (1 for N+1).
pub fn bump(v: &str, n: u64) -> String {
    let v = tether::release::parse_version(v).expect("a valid version");
    format!("{}.{}.{}", v.major, v.minor, v.patch + n)
}

/// A tiny program for this machine that carries a tether version and exits 1 at once:
/// a release that is signed and well-formed but broken. Built with the system's C
/// compiler.
pub fn broken_binary(version: &str, out: &Path) -> Result<PathBuf> {
    let slot = tether::version::slot_for(version).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bytes: Vec<String> = slot.iter().map(|b| b.to_string()).collect();
    let src = out.with_extension("c");
    std::fs::write(
        &src,
        format!(
            "/* A tether release that exits at start (update tests). */\n\
             __attribute__((used)) static const unsigned char slot[{}] = {{{}}};\n\
             int main(void) {{ return slot[0] + 1; }}\n",
            slot.len(),
            bytes.join(",")
        ),
    )?;
    run(Command::new("cc").arg("-O1").arg("-o").arg(out).arg(&src))?;
    Ok(out.to_path_buf())
}

/// A copy of a binary whose ELF header says another machine (aarch64 on x86_64 and the
/// other way round): a release for another architecture.
pub fn other_arch_copy(binary: &Path, out: &Path) -> Result<(PathBuf, &'static str)> {
    let mut bytes = std::fs::read(binary)?;
    let (machine, arch): (u16, &str) = if tether::release::THIS_ARCH == "aarch64" {
        (62, "x86_64")
    } else {
        (183, "aarch64")
    };
    bytes[18..20].copy_from_slice(&machine.to_le_bytes());
    std::fs::write(out, &bytes)?;
    Ok((out.to_path_buf(), arch))
}
