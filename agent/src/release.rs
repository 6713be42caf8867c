//! Releases as the hub offers them and the box checks them: the release keys, the signed
//! manifest, the binary's architecture and version, and the rollout file that says which
//! site runs which version. Pure: bytes in, verdicts out.
//!
//! On the hub (the sftp start directory): `rollout.toml`, and for each release
//! `<version>/<arch>/manifest.toml`, its signature `manifest.toml.sig` (an OpenSSH
//! SSHSIG, namespace [`NAMESPACE`], as `ssh-keygen -Y sign` writes it) and the binary the
//! manifest names. The manifest carries the binary's size and SHA-256, so one signature
//! covers the file.

use std::collections::BTreeMap;
use std::fmt;

use russh::keys::ssh_key::{Algorithm, PublicKey, SshSig};
use serde::Deserialize;
use sha2::Digest;

pub use semver::Version;

/// What a package without a release key ships as its key file: the box refuses updates.
pub const NO_RELEASE_KEY: &str = "# No release key was given when this package was built: \
this box refuses every update.\n";

/// The signing namespace of release manifests (`ssh-keygen -Y sign -n tether-release`):
/// a signature made for anything else with the same key never passes as a release.
pub const NAMESPACE: &str = "tether-release";

/// The manifest format this box reads.
pub const FORMAT: u32 = 1;

/// The rollout file's name in the hub's release directory.
pub const ROLLOUT_FILE: &str = "rollout.toml";
/// The manifest's name in a release directory.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// The signature's name beside it.
pub const SIGNATURE_FILE: &str = "manifest.toml.sig";

/// The largest manifest, signature or rollout file the box reads.
pub const SMALL_FILE_MAX: u64 = 64 * 1024;

/// This box's architecture as manifests name it (`x86_64`, `aarch64`).
pub const THIS_ARCH: &str = std::env::consts::ARCH;

/// The trusted release keys in a key file: one OpenSSH `ssh-ed25519` public key a line;
/// blank lines and `#` comments are skipped. Other key types are refused (a release is
/// signed with ed25519).
pub fn parse_release_keys(text: &str) -> Result<Vec<PublicKey>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = PublicKey::from_openssh(line)
            .map_err(|e| format!("line {}: not an OpenSSH public key ({e})", n + 1))?;
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(format!(
                "line {}: a {} key; release keys are ssh-ed25519",
                n + 1,
                key.algorithm()
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// A release version as written (`0.2.1`, `0.3.0-rc.1`).
pub fn parse_version(text: &str) -> Result<Version, String> {
    Version::parse(text.trim()).map_err(|e| format!("`{text}` is not a version like 1.2.3 ({e})"))
}

/// Whether `a` is newer than `b` (build metadata does not count).
pub fn newer(a: &Version, b: &Version) -> bool {
    a.cmp_precedence(b) == std::cmp::Ordering::Greater
}

/// The signed description of one release binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: Version,
    /// `x86_64`, `aarch64`: what `std::env::consts::ARCH` says on the box it is for.
    pub arch: String,
    /// The binary's name in the release directory.
    pub file: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

/// The manifest as written. Keys a later format adds are ignored by this box (the
/// signature still covers them); the ones below must be there.
#[derive(Deserialize)]
struct RawManifest {
    format: u32,
    version: String,
    arch: String,
    file: String,
    size: u64,
    sha256: String,
}

impl Manifest {
    /// The manifest's text (what is signed).
    pub fn to_toml(&self) -> String {
        format!(
            "# A tether release, signed by the release key in {SIGNATURE_FILE}.\n\
             format = {FORMAT}\nversion = \"{}\"\narch = \"{}\"\nfile = \"{}\"\nsize = {}\nsha256 = \"{}\"\n",
            self.version,
            self.arch,
            self.file,
            self.size,
            hex(&self.sha256)
        )
    }

    /// Parses a manifest whose signature has already been checked.
    pub fn parse(text: &str) -> Result<Manifest, Refusal> {
        let bad = |why: String| Refusal::BadManifest(why);
        let raw: RawManifest = toml::from_str(text).map_err(|e| bad(first_line(&e)))?;
        if raw.format != FORMAT {
            return Err(bad(format!(
                "format {} (this box reads format {FORMAT}; install a newer tether by package or image)",
                raw.format
            )));
        }
        let version = parse_version(&raw.version).map_err(bad)?;
        if raw.file.is_empty()
            || raw.file.contains('/')
            || raw.file.starts_with('.')
            || raw.file.chars().any(char::is_control)
        {
            return Err(bad(format!(
                "file `{}` must be a plain file name in the release directory",
                raw.file
            )));
        }
        let sha256 = unhex32(&raw.sha256)
            .ok_or_else(|| bad(format!("sha256 `{}` is not 64 hex digits", raw.sha256)))?;
        Ok(Manifest {
            version,
            arch: raw.arch,
            file: raw.file,
            size: raw.size,
            sha256,
        })
    }

    /// The manifest of `binary` (the publisher's side).
    pub fn describe(version: Version, arch: &str, file: &str, binary: &[u8]) -> Manifest {
        Manifest {
            version,
            arch: arch.to_owned(),
            file: file.to_owned(),
            size: binary.len() as u64,
            sha256: sha2::Sha256::digest(binary).into(),
        }
    }
}

/// Why a release is not installed: each reason in plain words, each means nothing was
/// changed on the box.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this box has no release key ({0}), so it installs nothing")]
    NoKey(String),
    #[error("its signature does not verify with this box's release key{}: {why}", if *keys == 1 { "" } else { "s" })]
    BadSignature { why: String, keys: usize },
    #[error("its manifest is unreadable: {0}")]
    BadManifest(String),
    #[error("the hub's {dir}/ holds a manifest for version {found}")]
    WrongDirectory { dir: String, found: Version },
    #[error("it is built for {release}; this box is {this}")]
    OtherArch { release: String, this: String },
    #[error("{running} runs here and {offered} is older: no downgrades")]
    Older { offered: Version, running: Version },
    #[error(
        "the downloaded file has {got} bytes where the signed manifest says {want} (truncated or altered)"
    )]
    Size { got: u64, want: u64 },
    #[error(
        "the downloaded file's SHA-256 differs from the signed manifest's (altered or damaged on the way)"
    )]
    Digest,
    #[error("the file is not a Linux program: {0}")]
    NotElf(String),
    #[error("the file is a program for {elf}, though its manifest says {manifest}")]
    ElfArch { elf: String, manifest: String },
    #[error("the binary says it is version {binary}, its manifest {manifest}")]
    VersionMismatch { binary: String, manifest: Version },
    #[error("the binary carries no readable version: {0}")]
    NoVersion(String),
    #[error("it was rolled back on this box before ({0}); publish a newer version")]
    FailedBefore(String),
}

/// Checks the manifest's signature against the trusted keys, then parses it.
pub fn verify_manifest(
    text: &[u8],
    signature: &[u8],
    keys: &[PublicKey],
) -> Result<Manifest, Refusal> {
    if keys.is_empty() {
        return Err(Refusal::NoKey("no key configured".into()));
    }
    let sig = SshSig::from_pem(signature).map_err(|e| Refusal::BadSignature {
        why: format!("{SIGNATURE_FILE} is not an SSH signature ({e})"),
        keys: keys.len(),
    })?;
    if sig.namespace() != NAMESPACE {
        return Err(Refusal::BadSignature {
            why: format!(
                "it was made for `{}`, not for `{NAMESPACE}`",
                sig.namespace()
            ),
            keys: keys.len(),
        });
    }
    let signed_by_trusted = keys.iter().any(|k| k.key_data() == sig.public_key());
    if !signed_by_trusted {
        return Err(Refusal::BadSignature {
            why: "it was made with a key this box does not trust".into(),
            keys: keys.len(),
        });
    }
    let good = keys
        .iter()
        .filter(|k| k.key_data() == sig.public_key())
        .any(|k| k.verify(NAMESPACE, text, &sig).is_ok());
    if !good {
        return Err(Refusal::BadSignature {
            why: "the manifest was changed after it was signed".into(),
            keys: keys.len(),
        });
    }
    let text = std::str::from_utf8(text)
        .map_err(|_| Refusal::BadManifest("it is not UTF-8 text".into()))?;
    Manifest::parse(text)
}

/// Whether a release for `manifest` may replace the running version on this box: the
/// right architecture and newer than what runs.
pub fn check_offer(manifest: &Manifest, running: &Version, this_arch: &str) -> Result<(), Refusal> {
    if manifest.arch != this_arch {
        return Err(Refusal::OtherArch {
            release: manifest.arch.clone(),
            this: this_arch.to_owned(),
        });
    }
    if !newer(&manifest.version, running) {
        return Err(Refusal::Older {
            offered: manifest.version.clone(),
            running: running.clone(),
        });
    }
    Ok(())
}

/// Checks a downloaded binary against its verified manifest: size, SHA-256, the ELF
/// header's architecture and the version it carries.
pub fn check_binary(manifest: &Manifest, binary: &[u8]) -> Result<(), Refusal> {
    let mut scan = BinaryScan::default();
    scan.feed(binary);
    scan.finish(manifest)
}

/// [`check_binary`] for a file read piece by piece, so a release is never held whole in
/// the agent's memory.
#[derive(Default)]
pub struct BinaryScan {
    size: u64,
    digest: sha2::Sha256,
    head: Vec<u8>,
    slot: crate::version::SlotScan,
}

/// Bytes of the ELF header looked at.
const ELF_HEAD: usize = 64;

impl BinaryScan {
    pub fn feed(&mut self, piece: &[u8]) {
        self.size += piece.len() as u64;
        self.digest.update(piece);
        if self.head.len() < ELF_HEAD {
            let take = (ELF_HEAD - self.head.len()).min(piece.len());
            self.head.extend_from_slice(&piece[..take]);
        }
        self.slot.feed(piece);
    }

    pub fn finish(self, manifest: &Manifest) -> Result<(), Refusal> {
        if self.size != manifest.size {
            return Err(Refusal::Size {
                got: self.size,
                want: manifest.size,
            });
        }
        let digest: [u8; 32] = self.digest.finalize().into();
        if digest != manifest.sha256 {
            return Err(Refusal::Digest);
        }
        let elf = elf_arch(&self.head).map_err(Refusal::NotElf)?;
        if elf != manifest.arch {
            return Err(Refusal::ElfArch {
                elf,
                manifest: manifest.arch.clone(),
            });
        }
        let carried = self
            .slot
            .version()
            .map_err(|e| Refusal::NoVersion(e.to_string()))?;
        if parse_version(&carried).ok().as_ref() != Some(&manifest.version) {
            return Err(Refusal::VersionMismatch {
                binary: carried,
                manifest: manifest.version.clone(),
            });
        }
        Ok(())
    }
}

/// The architecture an ELF executable is for, named as `std::env::consts::ARCH` names it.
pub fn elf_arch(binary: &[u8]) -> Result<String, String> {
    if binary.len() < 20 || &binary[..4] != b"\x7fELF" {
        return Err("no ELF header".into());
    }
    let class = binary[4];
    let little = match binary[5] {
        1 => true,
        2 => false,
        other => return Err(format!("unknown byte order {other}")),
    };
    let u16_at = |at: usize| {
        let b = [binary[at], binary[at + 1]];
        if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let kind = u16_at(16);
    if kind != 2 && kind != 3 {
        return Err(format!("ELF type {kind} is not an executable"));
    }
    let arch = match (u16_at(18), class) {
        (62, 2) => "x86_64",
        (183, 2) => "aarch64",
        (40, 1) => "arm",
        (3, 1) => "x86",
        (243, 2) => "riscv64",
        (machine, class) => {
            return Ok(format!(
                "ELF machine {machine} ({}-bit)",
                if class == 2 { 64 } else { 32 }
            ));
        }
    };
    Ok(arch.to_owned())
}

/// Which release each site runs, as the publisher wrote it in `rollout.toml`:
///
/// ```toml
/// default = "stable"            # the channel of every site not named below
/// [channels]
/// stable = "0.2.0"
/// early = "0.2.1"
/// [sites]
/// office-berlin = { channel = "early" }
/// office-paris = { version = "0.2.1" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub default: String,
    #[serde(default)]
    pub channels: BTreeMap<String, String>,
    #[serde(default)]
    pub sites: BTreeMap<String, SiteRule>,
}

/// One site's line in the rollout: a channel, or a version of its own.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum SiteRule {
    Channel(String),
    Version(String),
}

/// The version the rollout gives a site, and where that comes from (for the status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub version: Version,
    /// `channel stable`, `site office-paris`.
    pub from: String,
}

impl Rollout {
    /// Parses the rollout file; errors name the line.
    pub fn parse(text: &str) -> Result<Rollout, String> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            match line {
                Some(l) => format!("{ROLLOUT_FILE} line {l}: {}", first_line(&e)),
                None => format!("{ROLLOUT_FILE}: {}", first_line(&e)),
            }
        })
    }

    /// The version for `site`.
    pub fn target(&self, site: &str) -> Result<Target, String> {
        let channel = match self.sites.get(site) {
            Some(SiteRule::Version(v)) => {
                return Ok(Target {
                    version: parse_version(v)
                        .map_err(|e| format!("{ROLLOUT_FILE}: site {site}: {e}"))?,
                    from: format!("site {site}"),
                });
            }
            Some(SiteRule::Channel(c)) => c,
            None => &self.default,
        };
        let v = self.channels.get(channel).ok_or_else(|| {
            format!("{ROLLOUT_FILE}: channel `{channel}` (for site {site}) is not in [channels]")
        })?;
        Ok(Target {
            version: parse_version(v)
                .map_err(|e| format!("{ROLLOUT_FILE}: channel {channel}: {e}"))?,
            from: format!("channel {channel}"),
        })
    }
}

/// The release directory of a version and architecture on the hub.
pub fn release_dir(version: &Version, arch: &str) -> String {
    format!("{version}/{arch}")
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

fn first_line(e: &impl fmt::Display) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::{HashAlg, LineEnding, PrivateKey};

    fn key() -> PrivateKey {
        let seed: [u8; 32] = rand::random();
        PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
            &seed,
        ))
    }

    fn sign(key: &PrivateKey, text: &str) -> String {
        key.sign(NAMESPACE, HashAlg::Sha512, text.as_bytes())
            .unwrap()
            .to_pem(LineEnding::LF)
            .unwrap()
    }

    fn elf(machine: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&3u16.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b
    }

    fn binary(version: &str, machine: u16) -> Vec<u8> {
        let mut b = elf(machine);
        b.extend_from_slice(&crate::version::slot_for(version).unwrap());
        b
    }

    fn v(s: &str) -> Version {
        parse_version(s).unwrap()
    }

    #[test]
    fn a_signed_manifest_verifies_and_a_changed_one_does_not() {
        let k = key();
        let keys = vec![k.public_key().clone()];
        let m = Manifest::describe(v("0.2.0"), "x86_64", "tether", &binary("0.2.0", 62));
        let text = m.to_toml();
        let sig = sign(&k, &text);
        assert_eq!(
            verify_manifest(text.as_bytes(), sig.as_bytes(), &keys),
            Ok(m.clone())
        );

        let changed = text.replace("0.2.0", "0.9.0");
        let e = verify_manifest(changed.as_bytes(), sig.as_bytes(), &keys).unwrap_err();
        assert!(e.to_string().contains("changed after it was signed"), "{e}");

        let other = key();
        let e =
            verify_manifest(text.as_bytes(), sign(&other, &text).as_bytes(), &keys).unwrap_err();
        assert!(
            e.to_string().contains("a key this box does not trust"),
            "{e}"
        );

        let wrong_ns = other
            .sign("file", HashAlg::Sha512, text.as_bytes())
            .unwrap()
            .to_pem(LineEnding::LF)
            .unwrap();
        let e = verify_manifest(
            text.as_bytes(),
            wrong_ns.as_bytes(),
            &[other.public_key().clone()],
        )
        .unwrap_err();
        assert!(e.to_string().contains("made for `file`"), "{e}");

        let e = verify_manifest(text.as_bytes(), b"garbage", &keys).unwrap_err();
        assert!(e.to_string().contains("not an SSH signature"), "{e}");
        assert!(matches!(
            verify_manifest(text.as_bytes(), sig.as_bytes(), &[]),
            Err(Refusal::NoKey(_))
        ));
    }

    #[test]
    fn any_of_several_trusted_keys_may_sign() {
        let (old, new) = (key(), key());
        let keys = vec![old.public_key().clone(), new.public_key().clone()];
        let text = Manifest::describe(v("1.0.0"), "aarch64", "tether", b"x").to_toml();
        assert!(verify_manifest(text.as_bytes(), sign(&new, &text).as_bytes(), &keys).is_ok());
        assert!(verify_manifest(text.as_bytes(), sign(&old, &text).as_bytes(), &keys).is_ok());
    }

    #[test]
    fn key_files() {
        let k = key();
        let line = k.public_key().to_openssh().unwrap();
        let text = format!("# the release key\n\n{line}\n{line}\n");
        assert_eq!(parse_release_keys(&text).unwrap().len(), 2);
        assert!(parse_release_keys(NO_RELEASE_KEY).unwrap().is_empty());
        let e = parse_release_keys("ssh-ed25519 nonsense\n").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
    }

    #[test]
    fn binaries_are_checked_against_their_manifest() {
        let good = binary("0.2.0", 62);
        let m = Manifest::describe(v("0.2.0"), "x86_64", "tether", &good);
        assert_eq!(check_binary(&m, &good), Ok(()));
        assert_eq!(
            check_binary(&m, &good[..good.len() - 1]),
            Err(Refusal::Size {
                got: good.len() as u64 - 1,
                want: good.len() as u64
            })
        );
        let mut altered = good.clone();
        altered[70] ^= 1;
        assert_eq!(check_binary(&m, &altered), Err(Refusal::Digest));

        let arm = binary("0.2.0", 183);
        let lying = Manifest::describe(v("0.2.0"), "x86_64", "tether", &arm);
        assert_eq!(
            check_binary(&lying, &arm),
            Err(Refusal::ElfArch {
                elf: "aarch64".into(),
                manifest: "x86_64".into()
            })
        );
        let other_version = binary("0.1.9", 62);
        let m = Manifest::describe(v("0.2.0"), "x86_64", "tether", &other_version);
        assert!(matches!(
            check_binary(&m, &other_version),
            Err(Refusal::VersionMismatch { .. })
        ));
        let script = b"#!/bin/sh\nexit 0\n".to_vec();
        let m = Manifest::describe(v("0.2.0"), "x86_64", "tether", &script);
        assert!(matches!(check_binary(&m, &script), Err(Refusal::NotElf(_))));
    }

    #[test]
    fn offers_for_another_arch_or_an_older_or_equal_version_are_refused() {
        let m = Manifest::describe(v("0.2.0"), "aarch64", "tether", b"x");
        assert!(matches!(
            check_offer(&m, &v("0.1.0"), "x86_64"),
            Err(Refusal::OtherArch { .. })
        ));
        assert_eq!(check_offer(&m, &v("0.1.0"), "aarch64"), Ok(()));
        let e = check_offer(&m, &v("0.3.0"), "aarch64").unwrap_err();
        assert_eq!(
            e.to_string(),
            "0.3.0 runs here and 0.2.0 is older: no downgrades"
        );
        assert!(check_offer(&m, &v("0.2.0"), "aarch64").is_err());
        assert!(newer(&v("0.2.0"), &v("0.2.0-rc.1")));
        assert!(!newer(&v("0.2.0+b2"), &v("0.2.0+b1")));
    }

    #[test]
    fn manifests_name_their_mistakes() {
        let m = Manifest::describe(v("0.2.0"), "x86_64", "tether", b"x");
        let e = Manifest::parse(&m.to_toml().replace("format = 1", "format = 2")).unwrap_err();
        assert!(e.to_string().contains("format 2"), "{e}");
        let e =
            Manifest::parse(&m.to_toml().replace("\"tether\"", "\"../etc/passwd\"")).unwrap_err();
        assert!(e.to_string().contains("plain file name"), "{e}");
        let later = format!("{}notes = \"a later format's key\"\n", m.to_toml());
        assert_eq!(Manifest::parse(&later), Ok(m));
    }

    #[test]
    fn elf_headers() {
        assert_eq!(elf_arch(&elf(62)).unwrap(), "x86_64");
        assert_eq!(elf_arch(&elf(183)).unwrap(), "aarch64");
        assert!(elf_arch(b"MZ").is_err());
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_arch(&me).unwrap(), THIS_ARCH);
    }

    #[test]
    fn rollout_gives_each_site_its_version() {
        let r = Rollout::parse(
            "default = \"stable\"\n[channels]\nstable = \"0.2.0\"\nearly = \"0.2.1\"\n\
             [sites]\nberlin = { channel = \"early\" }\nparis = { version = \"0.2.2\" }\n",
        )
        .unwrap();
        assert_eq!(
            r.target("lyon").unwrap(),
            Target {
                version: v("0.2.0"),
                from: "channel stable".into()
            }
        );
        assert_eq!(r.target("berlin").unwrap().version, v("0.2.1"));
        assert_eq!(
            r.target("paris").unwrap(),
            Target {
                version: v("0.2.2"),
                from: "site paris".into()
            }
        );
        let e =
            Rollout::parse("default = \"stable\"\n[channels]\nstable = \"0.2.0\"\nsatble = 1\n")
                .unwrap_err();
        assert!(e.starts_with("rollout.toml line 4:"), "{e}");
        let e = Rollout::parse("default = \"beta\"\n")
            .unwrap()
            .target("x")
            .unwrap_err();
        assert!(e.contains("channel `beta`"), "{e}");
        let e = Rollout::parse("default = \"s\"\n[sites]\nx = { release = \"1\" }\n").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
    }
}
