//! The status page on the LAN: a small read-only HTTP/1.1 server (GET and HEAD, one
//! request per connection) serving the page (`/`), the 24-hour timeline
//! (`/timeline.svg`), the MQTT state document (`/status.json`) and Prometheus text
//! (`/metrics`), plus the task that keeps the history ring behind the timeline.
//!
//! Hand-written rather than a framework: four read-only routes do not need one, and the
//! binary stays small. A LAN scanner cannot starve the agent: at most
//! [`MAX_CONNECTIONS`] at once (more are closed at accept), the request head must arrive
//! within [`HEAD_TIMEOUT`] and fit in [`MAX_HEAD`], and every connection is done within
//! [`CONNECTION_BUDGET`]. Every connection is a task the server tracks: at shutdown each
//! stops at once and the server returns only when they are gone (or after
//! [`SHUTDOWN_WAIT`]). Nothing read from the configuration is served but the site's
//! name; the password hash is only compared against.

pub mod page;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::Health;
use crate::history::{History, HistoryFile, Sample};
use crate::passwd::{PasswordHash, basic_credentials, constant_time_eq};
use crate::secret::Secret;

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 8;
/// The request line and headers must arrive within this.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Everything about one connection, reading, checking and writing, ends within this.
pub const CONNECTION_BUDGET: Duration = Duration::from_secs(15);
/// At shutdown, how long the server waits for its connections to end. Each stops at the
/// shutdown signal; what can take longer is a password check already running on a
/// blocking thread (one PBKDF2, well under this even on a Raspberry Pi). Below the agent's
/// own 1.5 s for all its tasks.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);
/// How often the history ring is written to disk (and once more at shutdown).
const SAVE_EVERY: Duration = Duration::from_secs(300);
/// A starting agent is connecting, not cut off: until the link is first up, or this long,
/// nothing is recorded (those seconds show as "box off", not as an outage).
const STARTUP_GRACE: Duration = Duration::from_secs(30);

/// Basic auth: the user and the hash of the password.
#[derive(Debug, Clone)]
pub struct Auth {
    pub user: String,
    pub hash: PasswordHash,
}

/// What the server needs besides its listener.
#[derive(Debug, Clone)]
pub struct WebSettings {
    pub site_name: String,
    pub auth: Option<Auth>,
    /// When the agent started (for `tether_uptime_seconds`).
    pub started: Instant,
}

/// Where the served data comes from: the health loop's outputs and the history task's.
#[derive(Debug, Clone)]
pub struct Sources {
    pub health: watch::Receiver<Option<Health>>,
    /// The MQTT state document, exactly as published.
    pub doc: watch::Receiver<String>,
    pub history: watch::Receiver<Arc<History>>,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Without the query string.
    pub path: String,
    /// The `Authorization` header's value: it carries the password.
    pub authorization: Option<Secret>,
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    Incomplete,
    Done(Request),
    /// Not a request this server understands.
    Bad,
}

/// Reads a request head from `stream` within [`HEAD_TIMEOUT`]: an `Err` when too slow,
/// `Parsed::Incomplete` when the peer closed before a full head.
pub async fn read_head(stream: &mut TcpStream) -> Result<Parsed, tokio::time::error::Elapsed> {
    let mut buf = Vec::with_capacity(1024);
    tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            match parse(&buf) {
                Parsed::Incomplete => {}
                done => return done,
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Parsed::Incomplete,
                // `parse` refuses a head past MAX_HEAD, so this stays bounded.
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
}

/// Parses a request head from the bytes received so far. Pure.
pub fn parse(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_HEAD {
            Parsed::Bad
        } else {
            Parsed::Incomplete
        };
    };
    if end + 4 > MAX_HEAD {
        return Parsed::Bad;
    }
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Bad;
    };
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (first.next(), first.next(), first.next(), first.next())
    else {
        return Parsed::Bad;
    };
    let is_http_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !is_http_token(method)
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
        || !target.starts_with('/')
        || !target.bytes().all(|b| b.is_ascii_graphic())
    {
        return Parsed::Bad;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target).to_owned();
    let mut authorization: Option<Secret> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Parsed::Bad;
        };
        if !is_http_token(name) || value.chars().any(|c| c.is_control() && c != '\t') {
            return Parsed::Bad;
        }
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(Secret::new(value.trim()));
        }
    }
    Parsed::Done(Request {
        method: method.to_owned(),
        path,
        authorization,
    })
}

/// An answer, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub extra: Vec<(&'static str, &'static str)>,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: String) -> Self {
        Response {
            status,
            content_type,
            body,
            extra: Vec::new(),
        }
    }

    fn text(status: u16, body: &str) -> Self {
        Response::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }

    /// The bytes on the wire (`head_only` for HEAD).
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n\
             X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n\
             Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// What one request is answered from, taken at the moment it is answered.
pub struct Snapshot<'a> {
    pub site_name: &'a str,
    pub health: Option<&'a Health>,
    pub doc: &'a str,
    pub history: &'a History,
    pub now: SystemTime,
    pub utc_offset_s: i64,
    pub uptime: Duration,
}

/// The answer to an authorised request. Pure.
pub fn route(req: &Request, s: &Snapshot) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        let mut r = Response::text(405, "Only GET and HEAD are served here.");
        r.extra.push(("Allow", "GET, HEAD"));
        return r;
    }
    match req.path.as_str() {
        "/" | "/index.html" => {
            let update = serde_json::from_str::<serde_json::Value>(s.doc)
                .ok()
                .and_then(|d| serde_json::from_value(d["update"].clone()).ok());
            Response::new(
                200,
                "text/html; charset=utf-8",
                page::html(&page::View {
                    site_name: s.site_name,
                    health: s.health,
                    history: s.history,
                    now: s.now,
                    utc_offset_s: s.utc_offset_s,
                    update: update.as_ref(),
                }),
            )
        }
        "/timeline.svg" => Response::new(
            200,
            "image/svg+xml",
            page::timeline_svg(
                s.history,
                s.now
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                s.utc_offset_s,
            ),
        ),
        "/status.json" if s.doc.is_empty() => {
            Response::text(503, "The agent has no state yet; try again in a second.")
        }
        "/status.json" => Response::new(200, "application/json", s.doc.to_owned()),
        "/metrics" => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            page::metrics(s.health, s.history, s.uptime),
        ),
        _ => Response::text(404, "Not found. The page is at /."),
    }
}

/// Checks basic auth; one check at a time, and the last accepted header is remembered
/// (as a digest) so a page that refreshes itself costs no PBKDF2 run.
struct BasicAuthCheck {
    auth: Option<Auth>,
    accepted: Mutex<Option<[u8; 32]>>,
    /// The server's tasks: a PBKDF2 run is one of them, so shutdown waits for it too.
    tasks: TaskTracker,
}

impl BasicAuthCheck {
    async fn allows(&self, header: Option<&Secret>) -> bool {
        let Some(auth) = &self.auth else {
            return true;
        };
        let Some(header) = header else {
            return false;
        };
        let digest: [u8; 32] = sha2::Sha256::digest(header.expose().as_bytes()).into();
        let mut accepted = self.accepted.lock().await;
        if accepted.is_some_and(|a| constant_time_eq(&a, &digest)) {
            return true;
        }
        let Some((user, password)): Option<(String, Secret)> = basic_credentials(header) else {
            return false;
        };
        let hash = auth.hash.clone();
        let password_ok = self
            .tasks
            .spawn_blocking(move || hash.verify(&password))
            .await
            .unwrap_or(false);
        let ok = password_ok & constant_time_eq(user.as_bytes(), auth.user.as_bytes());
        if ok {
            *accepted = Some(digest);
        }
        ok
    }
}

/// Serves until `shutdown`; returns once every connection has ended (at most
/// [`SHUTDOWN_WAIT`] after `shutdown`).
pub async fn serve(
    listener: TcpListener,
    settings: WebSettings,
    sources: Sources,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tasks = TaskTracker::new();
    let auth_check = Arc::new(BasicAuthCheck {
        auth: settings.auth.clone(),
        accepted: Mutex::new(None),
        tasks: tasks.clone(),
    });
    let settings = Arc::new(settings);
    loop {
        let conn = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.cancelled() => break,
        };
        let Ok((stream, _peer)) = conn else {
            // Transient (EMFILE and the like): pause rather than spin.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                () = shutdown.cancelled() => break,
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (auth_check, settings, sources, stop) = (
            auth_check.clone(),
            settings.clone(),
            sources.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::timeout(
                    CONNECTION_BUDGET,
                    connection(stream, &auth_check, &settings, &sources),
                ) => {}
                () = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_WAIT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tasks.len(),
            "status page: connections still open at shutdown"
        );
    }
}

async fn connection(
    mut stream: TcpStream,
    auth_check: &BasicAuthCheck,
    settings: &WebSettings,
    sources: &Sources,
) {
    let (response, head_only) = match read_head(&mut stream).await {
        // Too slow or closed before a full head: nothing worth answering.
        Err(_) | Ok(Parsed::Incomplete) => return,
        Ok(Parsed::Bad) => (Response::text(400, "Bad request."), false),
        Ok(Parsed::Done(req)) => {
            let head_only = req.method == "HEAD";
            if auth_check.allows(req.authorization.as_ref()).await {
                let health = sources.health.borrow().clone();
                let doc = sources.doc.borrow().clone();
                let history = sources.history.borrow().clone();
                let now = SystemTime::now();
                let response = route(
                    &req,
                    &Snapshot {
                        site_name: &settings.site_name,
                        health: health.as_ref(),
                        doc: &doc,
                        history: &history,
                        now,
                        utc_offset_s: local_utc_offset(now),
                        uptime: settings.started.elapsed(),
                    },
                );
                (response, head_only)
            } else {
                let mut r =
                    Response::text(401, "This page needs the user and password set for it.");
                r.extra.push((
                    "WWW-Authenticate",
                    "Basic realm=\"tether\", charset=\"UTF-8\"",
                ));
                (r, head_only)
            }
        }
    };
    let _ = stream.write_all(&response.to_bytes(head_only)).await;
    let _ = stream.shutdown().await;
    // Closing with unread bytes would reset the connection and could destroy the answer
    // before the client reads it (a 400 for an oversized head): drain a little, briefly.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// The box's UTC offset at `now`, from its time zone (the page shows local times).
pub fn local_utc_offset(now: SystemTime) -> i64 {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes only into `tm`, which lives on this stack frame.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm).is_null() } {
        0
    } else {
        tm.tm_gmtoff
    }
}

/// Keeps the history ring: one observation of the health a second, the ring published
/// for the server, written to disk every few minutes and at shutdown.
pub async fn keep_history(
    file: HistoryFile,
    health: watch::Receiver<Option<Health>>,
    history: watch::Sender<Arc<History>>,
    shutdown: CancellationToken,
) {
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut last_save = started;
    let mut seen_up = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = every_second.tick() => {}
        }
        let sample = health.borrow().as_ref().map(Sample::of);
        if let Some(sample) = sample {
            seen_up |= sample.tunnel_up;
            let connecting = !seen_up && started.elapsed() < STARTUP_GRACE;
            if !connecting {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                // Copies the ring only if a request holds the previous one right now.
                history.send_modify(|h| Arc::make_mut(h).observe(now, &sample));
            }
        }
        if last_save.elapsed() >= SAVE_EVERY {
            last_save = Instant::now();
            save(&file, &history).await;
        }
    }
    save(&file, &history).await;
}

async fn save(file: &HistoryFile, history: &watch::Sender<Arc<History>>) {
    let (file, snapshot) = (file.clone(), history.borrow().clone());
    match tokio::task::spawn_blocking(move || file.save(&snapshot)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the status page's history"),
        Err(e) => tracing::warn!(error = %e, "saving the status page's history failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Parsed {
        parse(text.as_bytes())
    }

    #[test]
    fn parses_a_browser_request() {
        let r = req(
            "GET /status.json?x=1 HTTP/1.1\r\nHost: box\r\nAuthorization: Basic YTpi\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            r,
            Parsed::Done(Request {
                method: "GET".into(),
                path: "/status.json".into(),
                authorization: Some(Secret::new("Basic YTpi")),
            })
        );
        assert_eq!(req("GET / HTTP/1.1\r\nHost: box\r\n"), Parsed::Incomplete);
    }

    #[test]
    fn refuses_what_is_not_http() {
        for bad in [
            "\r\n\r\n",
            "GET\r\n\r\n",
            "GET / HTTP/2\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            "GET /\x7f HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(req(bad), Parsed::Bad, "{bad:?}");
        }
        assert_eq!(parse(&[0xff; 10]), Parsed::Incomplete);
        assert_eq!(parse(b"GET /\xff HTTP/1.1\r\n\r\n"), Parsed::Bad);
        assert_eq!(parse(&vec![b'a'; MAX_HEAD]), Parsed::Bad, "too long");
    }

    fn snapshot<'a>(history: &'a History, doc: &'a str) -> Snapshot<'a> {
        Snapshot {
            site_name: "office",
            health: None,
            doc,
            history,
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            utc_offset_s: 0,
            uptime: Duration::from_secs(5),
        }
    }

    #[test]
    fn routes() {
        let h = History::new();
        let s = snapshot(&h, r#"{"verdict":"in_sync"}"#);
        let get = |m: &str, p: &str| {
            route(
                &Request {
                    method: m.into(),
                    path: p.into(),
                    authorization: None,
                },
                &s,
            )
        };
        assert_eq!(get("GET", "/").status, 200);
        assert_eq!(get("GET", "/status.json").body, r#"{"verdict":"in_sync"}"#);
        assert_eq!(get("GET", "/metrics").status, 200);
        assert!(get("HEAD", "/timeline.svg").body.starts_with("<svg"));
        assert_eq!(get("GET", "/../etc/passwd").status, 404);
        let post = get("POST", "/");
        assert_eq!(post.status, 405);
        assert!(
            String::from_utf8(post.to_bytes(false))
                .unwrap()
                .contains("Allow: GET, HEAD\r\n")
        );
        let head = get("HEAD", "/").to_bytes(true);
        let text = String::from_utf8(head).unwrap();
        assert!(text.ends_with("\r\n\r\n") && text.contains("Content-Length: "));
        let empty = snapshot(&h, "");
        let r = route(
            &Request {
                method: "GET".into(),
                path: "/status.json".into(),
                authorization: None,
            },
            &empty,
        );
        assert_eq!(r.status, 503);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
        }
    }
}
