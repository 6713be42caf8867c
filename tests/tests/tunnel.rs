//! The tunnel against the real hub sshd, through the link simulator: both forwards carry
//! MySQL traffic, faults are noticed in seconds and healed, refusals back off, a stale
//! remote listener recovers, and shutdown is prompt.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether::events::{LinkFault, ProbePath, TunnelEvent};
use tether::tunnel::{Endpoint, HostKeyPin, TunnelCommand, TunnelSettings};
use tether_harness::linksim::{LinkOptions, LinkSim};
use tether_harness::sshd::{Sshd, SshdOptions};
use tether_harness::{Fixture, FixtureOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type Log = Arc<Mutex<Vec<(Instant, TunnelEvent)>>>;

struct Running {
    log: Log,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    local: SocketAddr,
    _commands: mpsc::Sender<TunnelCommand>,
}

impl Running {
    /// Waits until an event after `since` matches; returns when it happened.
    async fn wait(
        &self,
        what: &str,
        since: Instant,
        timeout: Duration,
        pred: impl Fn(&TunnelEvent) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let events: Vec<(Instant, TunnelEvent)> = self.log.lock().unwrap().clone();
            if let Some((t, _)) = events.iter().find(|(t, e)| *t >= since && pred(e)) {
                return *t;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; events: {:#?}",
                events.iter().map(|(_, e)| e).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How long after `fault_at` the tunnel reported the link down.
    async fn down_after(&self, what: &str, fault_at: Instant, timeout: Duration) -> Duration {
        let seen = self
            .wait(what, fault_at, timeout, |e| {
                matches!(e, TunnelEvent::Down { .. })
            })
            .await;
        seen - fault_at
    }

    fn matching(&self, since: Instant, pred: impl Fn(&TunnelEvent) -> bool) -> Vec<TunnelEvent> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, e)| *t >= since && pred(e))
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn count(&self, since: Instant, pred: impl Fn(&TunnelEvent) -> bool) -> usize {
        self.matching(since, pred).len()
    }
}

fn settings(
    f: &Fixture,
    hub: SocketAddr,
    pin: Option<HostKeyPin>,
    key_path: &std::path::Path,
) -> TunnelSettings {
    let key = russh::keys::load_secret_key(key_path, None).unwrap();
    let sshd = f.sshd();
    let mut s = TunnelSettings::new(
        Endpoint::new(hub.ip().to_string(), hub.port()),
        sshd.user.clone(),
        Arc::new(key),
        pin,
        Endpoint::new("127.0.0.1", f.remote_listen_port),
        Endpoint::new("127.0.0.1", f.office_db().port),
        Endpoint::new("127.0.0.1", f.hub_db().port),
    );
    s.probe_interval = Duration::from_secs(1);
    s.probe_timeout = Duration::from_secs(3);
    s
}

async fn start(settings: TunnelSettings) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::channel(256);
    let (ctx, crx) = mpsc::channel(4);
    let shutdown = CancellationToken::new();
    let log: Log = Arc::default();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            sink.lock().unwrap().push((Instant::now(), ev));
        }
    });
    let task = tokio::spawn(tether::tunnel::run(
        Arc::new(settings),
        listener,
        tx,
        crx,
        shutdown.clone(),
    ));
    Running {
        log,
        shutdown,
        task,
        local,
        _commands: ctx,
    }
}

/// A logged-in session: up, or refused the remote forward (after a silent drop, the
/// hub's old session may still hold the port for a while).
fn session_back(e: &TunnelEvent) -> bool {
    is_up(e)
        || matches!(
            e,
            TunnelEvent::Down {
                fault: LinkFault::RemoteForwardRefused { .. },
                ..
            }
        )
}

fn pin(f: &Fixture) -> Option<HostKeyPin> {
    Some(HostKeyPin::parse(&f.sshd().host_key).unwrap())
}

fn fixture() -> Fixture {
    Fixture::start(FixtureOptions {
        broker: false,
        ..FixtureOptions::default()
    })
    .unwrap()
}

async fn linksim(f: &Fixture, opts: LinkOptions) -> LinkSim {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream: SocketAddr = format!("127.0.0.1:{}", f.sshd().port).parse().unwrap();
    LinkSim::start(l, upstream, opts).await.unwrap()
}

/// A link simulator in front of the fixture's sshd and a tunnel through it, up; returns
/// the moment the wait for it began.
async fn up_through_link(f: &Fixture, opts: LinkOptions) -> (LinkSim, Running, Instant) {
    let sim = linksim(f, opts).await;
    let t0 = Instant::now();
    let r = start(settings(f, sim.local_addr(), pin(f), &f.sshd().device_key)).await;
    r.wait("the tunnel up", t0, Duration::from_secs(15), is_up)
        .await;
    (sim, r, t0)
}

fn is_up(e: &TunnelEvent) -> bool {
    matches!(e, TunnelEvent::Up)
}

fn both_probes_ok(r: &Running, since: Instant) -> bool {
    let ok = |p| {
        r.count(
            since,
            |e| matches!(e, TunnelEvent::ProbeOk { path, .. } if *path == p),
        ) > 0
    };
    ok(ProbePath::HubDbThroughLocalForward) && ok(ProbePath::OfficeDbThroughRemoteForward)
}

/// `SELECT @@server_id` through a TCP port with the `mariadb` client.
fn server_id_at(port: u16, db: &tether_harness::db::DbServer) -> Option<String> {
    let out = std::process::Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h127.0.0.1",
            "-uroot",
            "--batch",
            "--skip-column-names",
            "--connect-timeout=5",
        ])
        .arg(format!("-P{port}"))
        .env("MYSQL_PWD", &db.root_password)
        .args(["-e", "SELECT @@server_id"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_forwards_carry_mysql_and_a_cut_is_seen_within_2_s_and_healed() {
    let f = fixture();
    let (sim, r, t0) = up_through_link(&f, LinkOptions::default()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !both_probes_ok(&r, t0) {
        assert!(Instant::now() < deadline, "probes never both succeeded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Local forward: the office side reaches the hub DB (by its server_id).
    let local = r.local.port();
    let hub_id = tokio::task::spawn_blocking({
        let pw = f.hub_db().root_password.clone();
        move || {
            let out = std::process::Command::new("mariadb")
                .args([
                    "--no-defaults",
                    "-h127.0.0.1",
                    "-uroot",
                    "--batch",
                    "--skip-column-names",
                ])
                .arg(format!("-P{local}"))
                .env("MYSQL_PWD", pw)
                .args(["-e", "SELECT @@server_id"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
    })
    .await
    .unwrap();
    assert_eq!(
        hub_id,
        f.hub_db().server_id.to_string(),
        "the local forward must reach the hub DB"
    );
    // Remote forward: the hub side reaches the office DB (by its server_id).
    assert_eq!(
        server_id_at(f.remote_listen_port, f.office_db()),
        Some(f.office_db().server_id.to_string())
    );

    let cut_at = Instant::now();
    sim.cut();
    let detect = r
        .down_after("the cut noticed", cut_at, Duration::from_secs(5))
        .await;
    eprintln!("cut noticed after {detect:.2?}");
    assert!(
        detect <= Duration::from_secs(2),
        "cut noticed after {detect:?}"
    );

    let heal_at = Instant::now();
    sim.heal();
    let up = r
        .wait(
            "up again after heal",
            heal_at,
            Duration::from_secs(10),
            is_up,
        )
        .await;
    eprintln!("up again {:.2?} after heal", up - heal_at);
    assert!(up - heal_at <= Duration::from_secs(6));
    assert_eq!(
        server_id_at(f.remote_listen_port, f.office_db()),
        Some(f.office_db().server_id.to_string())
    );

    // Shutdown is prompt and frees the local port.
    let stop = Instant::now();
    r.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), r.task)
        .await
        .expect("stopped within 2 s")
        .unwrap();
    eprintln!("stopped in {:.2?}", stop.elapsed());
    assert!(
        tokio::net::TcpStream::connect(r.local).await.is_err(),
        "local forward still listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_is_seen_within_10_s() {
    let f = fixture();
    let (sim, r, _) = up_through_link(&f, LinkOptions::default()).await;
    // Let keepalives settle into their idle rhythm.
    r.wait("a probe", Instant::now(), Duration::from_secs(5), |e| {
        matches!(e, TunnelEvent::ProbeOk { .. })
    })
    .await;
    let at = Instant::now();
    sim.blackhole();
    let detect = r
        .down_after("the blackhole noticed", at, Duration::from_secs(15))
        .await;
    eprintln!("blackhole noticed after {detect:.2?}");
    assert!(
        detect <= Duration::from_secs(10),
        "blackhole noticed after {detect:?}"
    );
    sim.heal();
    // The session comes back at once; the remote forward may wait for sshd to drop the
    // silent old session (the stale-listener test covers that).
    r.wait(
        "a session again after heal",
        Instant::now(),
        Duration::from_secs(25),
        session_back,
    )
    .await;
}

/// After a blackout long enough that a reconnect attempt is stuck on the dead line (its
/// bytes lost, waiting for a banner that never comes), the session is back within a
/// couple of seconds of the heal, not after that attempt's whole handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_long_blackhole_the_session_is_back_within_seconds_of_the_heal() {
    let f = fixture();
    let (sim, r, _) = up_through_link(&f, LinkOptions::default()).await;
    let at = Instant::now();
    sim.blackhole();
    r.down_after("the blackhole noticed", at, Duration::from_secs(15))
        .await;
    // A new attempt starts on the dead line; the outage goes on past the moment it began.
    let since = Instant::now();
    r.wait(
        "an attempt during the outage",
        since,
        Duration::from_secs(10),
        |e| matches!(e, TunnelEvent::Connecting { .. }),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    sim.heal();
    let healed = Instant::now();
    let seen = r
        .wait(
            "a session again after heal",
            healed,
            Duration::from_secs(20),
            session_back,
        )
        .await;
    let back = seen - healed;
    eprintln!("session back {back:.2?} after the heal");
    assert!(
        back <= Duration::from_secs(5),
        "session back {back:?} after the heal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_is_refused_and_backs_off_long() {
    let f = fixture();
    let other =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGwu+LuPUdlsD4ec43UV9qMscmhsNnIqla22/dnefCRT other";
    let t0 = Instant::now();
    let r = start(settings(
        &f,
        format!("127.0.0.1:{}", f.sshd().port).parse().unwrap(),
        Some(HostKeyPin::parse(other).unwrap()),
        &f.sshd().device_key,
    ))
    .await;
    r.wait("the refusal", t0, Duration::from_secs(10), |e| {
        matches!(
            e,
            TunnelEvent::Down {
                fault: LinkFault::HostKeyChanged { .. },
                ..
            }
        )
    })
    .await;
    let log = r.log.lock().unwrap().clone();
    let (seen, retry_in) = log
        .iter()
        .find_map(|(_, e)| match e {
            TunnelEvent::Down {
                fault: LinkFault::HostKeyChanged { seen, .. },
                retry_in,
            } => Some((seen.clone(), *retry_in)),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        seen,
        f.sshd().host_fingerprint,
        "the reason names the key the hub presented"
    );
    assert!(
        retry_in >= Duration::from_secs(40),
        "retry in {retry_in:?}: too eager"
    );
    assert!(!log.iter().any(|(_, e)| is_up(e)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_device_key_is_reported_and_not_retried_in_a_loop() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = tether::enroll::ensure_device_key(&dir.path().join("wrong_key")).unwrap();
    let t0 = Instant::now();
    let r = start(settings(
        &f,
        format!("127.0.0.1:{}", f.sshd().port).parse().unwrap(),
        pin(&f),
        &dir.path().join("wrong_key"),
    ))
    .await;
    r.wait("the refusal", t0, Duration::from_secs(10), |e| {
        matches!(
            e,
            TunnelEvent::Down {
                fault: LinkFault::LoginRefused(_),
                ..
            }
        )
    })
    .await;
    // Watch a while: no second attempt (the next one is a minute or more away).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = r.count(t0, |e| matches!(e, TunnelEvent::Connecting { .. }));
    assert_eq!(
        attempts, 1,
        "retried a refused login {attempts} times in 3 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_remote_listener_is_retried_and_recovers() {
    // sshd notices the dead session only after 3 x 4 s; the agent much sooner.
    let f = Fixture::start(FixtureOptions {
        broker: false,
        client_alive_interval: Some(4),
        ..FixtureOptions::default()
    })
    .unwrap();
    let (sim, r, _) = up_through_link(&f, LinkOptions::default()).await;
    let at = Instant::now();
    sim.blackhole();
    r.wait("the blackhole noticed", at, Duration::from_secs(15), |e| {
        matches!(e, TunnelEvent::Down { .. })
    })
    .await;
    sim.heal();
    let healed = Instant::now();
    r.wait(
        "the stale listener reported",
        healed,
        Duration::from_secs(20),
        |e| {
            matches!(
                e,
                TunnelEvent::Down {
                    fault: LinkFault::RemoteForwardRefused { .. },
                    ..
                }
            )
        },
    )
    .await;
    let up = r
        .wait(
            "the remote forward back",
            healed,
            Duration::from_secs(40),
            is_up,
        )
        .await;
    eprintln!("remote forward back {:.1?} after heal", up - healed);
    assert_eq!(
        server_id_at(f.remote_listen_port, f.office_db()),
        Some(f.office_db().server_id.to_string())
    );
    let reason =
        tether::health::explain_fault(&LinkFault::RemoteForwardRefused { listen: "x".into() });
    assert!(reason.contains("ClientAliveInterval"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_on_a_128_kbit_300_ms_link_raise_no_false_alarm() {
    let f = fixture();
    let sim = linksim(
        &f,
        LinkOptions {
            rate: Some(16_000),
            delay: Duration::from_millis(300),
            ..LinkOptions::default()
        },
    )
    .await;
    let t0 = Instant::now();
    let r = start(settings(
        &f,
        sim.local_addr(),
        pin(&f),
        &f.sshd().device_key,
    ))
    .await;
    r.wait("the tunnel up", t0, Duration::from_secs(30), is_up)
        .await;
    let burst_start = Instant::now();
    // 320 KB of hex each way at once, about 10 s of a saturated line both ways: the
    // download through the local forward, the upload through the remote forward (what
    // the hub's replication pulls from the office).
    let select = |port: u16, db: &tether_harness::db::DbServer| {
        let pw = db.root_password.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("mariadb")
                .args([
                    "--no-defaults",
                    "-h127.0.0.1",
                    "-uroot",
                    "--batch",
                    "--skip-column-names",
                ])
                .arg(format!("-P{port}"))
                .env("MYSQL_PWD", pw)
                // Random hex: SSH's zlib cannot squeeze it much below half.
                .args(["-e", "SELECT SHA2(RAND(), 512) FROM app.seq_1_to_2500"])
                .output()
                .map(|o| (o.status.success(), o.stdout.len()))
        })
    };
    let down = select(r.local.port(), f.hub_db());
    let up = select(f.remote_listen_port, f.office_db());
    let (down, up) = (down.await.unwrap().unwrap(), up.await.unwrap().unwrap());
    let took = burst_start.elapsed();
    eprintln!(
        "bursts of {} B down and {} B up took {took:.1?}",
        down.1, up.1
    );
    assert!(down.0 && up.0, "a burst failed: down {down:?}, up {up:?}");
    assert!(down.1 > 300_000 && up.1 > 300_000);
    assert!(
        took >= Duration::from_secs(6),
        "the link was not saturated ({took:?})"
    );
    // Upload alone: almost nothing comes back from the hub while the line is full.
    let burst_start = Instant::now();
    let up = select(f.remote_listen_port, f.office_db())
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "upload-only burst of {} B took {:.1?}",
        up.1,
        burst_start.elapsed()
    );
    assert!(up.0 && up.1 > 300_000, "{up:?}");
    // No alarm: the link never went down, and what people see (the health machine fed
    // these very events at their times, with replication healthy) stays in sync.
    let events: Vec<(Instant, TunnelEvent)> = r.log.lock().unwrap().clone();
    let verdicts = replay_in_sync(&events);
    assert!(
        !verdicts.is_empty()
            && verdicts
                .iter()
                .all(|v| *v == tether::health::Verdict::InSync),
        "the verdict left in_sync: {verdicts:?}"
    );
    let alarms = r.count(t0, |e| matches!(e, TunnelEvent::Down { .. }));
    assert_eq!(
        alarms,
        0,
        "false alarms on a slow but healthy link: {:#?}",
        r.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_reader_that_stops_reading_does_not_stall_the_others() {
    let f = fixture();
    let hub = format!("127.0.0.1:{}", f.sshd().port).parse().unwrap();
    let t0 = Instant::now();
    let r = start(settings(&f, hub, pin(&f), &f.sshd().device_key)).await;
    r.wait("the tunnel up", t0, Duration::from_secs(15), is_up)
        .await;
    // A client asks for 12 MB and then stops reading (its output pipe is never drained).
    let port = r.local.port();
    let mut stuck = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mariadb --no-defaults -h127.0.0.1 -P{port} -uroot -e \"SELECT REPEAT('x', 12000000)\" | sleep 30"
        ))
        .env("MYSQL_PWD", &f.hub_db().root_password)
        .process_group(0)
        .spawn()
        .unwrap();
    // Give the stuck download time to fill every buffer on the way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Other connections through the same session still work, promptly.
    let started = Instant::now();
    assert_eq!(
        server_id_at(port, f.hub_db()),
        Some(f.hub_db().server_id.to_string()),
        "a query behind the stall"
    );
    let probe_after = Instant::now();
    r.wait(
        "a probe after the stall",
        probe_after,
        Duration::from_secs(5),
        |e| {
            matches!(
                e,
                TunnelEvent::ProbeOk {
                    path: ProbePath::HubDbThroughLocalForward,
                    ..
                }
            )
        },
    )
    .await;
    eprintln!(
        "other traffic flowed {:.1?} into the stall",
        started.elapsed()
    );
    let downs = r.matching(t0, |e| matches!(e, TunnelEvent::Down { .. }));
    assert!(downs.is_empty(), "the session went down: {downs:#?}");
    let group = nix::unistd::Pid::from_raw(-(stuck.id() as i32));
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    let _ = stuck.wait();
}

/// A local reader that is slow, pausing now and then (a busy machine), keeps its
/// download to the last byte even when far more than the download buffer is in flight
/// (SSH's window opens as data arrives, not as the reader takes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_local_reader_keeps_its_download() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TOTAL: usize = 30 * 1024 * 1024;
    let pattern = |i: usize| (i % 251) as u8;
    // At the hub: a server that sends TOTAL bytes to whoever connects.
    let blaster = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let blaster_port = blaster.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = blaster.accept().await {
            tokio::spawn(async move {
                let data: Vec<u8> = (0..TOTAL).map(pattern).collect();
                let _ = s.write_all(&data).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let listen = tether_harness::process::free_port().unwrap();
    let sshd = Sshd::start(SshdOptions {
        permit_listen: format!("127.0.0.1:{listen}"),
        permit_open: format!("127.0.0.1:{blaster_port}"),
        client_alive_interval: None,
    })
    .unwrap();
    let key = russh::keys::load_secret_key(&sshd.device_key, None).unwrap();
    let mut s = TunnelSettings::new(
        Endpoint::new("127.0.0.1", sshd.port),
        sshd.user.clone(),
        Arc::new(key),
        Some(HostKeyPin::parse(&sshd.host_key).unwrap()),
        Endpoint::new("127.0.0.1", listen),
        Endpoint::new("127.0.0.1", 1),
        Endpoint::new("127.0.0.1", blaster_port),
    );
    // A probe would fetch a download of its own.
    s.probe_interval = Duration::from_secs(3600);
    let t0 = Instant::now();
    let r = start(s).await;
    r.wait("the tunnel up", t0, Duration::from_secs(15), is_up)
        .await;

    // The reader takes 2 MiB, then pauses half a second, until the end.
    let read = async {
        let mut tcp = tokio::net::TcpStream::connect(r.local).await.unwrap();
        let (mut got, mut bad) = (0usize, 0usize);
        let mut buf = vec![0u8; 64 * 1024];
        let mut since_pause = 0usize;
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            bad += buf[..n]
                .iter()
                .enumerate()
                .filter(|(i, b)| **b != pattern(got + i))
                .count();
            got += n;
            since_pause += n;
            if since_pause >= 2 * 1024 * 1024 {
                since_pause = 0;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        (got, bad)
    };
    let (got, bad) = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the slow download ended within 60 s");
    assert_eq!(
        (got, bad),
        (TOTAL, 0),
        "bytes delivered to the slow reader, and wrong ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_stops_within_2_s_of_sigterm() {
    let bin = tether_harness::process::tether_bin();
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let local = tether_harness::process::free_port().unwrap();
    let hub: SocketAddr = format!("127.0.0.1:{}", f.sshd().port).parse().unwrap();
    let config = tether_harness::lab::agent_config_for(&f, hub, local, dir.path()).unwrap();
    let path = dir.path().join("tether.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let mut child = std::process::Command::new(&bin)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        agent_reports_tunnel_up(&config.status.socket).await,
        "the agent never reported the tunnel up"
    );
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "still running 2 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("agent exited {:.2?} after SIGTERM ({status})", t0.elapsed());
    assert!(status.success(), "{status}");
    assert!(!config.status.socket.exists(), "status socket left behind");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", local)).is_err(),
        "local forward still listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_prints_the_hub_kit_and_pin_stores_the_key_the_tunnel_then_trusts() {
    let bin = tether_harness::process::tether_bin();
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let local = tether_harness::process::free_port().unwrap();
    let hub: SocketAddr = format!("127.0.0.1:{}", f.sshd().port).parse().unwrap();
    let mut config = tether_harness::lab::agent_config_for(&f, hub, local, dir.path()).unwrap();
    config.hub.host_key = None;
    config.hub.key_path = Some(dir.path().join("keys/device_key"));
    let path = dir.path().join("tether.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();

    let out = std::process::Command::new(&bin)
        .args(["enroll", "--pin", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listen = format!("127.0.0.1:{}", f.remote_listen_port);
    assert!(
        text.contains(&format!(
            "restrict,port-forwarding,command=\"/bin/false\",permitlisten=\"{listen}\""
        )),
        "{text}"
    );
    assert!(text.contains("ssh-ed25519 AAAA"), "{text}");
    assert!(text.contains("Match User"), "{text}");
    assert!(text.contains("ClientAliveInterval 15"), "{text}");
    assert!(
        text.contains(&f.sshd().host_fingerprint),
        "the pinned fingerprint is shown: {text}"
    );
    let key = dir.path().join("keys/device_key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !text.contains("PRIVATE KEY"),
        "the private key must never be printed"
    );

    // Install the printed key line on the hub, as its admin would.
    let line = text.lines().find(|l| l.starts_with("restrict,")).unwrap();
    let public = line
        .split_once("\" ssh-ed25519 ")
        .map(|(_, k)| format!("ssh-ed25519 {k}"))
        .unwrap();
    f.sshd()
        .authorize_only(&public, &listen, &format!("127.0.0.1:{}", f.hub_db().port))
        .unwrap();

    // With nothing pinned in the config, the agent trusts the enrolled key.
    let mut child = std::process::Command::new(&bin)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = agent_reports_tunnel_up(&config.status.socket).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        up,
        "the agent did not connect with the enrolled key and pinned fingerprint"
    );
}

/// Feeds tunnel events (with healthy replication) to the health machine at their times,
/// ticking every 100 ms, and returns every verdict shown after the tunnel first came up.
fn replay_in_sync(events: &[(Instant, TunnelEvent)]) -> Vec<tether::health::Verdict> {
    use tether::events::{Direction, Event, ReplicationStatus, Stamp};
    use tether::health::{HealthMachine, HealthSettings};
    let Some(origin) = events.first().map(|(t, _)| *t) else {
        return Vec::new();
    };
    let stamp = |t: Instant| Stamp {
        mono: t - origin,
        wall: std::time::SystemTime::UNIX_EPOCH + (t - origin),
    };
    let mut m = HealthMachine::new(
        HealthSettings {
            settle: Duration::from_secs(5),
            alert_after: Duration::from_secs(3600),
            lag_ok: Duration::from_secs(10),
        },
        stamp(origin),
    );
    let healthy = ReplicationStatus {
        io_running: Some(true),
        sql_running: Some(true),
        lag_s: Some(0),
        ..ReplicationStatus::default()
    };
    let mut out = Vec::new();
    let mut up = false;
    let mut last = origin;
    for (t, e) in events {
        while last + Duration::from_millis(100) < *t {
            last += Duration::from_millis(100);
            let v = m.tick(stamp(last)).verdict;
            if up {
                out.push(v);
            }
        }
        let v = m.handle(Event::Tunnel(e.clone()), stamp(*t)).verdict;
        last = *t;
        if *e == TunnelEvent::Up && !up {
            up = true;
            for d in Direction::BOTH {
                m.handle(
                    Event::Replication {
                        direction: d,
                        status: healthy.clone(),
                    },
                    stamp(*t),
                );
            }
            continue;
        }
        if up {
            out.push(v);
        }
    }
    out
}

/// Polls a running agent's status socket until it says the tunnel is up (true), or 20 s
/// pass (false).
async fn agent_reports_tunnel_up(socket: &std::path::Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = tether::status::query(socket, Duration::from_secs(1))
            .await
            .ok()
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
            .is_some_and(|d| d["tunnel"]["up"] == true);
        if up {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
