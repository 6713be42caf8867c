//! `cargo xtask release`: builds the agent for the boxes' architectures, signs each build
//! with the release key and lays the releases out as the hub serves them, ready to be
//! copied to the hub's release directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tether_harness::releases::{self, ReleaseKey};

use crate::image::Arch;
use crate::{deb, root, run};

/// The private release key: `--key`, else `TETHER_RELEASE_KEY`. It must live outside the
/// checkout (a key in a repository ends up everywhere the repository goes).
fn release_key(key: Option<&Path>) -> Result<ReleaseKey> {
    let path = key
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("TETHER_RELEASE_KEY").map(PathBuf::from))
        .context("no release key: give --key PATH or TETHER_RELEASE_KEY (the private half, e.g. ~/.tether/release-key)")?;
    let path = std::fs::canonicalize(&path)
        .with_context(|| format!("cannot find the release key {}", path.display()))?;
    let checkout = std::fs::canonicalize(root())?;
    if path.starts_with(&checkout) {
        bail!(
            "{} is inside the checkout: keep the release key outside it (and offline)",
            path.display()
        );
    }
    let key = ReleaseKey::at(&path);
    let public = std::fs::read_to_string(&key.public).with_context(|| {
        format!(
            "cannot read {} (the public half beside the key)",
            key.public.display()
        )
    })?;
    tether::release::parse_release_keys(&public)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key.public.display()))?;
    Ok(key)
}

/// `cargo xtask release --key KEY [--arch A]... [--out DIR]`.
pub fn release(key: Option<&Path>, arches: &[Arch], out: Option<&Path>) -> Result<()> {
    let key = release_key(key)?;
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root().join("target/releases"));
    std::fs::create_dir_all(&out)?;
    let public = std::fs::read_to_string(&key.public)?;
    let trusted = tether::release::parse_release_keys(&public).map_err(anyhow::Error::msg)?;
    let mut made = Vec::new();
    for &arch in arches {
        let target = arch.rust_target();
        deb::ensure_target(target)?;
        let mut build = deb::release_build(target);
        build.args(["--features", "gpio"]);
        run(&mut build)?;
        let binary = root().join("target").join(target).join("release/tether");
        let dir = releases::publish(&out, &binary, arch.manifest_arch(), &key)?;
        // Check the release the way a box will before anyone copies it anywhere.
        let text = std::fs::read(dir.join(tether::release::MANIFEST_FILE))?;
        let sig = std::fs::read(dir.join(tether::release::SIGNATURE_FILE))?;
        let manifest = tether::release::verify_manifest(&text, &sig, &trusted)
            .map_err(|e| anyhow::anyhow!("the new release does not verify: {e}"))?;
        tether::updates::install::check_file(&manifest, &dir.join(&manifest.file))
            .map_err(|e| anyhow::anyhow!("the new release does not check: {e}"))?;
        println!(
            "release {} for {}: {} ({} bytes, sha256 {})",
            manifest.version,
            manifest.arch,
            dir.display(),
            manifest.size,
            tether::release::hex(&manifest.sha256)
        );
        made.push(manifest.version.to_string());
    }
    made.dedup();
    let version = made.first().map(String::as_str).unwrap_or("VERSION");
    println!(
        "\nPublish: copy {}/ into the hub's release directory, e.g.\n  \
         rsync -rt --chmod=D755,F644 {}/ root@HUB:/srv/tether/releases/\n\
         Roll out: name the version in /srv/tether/releases/rollout.toml, one site first\n  \
         [sites]\n  office-berlin = {{ version = \"{version}\" }}\n\
         then, once it is in sync there, its channel:\n  [channels]\n  stable = \"{version}\"",
        out.display(),
        out.display(),
    );
    Ok(())
}
