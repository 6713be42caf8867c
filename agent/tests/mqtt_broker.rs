//! The MQTT publisher against a real mosquitto: retained state and status, republish after
//! a broker restart, the last will of a killed or hung agent, a refused login that backs
//! off, TLS with a private CA, and no password in anything published or logged.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tether::mqtt::{MqttEvent, MqttSettings, TlsFiles, client_config, run};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "s3cret-Pa55-do-not-leak";
const START_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- broker

/// A private mosquitto on a free loopback port; killed on drop.
struct Broker {
    port: u16,
    /// Config, log and files; removed on drop.
    _dir: tempfile::TempDir,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Broker {
    fn start(extra: &[String]) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        let mut b = Broker {
            port: 0,
            _dir: dir,
            conf,
            log,
            child: None,
        };
        // A port found free can be taken before mosquitto binds it: try a few.
        for _ in 0..5 {
            b.port = free_port();
            let mut text = format!(
                "listener {} 127.0.0.1\npersistence false\nlog_dest stderr\nlog_type all\nconnection_messages true\n",
                b.port
            );
            // Started as root, mosquitto would switch to a user that cannot read the temp dir.
            if nix::unistd::geteuid().is_root() {
                text.push_str("user root\n");
            }
            for line in extra {
                text.push_str(line);
                text.push('\n');
            }
            std::fs::write(&b.conf, text).expect("write mosquitto.conf");
            if b.spawn() {
                return b;
            }
        }
        panic!("mosquitto found no free port:\n{}", b.log_text());
    }

    /// Starts mosquitto and waits until it listens; `false` if its port was taken.
    fn spawn(&mut self) -> bool {
        let before = self.log_text().len();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open broker log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        // "... running" is logged once every listener is open (plain or TLS alike).
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            let text = self.log_text();
            let new = text.get(before..).unwrap_or_default();
            if new.contains("Address already in use") {
                self.kill();
                return false;
            }
            if new.contains(" running") && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto not ready within {START_TIMEOUT:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL: no goodbye to anyone, retained messages gone (no persistence).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Same config, same port.
    fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "port {} taken while the broker was down",
            self.port
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn connections(&self) -> usize {
        self.log_text().matches("New connection from").count()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port below Linux's ephemeral range (32768+), so outgoing connections of
/// tests running alongside cannot take it while the broker is down.
fn free_port() -> u16 {
    for _ in 0..200 {
        let port = rand::random_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

fn password_file(b: &Path) -> PathBuf {
    let file = b.join("passwords");
    let ok = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&file)
        .args(["tether", PASSWORD])
        .status()
        .expect("mosquitto_passwd (apt-get install mosquitto)");
    assert!(ok.success());
    file
}

// ---------------------------------------------------------------- watcher

#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    payload: String,
    retain: bool,
    at: Instant,
}

/// A subscriber recording every message it gets; resubscribes after reconnects.
struct Watcher {
    seen: Arc<Mutex<Vec<Seen>>>,
    subscribed: Arc<AtomicBool>,
    client: AsyncClient,
    task: JoinHandle<()>,
}

static WATCHERS: AtomicUsize = AtomicUsize::new(0);

impl Watcher {
    async fn start(port: u16, filter: &str) -> Watcher {
        Watcher::start_with(port, filter, |_| {}).await
    }

    async fn start_with(port: u16, filter: &str, tune: impl FnOnce(&mut MqttOptions)) -> Watcher {
        let n = WATCHERS.fetch_add(1, Ordering::Relaxed);
        let mut o = MqttOptions::new(format!("watcher-{n}"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        tune(&mut o);
        let (client, mut el) = AsyncClient::new(o, 64);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let (s, sub, c, topic) = (
            seen.clone(),
            subscribed.clone(),
            client.clone(),
            filter.to_owned(),
        );
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => sub.store(true, Ordering::SeqCst),
                    Ok(Event::Incoming(Packet::Publish(p))) => s.lock().expect("seen").push(Seen {
                        topic: p.topic.clone(),
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        retain: p.retain,
                        at: Instant::now(),
                    }),
                    Ok(_) => {}
                    Err(_) => {
                        sub.store(false, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let w = Watcher {
            seen,
            subscribed,
            client,
            task,
        };
        let ok = poll_until(Duration::from_secs(5), || {
            w.subscribed.load(Ordering::SeqCst)
        })
        .await;
        assert!(ok, "watcher could not subscribe to {filter}");
        w
    }

    fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    fn count(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.snapshot().iter().filter(|s| pred(s)).count()
    }

    async fn wait_for(&self, within: Duration, pred: impl Fn(&Seen) -> bool) -> Option<Seen> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.snapshot().into_iter().find(|s| pred(s)) {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("watcher publish");
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn poll_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Retained copies a brand-new subscriber gets for `filter`. A subscriber that came
/// before the publishes gets them live instead, so a new one is tried until `expect`
/// retained copies arrive or 10 s pass.
async fn retained(port: u16, filter: &str, expect: usize) -> Vec<Seen> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let w = Watcher::start(port, filter).await;
        poll_until(Duration::from_secs(1), || w.count(|s| s.retain) >= expect).await;
        let got: Vec<Seen> = w.snapshot().into_iter().filter(|s| s.retain).collect();
        if got.len() >= expect || Instant::now() >= deadline {
            return got;
        }
    }
}

// ---------------------------------------------------------------- agent

/// `run()` in a task, with its state sender and event receiver.
struct Agent {
    state: watch::Sender<String>,
    events: mpsc::Receiver<MqttEvent>,
    seen_events: Vec<MqttEvent>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Agent {
    fn start(settings: MqttSettings, doc: &str) -> Agent {
        capture_logs();
        let (state, rx) = watch::channel(doc.to_owned());
        let (tx, events) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(settings, rx, tx, shutdown.clone()));
        Agent {
            state,
            events,
            seen_events: Vec::new(),
            shutdown,
            task: Some(task),
        }
    }

    async fn wait_event(
        &mut self,
        within: Duration,
        pred: impl Fn(&MqttEvent) -> bool,
    ) -> MqttEvent {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.events.recv()).await {
                Ok(Some(ev)) => {
                    self.seen_events.push(ev.clone());
                    if pred(&ev) {
                        return ev;
                    }
                }
                _ => panic!(
                    "no matching MQTT event within {within:?}; seen {:?}",
                    self.seen_events
                ),
            }
        }
    }

    async fn connected(&mut self) {
        self.wait_event(Duration::from_secs(10), |e| *e == MqttEvent::Connected)
            .await;
    }

    /// Cancels and measures how long `run()` takes to return.
    async fn stop(&mut self) -> Duration {
        let started = Instant::now();
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            timeout(Duration::from_secs(3), task)
                .await
                .expect("run() returns after shutdown")
                .expect("run() does not panic");
        }
        started.elapsed()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn settings(port: u16) -> MqttSettings {
    let mut s = MqttSettings::new("127.0.0.1", port, "office", "Main office");
    s.keepalive = Duration::from_secs(5);
    s.backoff_min = Duration::from_millis(200);
    s.backoff_max = Duration::from_secs(1);
    s
}

fn doc(verdict: &str, n: u64) -> String {
    serde_json::json!({
        "verdict": verdict,
        "reasons": [],
        "n": n,
        "agent": {"version": "0.1.0", "uptime_s": n},
    })
    .to_string()
}

/// Everything the agent logs, in every test of this binary, for the secret scan.
fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_no_password(what: &str, text: &str) {
    assert!(!text.contains(PASSWORD), "the password appears in {what}");
}

const DISCOVERY: &str = "homeassistant/+/tether_office/+/config";

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_state_status_and_discovery_for_fresh_subscribers() {
    let broker = Broker::start(&["allow_anonymous true".into()]);
    let live = Watcher::start(broker.port, "#").await;
    let mut agent = Agent::start(settings(broker.port), &doc("in_sync", 1));
    agent.connected().await;

    let got = retained(broker.port, "tether/office/#", 2).await;
    let find = |t: &str| {
        got.iter()
            .rev()
            .find(|s| s.topic == t)
            .map(|s| s.payload.clone())
    };
    assert_eq!(find("tether/office/status").as_deref(), Some("online"));
    assert_eq!(find("tether/office/state"), Some(doc("in_sync", 1)));
    let configs = retained(broker.port, DISCOVERY, 8).await;
    assert_eq!(configs.len(), 8, "{configs:?}");

    // A change goes out at once and replaces the retained copy.
    let t0 = Instant::now();
    agent.state.send_replace(doc("link_down", 2));
    let s = live
        .wait_for(Duration::from_secs(3), |s| s.payload == doc("link_down", 2))
        .await
        .expect("changed state published");
    assert!(s.at - t0 < Duration::from_secs(2), "took {:?}", s.at - t0);

    // A burst never blocks the producer and arrives as its newest document, coalesced.
    let before = live.count(|s| s.topic == "tether/office/state");
    let t0 = std::time::Instant::now();
    for n in 100..1100 {
        agent.state.send_replace(doc("catching_up", n));
    }
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "producer was held up"
    );
    live.wait_for(Duration::from_secs(5), |s| {
        s.payload == doc("catching_up", 1099)
    })
    .await
    .expect("newest state of the burst published");
    let burst = live.count(|s| s.topic == "tether/office/state") - before;
    assert!(burst <= 3, "{burst} state publishes for one burst");
    let got = retained(broker.port, "tether/office/state", 1).await;
    assert_eq!(
        got.last().map(|s| s.payload.clone()),
        Some(doc("catching_up", 1099))
    );

    // Home Assistant coming online asks for discovery again.
    let before = live.count(|s| s.topic.ends_with("/config"));
    live.publish("homeassistant/status", "online").await;
    let ok = poll_until(Duration::from_secs(3), || {
        live.count(|s| s.topic.ends_with("/config")) >= before + 8
    })
    .await;
    assert!(
        ok,
        "discovery not re-sent after homeassistant/status online"
    );

    // Shutdown: `offline` explicitly (a clean DISCONNECT suppresses the will), in time.
    let took = agent.stop().await;
    assert!(took < Duration::from_millis(1500), "shutdown took {took:?}");
    let got = retained(broker.port, "tether/office/status", 1).await;
    assert_eq!(got.last().map(|s| s.payload.as_str()), Some("offline"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishes_periodically_and_nothing_else() {
    let broker = Broker::start(&["allow_anonymous true".into()]);
    let mut s = settings(broker.port);
    s.republish = Duration::from_secs(1);
    s.keepalive = Duration::from_secs(60);
    let live = Watcher::start(broker.port, "#").await;
    let mut agent = Agent::start(s, &doc("in_sync", 1));
    agent.connected().await;
    let ok = poll_until(Duration::from_secs(6), || {
        live.count(|s| s.topic == "tether/office/state") >= 4
    })
    .await;
    assert!(
        ok,
        "state not republished every second: {:?}",
        live.snapshot()
    );
    // After the connect burst (status + 8 configs + state), only the state repeats.
    let others: Vec<Seen> = live
        .snapshot()
        .into_iter()
        .filter(|s| s.topic != "tether/office/state")
        .collect();
    assert_eq!(others.len(), 9, "{others:?}");
    // Uptime alone is not a change: nothing extra beyond the periodic republish.
    let before = live.count(|s| s.topic == "tether/office/state");
    let t0 = Instant::now();
    for n in 2..50 {
        agent.state.send_replace(
            doc("in_sync", 1).replace("\"uptime_s\":1", &format!("\"uptime_s\":{n}")),
        );
    }
    // An observation window: absence of publishes can only be seen by waiting.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let extra = live.count(|s| s.topic == "tether/office/state" && s.at >= t0);
    assert!(
        extra <= 1,
        "{extra} publishes for uptime-only changes (before: {before})"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_gets_everything_republished() {
    let mut broker = Broker::start(&["allow_anonymous true".into()]);
    let mut agent = Agent::start(settings(broker.port), &doc("in_sync", 7));
    agent.connected().await;
    assert_eq!(retained(broker.port, "tether/office/#", 2).await.len(), 2);

    broker.kill();
    agent
        .wait_event(Duration::from_secs(5), |e| {
            matches!(e, MqttEvent::Disconnected { .. })
        })
        .await;
    // The state changes while the broker is away: the newest one must arrive.
    agent.state.send_replace(doc("link_down", 8));
    broker.restart();
    let back = Instant::now();
    agent.connected().await;
    // backoff_max is 1 s: the agent is back within it plus a connect.
    println!("reconnected {:?} after the broker returned", back.elapsed());
    assert!(
        back.elapsed() < Duration::from_secs(3),
        "reconnect took {:?}",
        back.elapsed()
    );
    let got = retained(broker.port, "tether/office/#", 2).await;
    let find = |t: &str| {
        got.iter()
            .rev()
            .find(|s| s.topic == t)
            .map(|s| s.payload.clone())
    };
    assert_eq!(find("tether/office/status").as_deref(), Some("online"));
    assert_eq!(find("tether/office/state"), Some(doc("link_down", 8)));
    assert_eq!(retained(broker.port, DISCOVERY, 8).await.len(), 8);
    agent.stop().await;
}

/// Not a test by itself: the agent process the last-will test kills.
#[test]
#[ignore = "run by last_will_marks_a_killed_or_hung_agent_offline as a child process"]
fn child_agent_process() {
    let Ok(port) = std::env::var("TETHER_MQTT_CHILD_PORT") else {
        return;
    };
    let port: u16 = port.parse().expect("port");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut s = settings(port);
        s.keepalive = Duration::from_secs(2);
        let (_state, rx) = watch::channel(doc("in_sync", 1));
        let (tx, _events) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        // Never outlive a parent that died without killing us.
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            stop.cancel();
        });
        run(s, rx, tx, shutdown).await;
    });
}

struct ChildAgent(Child);

impl ChildAgent {
    fn spawn(port: u16) -> ChildAgent {
        let exe = std::env::current_exe().expect("test binary");
        let child = Command::new(exe)
            .args(["child_agent_process", "--exact", "--ignored", "--nocapture"])
            .env("TETHER_MQTT_CHILD_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child agent");
        ChildAgent(child)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal child");
    }
}

impl Drop for ChildAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_marks_a_killed_or_hung_agent_offline() {
    use nix::sys::signal::Signal;
    let broker = Broker::start(&["allow_anonymous true".into()]);
    let live = Watcher::start(broker.port, "tether/office/status").await;
    let keepalive = Duration::from_secs(2);
    let bound = keepalive * 3 / 2;

    // Killed: the kernel closes the socket, the broker publishes the will.
    let mut child = ChildAgent::spawn(broker.port);
    let online = live
        .wait_for(Duration::from_secs(10), |s| s.payload == "online")
        .await
        .expect("child agent online");
    let killed = Instant::now();
    child.signal(Signal::SIGKILL);
    let _ = child.0.wait();
    let offline = live
        .wait_for(Duration::from_secs(5), |s| {
            s.payload == "offline" && s.at > online.at
        })
        .await
        .expect("last will after SIGKILL");
    let after_kill = offline.at - killed;
    assert!(
        after_kill <= bound,
        "offline {after_kill:?} after SIGKILL (bound {bound:?})"
    );
    drop(child);

    // Hung (stopped, socket open): only the broker's keepalive timeout can tell.
    let child = ChildAgent::spawn(broker.port);
    let online = live
        .wait_for(Duration::from_secs(10), |s| {
            s.payload == "online" && s.at > offline.at
        })
        .await
        .expect("second child agent online");
    let stopped = Instant::now();
    child.signal(Signal::SIGSTOP);
    let offline = live
        .wait_for(Duration::from_secs(6), |s| {
            s.payload == "offline" && s.at > online.at
        })
        .await
        .expect("last will after the agent hung");
    let after_stop = offline.at - stopped;
    // The broker allows 1.5 keepalives after the last packet it got, which came up to one
    // keepalive before the stop; mosquitto counts in whole seconds (up to 2 s late) and
    // checks once a second.
    let hung_bound = keepalive + bound + Duration::from_secs(3);
    assert!(
        after_stop <= hung_bound,
        "offline {after_stop:?} after SIGSTOP (bound {hung_bound:?})"
    );
    println!("last will: {after_kill:?} after SIGKILL, {after_stop:?} after SIGSTOP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_password_is_reported_plainly_and_backed_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pw = password_file(dir.path());
    let broker = Broker::start(&[
        "allow_anonymous false".into(),
        format!("password_file {}", pw.display()),
    ]);
    let before = broker.connections();
    let mut s = settings(broker.port);
    s.username = Some("tether".into());
    s.password = Some(format!("{PASSWORD}-wrong").into());
    let mut agent = Agent::start(s, &doc("in_sync", 1));
    let ev = agent
        .wait_event(Duration::from_secs(5), |e| {
            matches!(e, MqttEvent::Disconnected { .. })
        })
        .await;
    let MqttEvent::Disconnected { reason } = ev else {
        unreachable!()
    };
    assert!(
        reason.contains("refused the username or password"),
        "{reason}"
    );
    assert_no_password("the reason", &reason);
    // An observation window: a refused login is retried after >= 30 s only.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let attempts = broker.connections() - before;
    assert!(
        (1..=2).contains(&attempts),
        "{attempts} connection attempts in 5 s"
    );
    assert!(
        agent.events.try_recv().is_err(),
        "the same refusal reported twice"
    );
    agent.stop().await;
    let logs = String::from_utf8_lossy(&capture_logs().lock().expect("logs")).into_owned();
    assert_no_password("the agent's logs", &logs);
}

/// CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let f = |f: &str| format!("{name}-{f}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &f("ca.key"),
            "-out",
            &f("ca.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=tether test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    for (who, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        ),
        (
            "client",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        ),
    ] {
        std::fs::write(p(&format!("{who}.ext")), ext).expect("write ext");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &f(&format!("{who}.key")),
                "-out",
                &f(&format!("{who}.csr")),
                "-subj",
                &format!("/CN=tether test {who}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &f(&format!("{who}.csr")),
                "-CA",
                &f("ca.pem"),
                "-CAkey",
                &f("ca.key"),
                "-CAcreateserial",
                "-out",
                &f(&format!("{who}.pem")),
                "-days",
                "2",
                "-extfile",
                &f(&format!("{who}.ext")),
            ],
        );
    }
    Pki {
        ca: p("ca.pem"),
        server_cert: p("server.pem"),
        server_key: p("server.key"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
    }
}

fn tls_broker(pki: &Pki, require_client_cert: bool, pw: &Path) -> Broker {
    let mut lines = vec![
        "allow_anonymous false".to_owned(),
        format!("password_file {}", pw.display()),
        format!("cafile {}", pki.ca.display()),
        format!("certfile {}", pki.server_cert.display()),
        format!("keyfile {}", pki.server_key.display()),
    ];
    if require_client_cert {
        lines.push("require_certificate true".into());
    }
    Broker::start(&lines)
}

fn tls_settings(port: u16, files: TlsFiles) -> MqttSettings {
    let mut s = settings(port);
    s.username = Some("tether".into());
    s.password = Some(PASSWORD.into());
    s.tls = Some(files);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_no_secret_in_any_payload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = make_pki(dir.path(), "site");
    let pw = password_file(dir.path());
    let broker = tls_broker(&pki, false, &pw);
    let files = TlsFiles {
        ca_file: pki.ca.clone(),
        client_cert: None,
        client_key: None,
    };
    let watcher_tls = client_config(&files).expect("watcher TLS");
    let live = Watcher::start_with(broker.port, "#", |o| {
        o.set_credentials("tether", PASSWORD)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(watcher_tls),
            )));
    })
    .await;
    let mut agent = Agent::start(tls_settings(broker.port, files), &doc("in_sync", 1));
    agent.connected().await;
    live.wait_for(Duration::from_secs(5), |s| s.topic == "tether/office/state")
        .await
        .expect("state over TLS");
    agent.state.send_replace(doc("link_down", 2));
    live.wait_for(Duration::from_secs(5), |s| s.payload == doc("link_down", 2))
        .await
        .expect("changed state over TLS");
    agent.stop().await;
    live.wait_for(Duration::from_secs(5), |s| s.payload == "offline")
        .await
        .expect("offline over TLS");

    let all = live.snapshot();
    assert!(all.len() >= 12, "{all:?}");
    for s in &all {
        assert_no_password(&format!("a payload on {}", s.topic), &s.payload);
        assert_no_password("a topic", &s.topic);
    }
    for ev in &agent.seen_events {
        assert_no_password("an event", &format!("{ev:?}"));
    }
    let logs = String::from_utf8_lossy(&capture_logs().lock().expect("logs")).into_owned();
    assert_no_password("the agent's logs", &logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificate_and_an_untrusted_broker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = make_pki(dir.path(), "site");
    let other = make_pki(dir.path(), "other");
    let pw = password_file(dir.path());
    let broker = tls_broker(&pki, true, &pw);

    // Mutual TLS: the broker requires our certificate.
    let mut agent = Agent::start(
        tls_settings(
            broker.port,
            TlsFiles {
                ca_file: pki.ca.clone(),
                client_cert: Some(pki.client_cert.clone()),
                client_key: Some(pki.client_key.clone()),
            },
        ),
        &doc("in_sync", 1),
    );
    agent.connected().await;
    agent.stop().await;

    // A CA that did not sign the broker's certificate: refused, and said so.
    let mut agent = Agent::start(
        tls_settings(
            broker.port,
            TlsFiles {
                ca_file: other.ca.clone(),
                client_cert: Some(pki.client_cert.clone()),
                client_key: Some(pki.client_key.clone()),
            },
        ),
        &doc("in_sync", 1),
    );
    let ev = agent
        .wait_event(Duration::from_secs(10), |e| {
            matches!(e, MqttEvent::Disconnected { .. })
        })
        .await;
    let MqttEvent::Disconnected { reason } = ev else {
        unreachable!()
    };
    assert!(reason.contains("not trusted"), "{reason}");
    println!("untrusted broker: {reason}");
    agent.stop().await;

    // No client certificate where one is required: refused, with a hint.
    let mut agent = Agent::start(
        tls_settings(
            broker.port,
            TlsFiles {
                ca_file: pki.ca.clone(),
                client_cert: None,
                client_key: None,
            },
        ),
        &doc("in_sync", 1),
    );
    let ev = agent
        .wait_event(Duration::from_secs(10), |e| {
            matches!(e, MqttEvent::Disconnected { .. })
        })
        .await;
    let MqttEvent::Disconnected { reason } = ev else {
        unreachable!()
    };
    assert!(reason.contains("TLS"), "{reason}");
    println!("without a client certificate: {reason}");
    agent.stop().await;
}
