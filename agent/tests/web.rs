//! The status page's server on a real loopback socket (port 0): routes, basic auth, bad
//! requests, the connection limit, and no secret in any answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use tether::history::History;
use tether::passwd::PasswordHash;
use tether::secret::Secret;
use tether::web::{Auth, MAX_CONNECTIONS, Sources, WebSettings};

const PASSWORD: &str = "correct horse battery";

struct Server {
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    hash_text: String,
    _keep: (
        watch::Sender<Option<tether::health::Health>>,
        watch::Sender<String>,
        watch::Sender<Arc<History>>,
    ),
}

async fn start(auth: bool) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hash = PasswordHash::create(&Secret::new(PASSWORD), 1000);
    let hash_text = hash.to_phc().expose().to_owned();
    let (health_tx, health) = watch::channel(None);
    let (doc_tx, doc) = watch::channel(r#"{"verdict":"link_down"}"#.to_owned());
    let (history_tx, history) = watch::channel(Arc::new(History::new()));
    let stop = CancellationToken::new();
    let task = tokio::spawn(tether::web::serve(
        listener,
        WebSettings {
            site_name: "Lab office".into(),
            auth: auth.then(|| Auth {
                user: "office".into(),
                hash,
            }),
            started: Instant::now(),
        },
        Sources {
            health,
            doc,
            history,
        },
        stop.clone(),
    ));
    Server {
        addr,
        stop,
        task,
        hash_text,
        _keep: (health_tx, doc_tx, history_tx),
    }
}

/// Sends raw bytes, returns everything the server answered (bounded).
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server answers and closes within 10 s")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str, auth: Option<(&str, &str)>) -> Vec<u8> {
    use base64::Engine;
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: box\r\n");
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        r.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn routes_and_bad_requests_get_their_codes_never_a_crash() {
    let s = start(false).await;
    let page = exchange(s.addr, &get("/", None)).await;
    assert_eq!(status(&page), 200, "{page}");
    assert!(page.contains("<h1>Starting</h1>"), "{page}");
    let json = exchange(s.addr, &get("/status.json", None)).await;
    assert!(json.ends_with(r#"{"verdict":"link_down"}"#), "{json}");
    assert!(json.contains("Content-Type: application/json\r\n"));
    let metrics = exchange(s.addr, &get("/metrics", None)).await;
    assert!(metrics.contains("tether_tunnel_up 0"), "{metrics}");
    for (request, want) in [
        (get("/nope", None), 404),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
        ),
        (b"GET / HTTP/9\r\n\r\n".to_vec(), 400),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        (b"GET / HTTP/1.1\r\nbroken header\r\n\r\n".to_vec(), 400),
        (vec![b'A'; 20_000], 400),
    ] {
        let answer = exchange(s.addr, &request).await;
        assert_eq!(
            status(&answer),
            want,
            "{:?} -> {answer}",
            String::from_utf8_lossy(&request[..request.len().min(40)])
        );
    }
    // Still serving after all that.
    assert_eq!(status(&exchange(s.addr, &get("/", None)).await), 200);
    s.stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), s.task)
        .await
        .expect("stops at shutdown")
        .unwrap();
}

#[tokio::test]
async fn basic_auth_guards_every_route_and_no_answer_holds_a_secret() {
    let s = start(true).await;
    let mut answers = Vec::new();
    for path in ["/", "/status.json", "/metrics", "/timeline.svg", "/x"] {
        let a = exchange(s.addr, &get(path, None)).await;
        assert_eq!(status(&a), 401, "{path}: {a}");
        assert!(a.contains("WWW-Authenticate: Basic realm=\"tether\""));
        answers.push(a);
        let a = exchange(s.addr, &get(path, Some(("office", "wrong password")))).await;
        assert_eq!(status(&a), 401, "{path}: {a}");
        answers.push(a);
        let a = exchange(s.addr, &get(path, Some(("someone", PASSWORD)))).await;
        assert_eq!(status(&a), 401, "{path}: {a}");
        answers.push(a);
        let a = exchange(s.addr, &get(path, Some(("office", PASSWORD)))).await;
        assert_eq!(status(&a), if path == "/x" { 404 } else { 200 }, "{path}");
        answers.push(a);
    }
    let salt_and_hash: Vec<&str> = s.hash_text.split('$').skip(3).collect();
    for a in &answers {
        for secret in [PASSWORD, s.hash_text.as_str()]
            .into_iter()
            .chain(salt_and_hash.iter().copied())
        {
            assert!(!a.contains(secret), "an answer holds a secret: {a}");
        }
    }
}

#[tokio::test]
async fn a_scanner_holding_connections_cannot_take_the_page_away_for_long() {
    let s = start(false).await;
    // Connections that never send a request fill every slot ...
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(TcpStream::connect(s.addr).await.unwrap());
    }
    // ... (give the server the moment it needs to accept them) ...
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut extra = TcpStream::connect(s.addr).await.unwrap();
        let mut buf = [0u8; 16];
        // ... so one more is closed at once rather than queued.
        match tokio::time::timeout(Duration::from_millis(500), extra.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            _ => assert!(
                Instant::now() < deadline,
                "the extra connection was not refused"
            ),
        }
    }
    // The idle ones are dropped after the head timeout; then the page answers again.
    let started = Instant::now();
    for mut c in idle {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("an idle connection is closed within the head timeout");
        assert!(matches!(n, Ok(0) | Err(_)));
    }
    assert!(started.elapsed() <= tether::web::HEAD_TIMEOUT + Duration::from_secs(3));
    assert_eq!(status(&exchange(s.addr, &get("/", None)).await), 200);
}

#[tokio::test]
async fn shutdown_ends_every_connection_before_the_server_returns() {
    let s = start(false).await;
    let mut open = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        open.push(TcpStream::connect(s.addr).await.unwrap());
    }
    // One of them half way through its request.
    open[0]
        .write_all(b"GET / HTTP/1.1\r\nHost: box\r\n")
        .await
        .unwrap();
    // Every slot taken (an extra connection is refused): all of them are being served.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut extra = TcpStream::connect(s.addr).await.unwrap();
        let mut buf = [0u8; 16];
        match tokio::time::timeout(Duration::from_millis(500), extra.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            _ => assert!(Instant::now() < deadline, "the slots did not fill"),
        }
    }
    let stopping = Instant::now();
    s.stop.cancel();
    tokio::time::timeout(tether::web::SHUTDOWN_WAIT * 2, s.task)
        .await
        .expect("the server returns within its shutdown wait")
        .unwrap();
    assert!(stopping.elapsed() < tether::web::SHUTDOWN_WAIT);
    // The server has returned: every connection it took is closed already, without
    // waiting (a plain non-blocking read sees the end of the stream at once).
    for c in open {
        use std::io::Read;
        let mut c = c.into_std().unwrap();
        c.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        match c.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a connection outlived the server: {other:?}"),
        }
    }
}

#[test]
fn web_passwd_prints_config_lines_that_check_the_password() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["web-passwd", "--user", "front-desk"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long password\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "web-passwd did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8(out.stdout).unwrap();
    assert!(!lines.contains("a long password"));
    // The example's own [web] section is last and all commented out: replace it.
    let example = tether::config::EXAMPLE.split("\n[web]").next().unwrap();
    let text = format!(
        "{example}\n{}",
        lines.replace("[web]", "[web]\nlisten = \"127.0.0.1:8080\"")
    );
    let c = tether::config::Config::parse(&text, "t.toml").unwrap();
    assert_eq!(c.web.user.as_deref(), Some("front-desk"));
    let hash = c.web.password_hash().unwrap();
    assert!(hash.verify(&Secret::new("a long password")));
    assert!(!hash.verify(&Secret::new("a long passwore")));
}
