//! `cargo xtask image` and `cargo xtask image-test`: the bootable disk image of the box,
//! built from Debian packages with mmdebstrap, and its boot test under qemu.
//!
//! One recipe for both architectures: arm64 for Raspberry Pi-class boards (Debian's
//! arm64 kernel and `raspi-firmware` on the boot partition) and amd64, which the boot
//! test runs under KVM for speed. The disk: an MBR with the boot partition (FAT32,
//! `TETHER_BOOT`: firmware, and the first-boot `tether.toml` and keys), the read-only
//! root (`TETHER_ROOT`) and `/data` (`TETHER_DATA`: config and state). No SSH server is
//! installed: login over the network is off. The files the recipe adds are in `image/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{root, run};

/// The Debian release and mirror the image is built from.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Sizes of the boot and data partitions.
const BOOT_MIB: u64 = 256;
const DATA_MIB: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Arm64,
    Amd64,
}

impl Arch {
    pub fn parse(s: &str) -> Result<Arch> {
        match s {
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            _ => bail!("--arch {s}: expected arm64 or amd64"),
        }
    }

    pub fn debian(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::Amd64 => "amd64",
        }
    }

    /// The architecture as release manifests name it (Rust's `std::env::consts::ARCH`).
    pub fn manifest_arch(self) -> &'static str {
        match self {
            Arch::Arm64 => "aarch64",
            Arch::Amd64 => "x86_64",
        }
    }

    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Arm64 => crate::deb::ARM64,
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
        }
    }

    fn packages(self) -> &'static str {
        match self {
            Arch::Arm64 => {
                "systemd,systemd-sysv,udev,dbus,linux-image-arm64,raspi-firmware,firmware-brcm80211"
            }
            Arch::Amd64 => "systemd,systemd-sysv,udev,dbus,linux-image-amd64",
        }
    }

    /// mmdebstrap hooks that make the boot files find the read-only root by label.
    fn boot_hooks(self) -> Vec<String> {
        match self {
            // raspi-firmware writes cmdline.txt from ROOTPART; "ro" is appended after its
            // "rw" (the kernel takes the last). Then its kernel hook writes the boot files.
            Arch::Arm64 => vec![
                "--customize-hook=echo 'ROOTPART=LABEL=TETHER_ROOT' >> \"$1/etc/default/raspi-firmware\" && \
                 echo ro > \"$1/etc/default/raspi-extra-cmdline\""
                    .into(),
                "--customize-hook=chroot \"$1\" env DEB_MAINT_PARAMS=configure \
                 /etc/kernel/postinst.d/z50-raspi-firmware"
                    .into(),
            ],
            // The boot test passes the kernel command line itself.
            Arch::Amd64 => Vec::new(),
        }
    }

    fn components(self) -> &'static str {
        match self {
            // The Pi's boot firmware and Wi-Fi firmware are in non-free-firmware.
            Arch::Arm64 => "main non-free-firmware",
            Arch::Amd64 => "main",
        }
    }
}

/// The tools the image needs (Debian packages), installed when missing.
const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("sfdisk", "fdisk"),
    ("mkfs.ext4", "e2fsprogs"),
];

pub fn ensure_tools(extra: &[(&str, &str)]) -> Result<()> {
    crate::install::ensure_programs(TOOLS.iter().chain(extra).copied())
}

/// Running the arm64 packages' scripts on this machine needs qemu-user through binfmt.
fn ensure_binfmt() -> Result<()> {
    // mmdebstrap checks a foreign architecture with arch-test before it starts.
    ensure_tools(&[
        ("qemu-aarch64-static", "qemu-user-static"),
        ("arch-test", "arch-test"),
    ])?;
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    if !dir.join("register").exists() {
        run(Command::new("mount").args([
            "-t",
            "binfmt_misc",
            "binfmt_misc",
            "/proc/sys/fs/binfmt_misc",
        ]))
        .context("binfmt_misc cannot be mounted: arm64 package scripts cannot run here")?;
    }
    if !dir.join("qemu-aarch64").exists() {
        run(Command::new("/usr/lib/systemd/systemd-binfmt")
            .arg("/usr/lib/binfmt.d/qemu-aarch64.conf"))?;
    }
    Ok(())
}

/// What a build produced.
pub struct Image {
    pub arch: Arch,
    pub disk: PathBuf,
    /// The root tree the disk was made from (the boot test takes its kernel from here).
    pub tree: PathBuf,
}

/// Where the first (boot) partition starts, in MiB (the layout is 1 MiB aligned).
const FIRST_PARTITION_MIB: u64 = 1;
/// The boot partition's byte offset on the disk.
pub const BOOT_OFFSET: u64 = mib(FIRST_PARTITION_MIB);

const fn mib(n: u64) -> u64 {
    n * 1024 * 1024
}

fn du_bytes(dir: &Path) -> Result<u64> {
    let out = Command::new("du").arg("-sb").arg(dir).output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du printed no size")
}

/// The uid and gid of `name` in the tree's /etc/passwd.
fn ids(tree: &Path, name: &str) -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string(tree.join("etc/passwd"))?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .with_context(|| format!("the image has no user {name}"))?;
    let f: Vec<&str> = line.split(':').collect();
    Ok((f[2].parse()?, f[3].parse()?))
}

/// Where base roots are cached: outside the checkout (they outlive `cargo clean` and are
/// shared by every checkout on the machine); `TETHER_IMAGE_CACHE` moves it.
fn cache_dir() -> PathBuf {
    std::env::var_os("TETHER_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/tether-image"))
}

/// The mmdebstrap options of the base root: Debian with the kernel and firmware, and
/// nothing of tether's. Everything that makes one base differ from another is here, so
/// the cache key is taken from these options.
fn base_options(arch: Arch) -> Vec<String> {
    let mut opts = vec![
        "--variant=minbase".to_owned(),
        format!("--arch={}", arch.debian()),
        format!("--components={}", arch.components()),
        format!("--include={}", arch.packages()),
        "--dpkgopt=path-exclude=/usr/share/man/*".into(),
        "--dpkgopt=path-exclude=/usr/share/locale/*".into(),
        "--dpkgopt=path-exclude=/usr/share/doc/*".into(),
        "--dpkgopt=path-include=/usr/share/doc/tether/*".into(),
    ];
    opts.extend(arch.boot_hooks());
    opts.push(SUITE.into());
    opts
}

/// The base root for `arch` as a tarball, built once and cached outside the checkout:
/// building it runs every package's scripts (under qemu-user for arm64, where making the
/// initramfs alone takes minutes), while laying tether over it takes seconds.
fn base_root(arch: Arch) -> Result<PathBuf> {
    let opts = base_options(arch);
    let key = {
        // FNV-1a over the options: stable across Rust releases, unlike DefaultHasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in opts.join("\n").bytes().chain(MIRROR.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    };
    let dir = cache_dir();
    let tar = dir.join(format!("base-{}-{SUITE}-{key}.tar", arch.debian()));
    if tar.exists() {
        eprintln!("xtask: base root from the cache: {}", tar.display());
        return Ok(tar);
    }
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let partial = tar.with_extension("tar.partial");
    let mut mm = Command::new("mmdebstrap");
    mm.arg("--format=tar").args(&opts).arg(&partial).arg(MIRROR);
    run(&mut mm)?;
    std::fs::rename(&partial, &tar)?;
    eprintln!(
        "xtask: base root for {} built in {:.0?} and cached as {}",
        arch.debian(),
        started.elapsed(),
        tar.display()
    );
    Ok(tar)
}

/// `cargo xtask image-base [--arch A]`: builds (or finds) the cached base root only.
pub fn image_base(arch: Arch) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the base root is built as root (mmdebstrap, file ownership in the tree)");
    }
    ensure_tools(&[])?;
    if arch == Arch::Arm64 && !cfg!(target_arch = "aarch64") {
        ensure_binfmt()?;
    }
    println!("{}", base_root(arch)?.display());
    Ok(())
}

/// Builds the image for `arch` under target/image/ and returns it: the cached base root
/// with the .deb installed and the overlay laid over it.
pub fn build(arch: Arch, release_key: Option<&Path>) -> Result<Image> {
    let started = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        bail!("the image is built as root (mmdebstrap, file ownership in the tree)");
    }
    crate::install::ensure()?;
    ensure_tools(&[])?;
    if arch == Arch::Arm64 && !cfg!(target_arch = "aarch64") {
        ensure_binfmt()?;
    }
    let base = base_root(arch)?;
    let built = crate::deb::build(Some(arch.rust_target()), release_key)?;
    crate::deb::check_package(&built.deb)?;
    let work = root().join("target/image").join(arch.debian());
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let tree = work.join("tree");
    let overlay = root().join("image/overlay");
    let deb_name = built
        .deb
        .file_name()
        .context("the .deb has no name")?
        .to_string_lossy()
        .into_owned();
    // Nothing to download or install: the base root comes in whole, then tether on top.
    let mut mm = Command::new("mmdebstrap");
    mm.args(["--variant=custom", "--arch", arch.debian()])
        .arg("--skip=update,setup,cleanup/apt,cleanup/mmdebstrap")
        .arg(format!("--setup-hook=tar-in {} /", base.display()))
        .arg(format!(
            "--customize-hook=copy-in {} /tmp",
            built.deb.display()
        ))
        .arg(format!(
            "--customize-hook=chroot \"$1\" dpkg -i /tmp/{deb_name} && rm \"$1/tmp/{deb_name}\""
        ))
        .arg(format!("--customize-hook=sync-in {} /", overlay.display()))
        .arg(
            "--customize-hook=chroot \"$1\" systemctl enable systemd-networkd.service \
             tether-firstboot.service tether.service",
        )
        // Mount points on the read-only root, and a machine id made at each boot.
        .arg(
            "--customize-hook=mkdir -p \"$1/data\" \"$1/boot/firmware\" \"$1/var/lib/tether\" \
             \"$1/etc/tether\" && : > \"$1/etc/machine-id\"",
        )
        .arg(SUITE)
        .arg(&tree)
        .arg(MIRROR);
    run(&mut mm)?;

    // The partitions' contents.
    let boot_dir = tree.join("boot/firmware");
    if arch == Arch::Amd64 {
        // No firmware to boot from; the kernel is there for boot loaders and the test.
        for f in ["vmlinuz", "initrd.img"] {
            let src = std::fs::canonicalize(tree.join(f))?;
            std::fs::copy(&src, boot_dir.join(f))?;
        }
    }
    std::fs::write(
        boot_dir.join("TETHER.TXT"),
        "Put tether.toml (and device_key, and any CA .pem) here before the first boot.\r\n\
         The box imports them to its data partition and deletes them from this one.\r\n",
    )?;
    let data = work.join("data");
    let (uid, gid) = ids(&tree, "tether")?;
    for (dir, owner, mode) in [("etc", (0, gid), 0o750), ("state", (uid, gid), 0o700)] {
        let d = data.join(dir);
        std::fs::create_dir_all(&d)?;
        nix::unistd::chown(
            &d,
            Some(nix::unistd::Uid::from_raw(owner.0)),
            Some(nix::unistd::Gid::from_raw(owner.1)),
        )?;
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }

    let boot_img = work.join("boot.img");
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "TETHER_BOOT", "-C"])
        .arg(&boot_img)
        .arg((BOOT_MIB * 1024).to_string()))?;
    let mut copy = Command::new("mcopy");
    copy.args(["-s", "-i"]).arg(&boot_img);
    for entry in std::fs::read_dir(&boot_dir)? {
        copy.arg(entry?.path());
    }
    copy.arg("::");
    run(&mut copy)?;
    // The boot partition's files live there, not in the read-only root.
    for entry in std::fs::read_dir(&boot_dir)? {
        let p = entry?.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    let root_mib = du_bytes(&tree)? * 5 / 4 / mib(1) + 128;
    let root_img = work.join("root.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-L", "TETHER_ROOT", "-d"])
        .arg(&tree)
        .arg(&root_img)
        .arg(format!("{root_mib}M")))?;
    let data_img = work.join("data.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-L", "TETHER_DATA", "-d"])
        .arg(&data)
        .arg(&data_img)
        .arg(format!("{DATA_MIB}M")))?;

    // The disk: MBR (the Pi's firmware reads the first FAT partition), 1 MiB aligned.
    let disk = root()
        .join("target/image")
        .join(format!("tether-{}.img", arch.debian()));
    let parts = [
        (&boot_img, BOOT_MIB),
        (&root_img, root_mib),
        (&data_img, DATA_MIB),
    ];
    let total = FIRST_PARTITION_MIB + parts.iter().map(|(_, m)| m).sum::<u64>();
    let file = std::fs::File::create(&disk)?;
    file.set_len(mib(total))?;
    drop(file);
    let mut layout = String::from("label: dos\n");
    let mut at = FIRST_PARTITION_MIB;
    for (i, (_, size)) in parts.iter().enumerate() {
        let kind = if i == 0 { "c, bootable" } else { "83" };
        layout.push_str(&format!(
            "start={}, size={}, type={kind}\n",
            mib(at) / 512,
            mib(*size) / 512
        ));
        at += size;
    }
    let mut sfdisk = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        sfdisk.stdin.as_mut().context("sfdisk stdin")?,
        layout.as_bytes(),
    )?;
    if !sfdisk.wait()?.success() {
        bail!("sfdisk could not write the partition table:\n{layout}");
    }
    let mut at = FIRST_PARTITION_MIB;
    for (img, size) in parts {
        run(Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", disk.display()))
            .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
            .arg(format!("seek={at}")))?;
        at += size;
        std::fs::remove_file(img)?;
    }
    println!(
        "image {} ({} MiB, built in {:.0?})",
        disk.display(),
        total,
        started.elapsed()
    );
    Ok(Image { arch, disk, tree })
}

/// `cargo xtask image [--arch A]`.
pub fn image(arch: Arch, release_key: Option<&Path>) -> Result<()> {
    build(arch, release_key).map(|_| ())
}
