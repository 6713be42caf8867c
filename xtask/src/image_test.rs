//! `cargo xtask image-test [--arch A] [--updates]`: boots the image of the box under qemu
//! against a lab hub (sshd behind the link simulator, both databases, the broker) and
//! waits for the box's `in_sync` at the broker. amd64 runs under KVM when it works here;
//! arm64 under `qemu-system-aarch64 -M virt` in software emulation, with the image's own
//! root. `--updates` then takes the amd64 box through signed updates: N to N+1, a release
//! signed by a stranger, a release that exits at start, a download cut in the middle,
//! and the VM killed during an update.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tether_harness::fixture::{Fixture, FixtureOptions};
use tether_harness::linksim::{LinkOptions, LinkSim};
use tether_harness::process::{Proc, RunAs, free_port};
use tether_harness::releases::{self, ReleaseKey, bump, everyone};
use tether_harness::secrets::MqttTap;

use crate::image::{Arch, BOOT_OFFSET, Image, build, ensure_tools};
use crate::{root, run};

/// What to test.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub arch: Arch,
    pub reuse: bool,
    pub updates: bool,
}

/// The throwaway release key image tests build into their image (kept under target/ so
/// `--reuse` finds the matching key).
fn test_key() -> Result<ReleaseKey> {
    let dir = root().join("target/image");
    let key = ReleaseKey::at(&dir.join("test-release-key"));
    if key.private.exists() && key.public.exists() {
        return Ok(key);
    }
    ReleaseKey::generate(&dir, "test-release-key")
}

pub fn image_test(opts: Options) -> Result<()> {
    let started = Instant::now();
    if opts.updates && opts.arch != Arch::Amd64 {
        bail!(
            "--updates runs on the amd64 image (KVM); the arm64 image is tested booting to in_sync"
        );
    }
    let key = test_key()?;
    let image = if opts.reuse {
        let arch = opts.arch.debian();
        let image = Image {
            arch: opts.arch,
            disk: root().join(format!("target/image/tether-{arch}.img")),
            tree: root().join(format!("target/image/{arch}/tree")),
        };
        if !image.disk.exists() || !image.tree.join("vmlinuz").exists() {
            bail!(
                "no {arch} image to reuse: run `cargo xtask image-test --arch {arch}` once without --reuse"
            );
        }
        let shipped = std::fs::read_to_string(image.tree.join("usr/share/tether/release-key.pub"))
            .unwrap_or_default();
        if opts.updates && shipped != std::fs::read_to_string(&key.public)? {
            bail!(
                "the image to reuse does not trust the test release key: build it again without --reuse"
            );
        }
        image
    } else {
        build(opts.arch, Some(&key.public))?
    };
    let built_in = started.elapsed();
    match opts.arch {
        Arch::Amd64 => ensure_tools(&[("qemu-system-x86_64", "qemu-system-x86")])?,
        Arch::Arm64 => ensure_tools(&[("qemu-system-aarch64", "qemu-system-arm")])?,
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(test(&image, &key, opts))?;
    println!(
        "image-test: image built in {built_in:.0?}; whole test {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// The lab side: fixture, link, broker tap, and the box's config on its boot partition.
struct Hub {
    fixture: Fixture,
    link: LinkSim,
    tap: MqttTap,
    site: String,
    forward_port: u16,
}

impl Hub {
    /// The latest state document the box published.
    fn state(&self) -> Option<serde_json::Value> {
        let topic = format!("tether/{}/state ", self.site);
        let text = std::fs::read_to_string(&self.tap.file).ok()?;
        let line = text.lines().rev().find(|l| l.starts_with(&topic))?;
        serde_json::from_str(&line[topic.len()..]).ok()
    }

    async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(doc) = self.state()
                && pred(&doc)
            {
                return Ok(doc);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; last state: {:#}",
                    self.state().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn releases(&self) -> PathBuf {
        self.fixture.sshd().releases.clone()
    }
}

/// A running VM (killed hard when dropped: the power cord).
struct Vm {
    proc: Proc,
    console: PathBuf,
}

impl Vm {
    fn console_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.console).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn pull_the_plug(mut self) {
        self.proc.kill_hard();
    }
}

fn boot(
    image: &Image,
    disk: &Path,
    work: &Path,
    forward_port: u16,
    kvm: bool,
    n: u32,
) -> Result<Vm> {
    let console = work.join(format!("console-{n}.log"));
    let tree = &image.tree;
    let mut qemu = match image.arch {
        Arch::Amd64 => {
            let mut q = Command::new("qemu-system-x86_64");
            q.args(["-m", "768", "-smp", "2"]).args(if kvm {
                ["-accel", "kvm", "-cpu", "host"]
            } else {
                ["-accel", "tcg", "-cpu", "max"]
            });
            q.args([
                "-append",
                "root=LABEL=TETHER_ROOT ro console=ttyS0 panic=-1",
            ]);
            q
        }
        Arch::Arm64 => {
            let mut q = Command::new("qemu-system-aarch64");
            q.args([
                "-M",
                "virt",
                "-cpu",
                "cortex-a72",
                "-smp",
                "2",
                "-m",
                "1024",
            ]);
            q.args([
                "-append",
                "root=LABEL=TETHER_ROOT ro console=ttyAMA0 panic=-1",
            ]);
            q
        }
    };
    qemu.args(["-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(tree.join("vmlinuz"))
        .arg("-initrd")
        .arg(tree.join("initrd.img"))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .arg("-nic")
        .arg(format!(
            "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{forward_port}-:3307"
        ))
        .arg("-serial")
        .arg(format!("file:{}", console.display()));
    let me = RunAs {
        name: String::new(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        switch: false,
    };
    let proc = Proc::spawn("qemu", &me, &mut qemu, &work.join(format!("qemu-{n}.log")))?;
    Ok(Vm { proc, console })
}

async fn test(image: &Image, key: &ReleaseKey, opts: Options) -> Result<()> {
    let work = root().join("target/image/test");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let fixture =
        tokio::task::spawn_blocking(|| Fixture::start(FixtureOptions::default())).await??;
    // The box reaches the hub's sshd through the link simulator (so a test can cut it).
    let link = LinkSim::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        format!("127.0.0.1:{}", fixture.sshd().port).parse()?,
        LinkOptions::default(),
    )
    .await?;
    let tap = MqttTap::start(
        &fixture.broker().host,
        fixture.broker().port,
        &work.join("mqtt.log"),
    )?;
    let hub = Hub {
        forward_port: free_port()?,
        fixture,
        link,
        tap,
        site: "imagetest".into(),
    };
    let disk = prepare_disk(image, &hub, &work)?;
    let kvm = image.arch == Arch::Amd64 && kvm_works(&image.tree.join("vmlinuz"), &work)?;
    let emulation = if kvm { "KVM" } else { "software emulation" };
    let in_sync_within = Duration::from_secs(if kvm { 180 } else { 1800 });

    let booted = Instant::now();
    let vm = boot(image, &disk, &work, hub.forward_port, kvm, 1)?;
    if let Err(e) = hub
        .wait("in_sync from the booted image", in_sync_within, |d| {
            d["verdict"] == "in_sync"
        })
        .await
    {
        bail!("{e:#}\nlast console lines:\n{}", vm.console_tail());
    }
    println!(
        "image-test: the {} image booted to in_sync in {:.1?} ({emulation})",
        image.arch.debian(),
        booted.elapsed()
    );
    // The secrets left the boot partition after import.
    let fat = format!("{}@@{}", disk.display(), BOOT_OFFSET);
    let left = Command::new("mdir")
        .args(["-b", "-i", &fat, "::"])
        .output()?;
    let listing = String::from_utf8_lossy(&left.stdout).to_lowercase();
    if listing.contains("tether.toml") || listing.contains("device_key") {
        bail!("the boot partition still holds secrets after the first boot:\n{listing}");
    }
    println!("image-test: the boot partition no longer holds tether.toml or the device key");
    if opts.updates {
        let result = updates(image, &hub, key, &disk, &work, kvm, vm).await;
        if let Err(e) = &result {
            let consoles: Vec<String> = (1..=4)
                .filter_map(|n| std::fs::read_to_string(work.join(format!("console-{n}.log"))).ok())
                .collect();
            let last = consoles.last().cloned().unwrap_or_default();
            let tail: Vec<&str> = last.lines().rev().take(60).collect();
            eprintln!(
                "image-test: {e:#}\nlast console lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        result?;
    } else {
        vm.pull_the_plug();
    }
    Ok(())
}

/// A copy of the image with the box's config and device key on its boot partition.
fn prepare_disk(image: &Image, hub: &Hub, work: &Path) -> Result<PathBuf> {
    // The guest reaches this machine's loopback as 10.0.2.2 (qemu user networking); the
    // office DB replicates from the box's local forward through a host port forward.
    let host = "10.0.2.2";
    let f = &hub.fixture;
    let sshd = f.sshd();
    let mut c = tether::config::Config::example();
    c.site.id = hub.site.clone();
    c.site.name = Some("Image test".into());
    c.hub.host = host.into();
    c.hub.port = hub.link.local_addr().port();
    c.hub.user = sshd.user.clone();
    c.hub.key_path = None;
    c.hub.host_key = Some(sshd.host_key.clone());
    use tether::config::Addr;
    c.forwards.remote_listen = Addr::new("127.0.0.1", f.remote_listen_port);
    c.forwards.remote_target = Addr::new(host, f.office_db().port);
    c.forwards.local_listen = Addr::new("0.0.0.0", 3307);
    c.forwards.local_target = Addr::new("127.0.0.1", f.hub_db().port);
    c.office_db.host = host.into();
    c.office_db.port = f.office_db().port;
    c.office_db.password = tether::secret::Secret::new(f.office_db().agent_password.clone());
    c.hub_db.password = tether::secret::Secret::new(f.hub_db().agent_password.clone());
    c.mqtt.enabled = true;
    c.mqtt.host = host.into();
    c.mqtt.port = f.broker().port;
    c.board.backend = tether::config::BoardBackend::None;
    c.updates.check_every = Duration::from_secs(2);
    c.updates.trial = Duration::from_secs(60);
    let config = work.join("tether.toml");
    std::fs::write(&config, toml::to_string(&c)?)?;
    tether::config::Config::load(&config)
        .map_err(|e| anyhow::anyhow!("the image test wrote a bad config: {e}"))?;

    let disk = work.join("disk.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&image.disk)
        .arg(&disk))?;
    let fat = format!("{}@@{}", disk.display(), BOOT_OFFSET);
    run(Command::new("mcopy")
        .args(["-o", "-i", &fat])
        .arg(&config)
        .arg(&sshd.device_key)
        .arg("::"))?;
    let key_name = sshd
        .device_key
        .file_name()
        .context("device key name")?
        .to_string_lossy()
        .into_owned();
    if key_name != "device_key" {
        run(Command::new("mren")
            .args(["-i", &fat])
            .arg(format!("::{key_name}"))
            .arg("::device_key"))?;
    }
    // Both directions of replication, through the tunnel once it is up.
    let (o, h) = (f.office_db().sql_clone(), f.hub_db().sql_clone());
    let (opw, hpw) = (
        f.office_db().repl_password.clone(),
        f.hub_db().repl_password.clone(),
    );
    o(&tether_harness::lab::change_master(
        f.office_db().family,
        hub.forward_port,
        &hpw,
    ))?;
    h(&tether_harness::lab::change_master(
        f.hub_db().family,
        f.remote_listen_port,
        &opw,
    ))?;
    Ok(disk)
}

/// The update scenarios on the booted amd64 box.
async fn updates(
    image: &Image,
    hub: &Hub,
    key: &ReleaseKey,
    disk: &Path,
    work: &Path,
    kvm: bool,
    vm: Vm,
) -> Result<()> {
    let arch = tether::release::THIS_ARCH;
    // The image's own binary is N; later versions are copies of the same release build.
    let built = root().join("target/x86_64-unknown-linux-gnu/release/tether");
    let n = tether::version::read(&std::fs::read(&built)?).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bins = work.join("bins");
    std::fs::create_dir_all(&bins)?;
    let publish = |version: &str, key: &ReleaseKey| -> Result<PathBuf> {
        let bin =
            releases::versioned_copy(&built, version, &bins.join(format!("tether-{version}")))?;
        let dir = releases::publish(&hub.releases(), &bin, arch, key)?;
        releases::write_rollout(&hub.releases(), &everyone(version))?;
        Ok(dir)
    };
    let running = |v: String| {
        move |d: &serde_json::Value| {
            d["agent"]["version"] == v.as_str() && d["verdict"] == "in_sync"
        }
    };

    // N -> N+1, seen on MQTT.
    let n1 = bump(&n, 1);
    let t = Instant::now();
    let wire = || hub.link.stats().bytes_down;
    let before = wire();
    publish(&n1, key)?;
    hub.wait(
        &format!("{n1} in sync"),
        Duration::from_secs(240),
        running(n1.clone()),
    )
    .await?;
    let clean = wire() - before;
    hub.wait(&format!("{n1} proven"), Duration::from_secs(120), |d| {
        d["update"]["last_result"] == "installed"
    })
    .await?;
    println!(
        "image-test: {n} -> {n1} installed and proven in {:.1?}",
        t.elapsed()
    );

    // A release signed by a key the box does not trust.
    let n2 = bump(&n, 2);
    let stranger = ReleaseKey::generate(work, "stranger")?;
    publish(&n2, &stranger)?;
    let doc = hub
        .wait(
            "the stranger's release refused",
            Duration::from_secs(120),
            |d| {
                d["update"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("a key this box does not trust"))
            },
        )
        .await?;
    if doc["agent"]["version"] != n1.as_str() {
        bail!("the refusal changed the running version: {doc:#}");
    }
    println!("image-test: {n2} refused: {}", doc["update"]["error"]);

    // N+1 -> an N+3 that exits at start: back to N+1.
    let n3 = bump(&n, 3);
    let broken = releases::broken_binary(&n3, &bins.join("broken"))?;
    releases::publish(&hub.releases(), &broken, arch, key)?;
    releases::write_rollout(&hub.releases(), &everyone(&n3))?;
    let t = Instant::now();
    hub.wait(
        &format!("{n3} rolled back"),
        Duration::from_secs(240),
        |d| {
            d["update"]["last_result"] == "rolled_back"
                && d["update"]["last_version"] == n3.as_str()
                && d["agent"]["version"] == n1.as_str()
        },
    )
    .await?;
    println!(
        "image-test: {n3} (exits at start) rolled back; {n1} reporting again {:.1?} after it was published",
        t.elapsed()
    );

    // A download cut in the middle resumes: N+4 over a slowed link.
    let n4 = bump(&n, 4);
    hub.link.set_rate(Some(400_000));
    let before = wire();
    publish(&n4, key)?;
    hub.wait(
        &format!("{n4} downloading"),
        Duration::from_secs(120),
        |d| d["update"]["state"] == "downloading",
    )
    .await?;
    // About a third of the bytes a clean download took, then cut.
    let third =
        tether_harness::wait_for("a third of the download", Duration::from_secs(120), || {
            wire() - before > clean / 3
        });
    third?;
    let at_cut = wire() - before;
    hub.link.cut();
    hub.wait("the interruption reported", Duration::from_secs(60), |d| {
        d["update"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("resumes from there"))
    })
    .await
    .ok();
    hub.link.set_rate(None);
    hub.link.heal();
    hub.wait(
        &format!("{n4} in sync"),
        Duration::from_secs(300),
        running(n4.clone()),
    )
    .await?;
    let cut = wire() - before;
    println!(
        "image-test: {n4} cut after {at_cut} bytes on the link and resumed: {cut} bytes in all, {clean} for the clean {n1} ({:+.1}%)",
        (cut as f64 - clean as f64) * 100.0 / clean as f64
    );
    if cut > clean + clean / 5 {
        bail!(
            "the cut download took {cut} bytes on the link against {clean} clean: it did not resume"
        );
    }
    hub.wait(&format!("{n4} proven"), Duration::from_secs(120), |d| {
        d["update"]["last_result"] == "installed" && d["update"]["last_version"] == n4.as_str()
    })
    .await?;

    // The VM killed during an update (the new version on trial), then booted again.
    let n5 = bump(&n, 5);
    publish(&n5, key)?;
    hub.wait(&format!("{n5} on trial"), Duration::from_secs(240), |d| {
        d["agent"]["version"] == n5.as_str() && d["update"]["state"] == "on_trial"
    })
    .await?;
    vm.pull_the_plug();
    println!("image-test: the VM killed with {n5} on trial");
    let t = Instant::now();
    let vm = boot(image, disk, work, hub.forward_port, kvm, 2)?;
    let doc = hub
        .wait("in sync after the kill", Duration::from_secs(240), |d| {
            d["verdict"] == "in_sync"
                && d["agent"]["uptime_s"]
                    .as_u64()
                    .is_some_and(|u| u < t.elapsed().as_secs())
        })
        .await?;
    println!(
        "image-test: booted again to in_sync on {} in {:.1?}",
        doc["agent"]["version"],
        t.elapsed()
    );
    hub.wait(
        &format!("{n5} proven after the reboot"),
        Duration::from_secs(180),
        |d| d["agent"]["version"] == n5.as_str() && d["update"]["last_result"] == "installed",
    )
    .await?;
    println!("image-test: {n5} proved itself after the reboot");

    // N+5 -> an N+6 that cannot reach the hub: the link is cut as soon as N+6 starts
    // (the box's MQTT goes straight to the broker, not over the link); it fails its trial
    // and the box goes back to N+5, in sync again after the heal.
    let n6 = bump(&n, 6);
    publish(&n6, key)?;
    hub.wait(&format!("{n6} on trial"), Duration::from_secs(240), |d| {
        d["agent"]["version"] == n6.as_str() && d["update"]["state"] == "on_trial"
    })
    .await?;
    hub.link.cut();
    let t = Instant::now();
    let doc = hub
        .wait(
            &format!("{n6} rolled back"),
            Duration::from_secs(240),
            |d| {
                d["agent"]["version"] == n5.as_str()
                    && d["update"]["last_result"] == "rolled_back"
                    && d["update"]["last_version"] == n6.as_str()
            },
        )
        .await?;
    println!(
        "image-test: {n6} (no hub) rolled back {:.1?} after the cut (trial bound 60 s): {}",
        t.elapsed(),
        doc["update"]["error"]
    );
    hub.link.heal();
    hub.wait(
        &format!("{n5} in sync after the heal"),
        Duration::from_secs(240),
        running(n5.clone()),
    )
    .await?;
    println!("image-test: {n5} in sync again after the heal");
    vm.pull_the_plug();
    Ok(())
}

/// Whether KVM really runs a guest here: /dev/kvm can exist where nested virtualisation
/// hangs. The kernel alone must print its banner within a few seconds.
fn kvm_works(kernel: &Path, work: &Path) -> Result<bool> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(false);
    }
    let log = work.join("kvm-probe.log");
    let mut probe = Command::new("qemu-system-x86_64")
        .args([
            "-m",
            "256",
            "-display",
            "none",
            "-no-reboot",
            "-accel",
            "kvm",
        ])
        .args(["-cpu", "host", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let works = tether_harness::wait_for(
        "the kernel banner under KVM",
        Duration::from_secs(8),
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Linux version")),
    )
    .is_ok();
    let _ = probe.kill();
    let _ = probe.wait();
    if !works {
        eprintln!("xtask: /dev/kvm is there but runs no guest; using software emulation");
    }
    Ok(works)
}
