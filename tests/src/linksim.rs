//! The link simulator: a TCP proxy standing for the office's slow, flaky line (this kernel
//! has no netem). It sits between the agent and the hub's sshd and can throttle, delay,
//! cut and silently blackhole traffic, driven by method calls or by line commands on a
//! Unix control socket (`cut`, `blackhole`, `heal`, `rate BYTES_PER_S`, `delay MS`,
//! `status`; each answered `ok`, the status JSON, or `error: ...`).
//!
//! Semantics, one link shared by every connection through it, like a real line:
//! - `rate` limits each direction of the whole link (a shared schedule), `0`/`off` lifts it;
//! - `delay` adds that much ROUND-TRIP latency, half each way, after serialisation;
//! - the link holds at most `queue_bytes` per direction per connection in flight (a
//!   modem's buffer) and otherwise stops reading, so TCP backpressure reaches the sender.
//!   On a 16 KB/s link a 64 KiB queue is 4 s of latency: keepalive timing must survive it;
//! - `blackhole` keeps every connection open and drops every byte both ways (new
//!   connections too); bytes dropped stay lost after `heal`;
//! - `cut` resets every connection (RST) and resets new ones until `heal`.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the link does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Blackhole,
    Cut,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Blackhole => "blackhole",
            Mode::Cut => "cut",
        }
    }
}

/// A control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Cut,
    Blackhole,
    Heal,
    /// Bytes per second per direction; `None` is unlimited.
    Rate(Option<u64>),
    /// Added round-trip latency in milliseconds.
    Delay(u64),
    Status,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Cut => f.write_str("cut"),
            Command::Blackhole => f.write_str("blackhole"),
            Command::Heal => f.write_str("heal"),
            Command::Rate(None) => f.write_str("rate off"),
            Command::Rate(Some(n)) => write!(f, "rate {n}"),
            Command::Delay(ms) => write!(f, "delay {ms}"),
            Command::Status => f.write_str("status"),
        }
    }
}

/// Parses one control line. Pure, so it can be property-tested and fuzzed.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let Some(verb) = words.next() else {
        return Err("empty command (try cut, blackhole, heal, rate N, delay MS, status)".into());
    };
    let arg = words.next();
    if words.next().is_some() {
        return Err(format!("`{verb}` takes at most one argument"));
    }
    let no_arg = |c: Command| match arg {
        None => Ok(c),
        Some(a) => Err(format!("`{verb}` takes no argument (got `{a}`)")),
    };
    match verb {
        "cut" => no_arg(Command::Cut),
        "blackhole" => no_arg(Command::Blackhole),
        "heal" => no_arg(Command::Heal),
        "status" => no_arg(Command::Status),
        "rate" => match arg {
            None => Err("`rate` needs BYTES_PER_S (or 0/off for unlimited)".into()),
            Some("off") | Some("0") => Ok(Command::Rate(None)),
            Some(n) => n
                .parse::<u64>()
                // Any spelling of zero ("00", "+0") means unlimited, like "0".
                .map(|n| Command::Rate((n > 0).then_some(n)))
                .map_err(|_| format!("`rate {n}`: BYTES_PER_S must be a whole number")),
        },
        "delay" => match arg {
            None => Err("`delay` needs MS".into()),
            Some(n) => n
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms <= 60_000)
                .map(Command::Delay)
                .ok_or_else(|| format!("`delay {n}`: MS must be a whole number up to 60000")),
        },
        other => Err(format!(
            "unknown command `{other}` (try cut, blackhole, heal, rate N, delay MS, status)"
        )),
    }
}

/// Fuzz target for the control protocol (cargo-fuzz in `fuzz/`, `cargo xtask fuzz`, and
/// the property tests below): any line parses or is refused with a one-line reply, and
/// what parses prints back to the same command.
pub fn fuzz_control(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    match parse_command(&line) {
        Ok(c) => assert_eq!(parse_command(&c.to_string()), Ok(c), "{line:?}"),
        Err(why) => assert!(!why.is_empty() && !why.contains('\n'), "{why:?}"),
    }
}

/// Settings at start.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub rate: Option<u64>,
    pub delay: Duration,
    pub control_socket: Option<PathBuf>,
    pub queue_bytes: usize,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            rate: None,
            delay: Duration::ZERO,
            control_socket: None,
            queue_bytes: 64 * 1024,
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub mode: &'static str,
    pub rate: Option<u64>,
    pub delay_ms: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Reads from the sending side, each roughly one write of the sender's.
    pub reads_up: u64,
    pub reads_down: u64,
    pub dropped: u64,
    pub connections: u64,
}

/// A departure schedule shared by every connection in one direction.
#[derive(Debug)]
struct Line {
    next_free: Mutex<Instant>,
}

impl Line {
    /// When a chunk of `len` bytes has finished crossing the line.
    async fn reserve(&self, len: usize, rate: Option<u64>) -> Instant {
        let now = Instant::now();
        let Some(rate) = rate.filter(|r| *r > 0) else {
            return now;
        };
        let mut next = self.next_free.lock().await;
        let start = (*next).max(now);
        let done = start + Duration::from_secs_f64(len as f64 / rate as f64);
        *next = done;
        done
    }
}

#[derive(Debug)]
struct Shared {
    mode: watch::Sender<Mode>,
    rate: AtomicU64,
    delay_ms: AtomicU64,
    queue_bytes: usize,
    up: Line,
    down: Line,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    reads_up: AtomicU64,
    reads_down: AtomicU64,
    dropped: AtomicU64,
    connections: AtomicU64,
}

impl Shared {
    fn rate(&self) -> Option<u64> {
        match self.rate.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            mode: self.mode.borrow().name(),
            rate: self.rate(),
            delay_ms: self.delay_ms.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            reads_up: self.reads_up.load(Ordering::Relaxed),
            reads_down: self.reads_down.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }

    fn apply(&self, cmd: Command) -> String {
        match cmd {
            Command::Cut => {
                self.mode.send_replace(Mode::Cut);
            }
            Command::Blackhole => {
                self.mode.send_replace(Mode::Blackhole);
            }
            Command::Heal => {
                self.mode.send_replace(Mode::Normal);
            }
            Command::Rate(r) => self.rate.store(r.unwrap_or(0), Ordering::Relaxed),
            Command::Delay(ms) => self.delay_ms.store(ms, Ordering::Relaxed),
            Command::Status => {
                return serde_json::to_string(&self.stats())
                    .unwrap_or_else(|e| format!("error: {e}"));
            }
        }
        "ok".into()
    }
}

/// A running link simulator; dropping it stops everything.
#[derive(Debug)]
pub struct LinkSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    control: Option<PathBuf>,
}

impl LinkSim {
    /// Starts proxying `listener`'s connections to `upstream`.
    pub async fn start(
        listener: TcpListener,
        upstream: SocketAddr,
        opts: LinkOptions,
    ) -> Result<LinkSim> {
        let addr = listener.local_addr()?;
        // Small kernel buffers: the link's queue is `queue_bytes`, not megabytes of
        // hidden socket buffer that would make a throttled link lie about its latency.
        set_rcvbuf(&listener, KERNEL_BUF);
        let shared = Arc::new(Shared {
            mode: watch::channel(Mode::Normal).0,
            rate: AtomicU64::new(opts.rate.unwrap_or(0)),
            delay_ms: AtomicU64::new(opts.delay.as_millis() as u64),
            queue_bytes: opts.queue_bytes.max(1024),
            up: Line {
                next_free: Mutex::new(Instant::now()),
            },
            down: Line {
                next_free: Mutex::new(Instant::now()),
            },
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            reads_up: AtomicU64::new(0),
            reads_down: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
        if let Some(path) = &opts.control_socket {
            let _ = std::fs::remove_file(path);
            let control = UnixListener::bind(path)
                .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            tokio::spawn(serve_control(control, shared.clone(), shutdown.clone()));
        }
        tokio::spawn(accept_loop(
            listener,
            upstream,
            shared.clone(),
            shutdown.clone(),
        ));
        Ok(LinkSim {
            addr,
            shared,
            shutdown,
            control: opts.control_socket,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cut(&self) {
        self.shared.apply(Command::Cut);
    }

    pub fn blackhole(&self) {
        self.shared.apply(Command::Blackhole);
    }

    pub fn heal(&self) {
        self.shared.apply(Command::Heal);
    }

    pub fn set_rate(&self, rate: Option<u64>) {
        self.shared.apply(Command::Rate(rate));
    }

    pub fn set_delay(&self, delay: Duration) {
        self.shared.apply(Command::Delay(delay.as_millis() as u64));
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    pub fn shutdown(&self) {
        self.shared.mode.send_replace(Mode::Cut);
        self.shutdown.cancel();
    }
}

impl Drop for LinkSim {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(p) = &self.control {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn serve_control(listener: UnixListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            () = shutdown.cancelled() => return,
        };
        let Ok((stream, _)) = conn else { continue };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            loop {
                let line = tokio::select! {
                    l = lines.next_line() => l,
                    () = shutdown.cancelled() => return,
                };
                let Ok(Some(line)) = line else { return };
                let reply = match parse_command(&line) {
                    Ok(cmd) => shared.apply(cmd),
                    Err(e) => format!("error: {e}"),
                };
                if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            () = shutdown.cancelled() => return,
        };
        let Ok((client, _)) = conn else { continue };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        if *shared.mode.borrow() == Mode::Cut {
            reset(&client);
            drop(client);
            continue;
        }
        tokio::spawn(connection(
            client,
            upstream,
            shared.clone(),
            shutdown.clone(),
        ));
    }
}

/// SO_LINGER 0: the close that follows sends RST instead of FIN.
fn reset(stream: &impl AsFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live socket with a pointer to a live struct.
    unsafe {
        libc::setsockopt(
            stream.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Receive buffer for the proxy's sockets (the kernel doubles it).
const KERNEL_BUF: libc::c_int = 16 * 1024;

fn set_rcvbuf(socket: &impl AsFd, bytes: libc::c_int) {
    // SAFETY: setsockopt on a live socket with a pointer to a live c_int.
    unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

async fn connect_upstream(upstream: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if upstream.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_recv_buffer_size(KERNEL_BUF as u32)?;
    socket.connect(upstream).await
}

fn dup(stream: &TcpStream) -> Option<OwnedFd> {
    stream.as_fd().try_clone_to_owned().ok()
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let Ok(Ok(server)) =
        tokio::time::timeout(Duration::from_secs(5), connect_upstream(upstream)).await
    else {
        reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_fd, server_fd) = (dup(&client), dup(&server));
    let mut mode = shared.mode.subscribe();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // A FIN that arrives while the link is blackholed is lost like any other byte: the far
    // side keeps its half of the connection until its own keepalives give up on it.
    let (up_lost, down_lost) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut up = tokio::spawn(direction(cr, sw, shared.clone(), true, up_lost.clone()));
    let mut down = tokio::spawn(direction(sr, cw, shared.clone(), false, down_lost.clone()));
    let (mut up_done, mut down_done) = (false, false);
    loop {
        tokio::select! {
            _ = &mut up, if !up_done => up_done = true,
            _ = &mut down, if !down_done => down_done = true,
            () = shutdown.cancelled() => break,
            r = mode.changed() => {
                if r.is_err() || *mode.borrow() == Mode::Cut {
                    break;
                }
                continue;
            }
        }
        if (up_done || up_lost.load(Ordering::Relaxed))
            && (down_done || down_lost.load(Ordering::Relaxed))
        {
            up.abort();
            down.abort();
            return;
        }
    }
    // Cut: RST both ways, whatever was in flight.
    if let Some(fd) = &client_fd {
        reset(fd);
    }
    if let Some(fd) = &server_fd {
        reset(fd);
    }
    up.abort();
    down.abort();
    // A JoinHandle must not be polled again once it has completed.
    if !up_done {
        let _ = up.await;
    }
    if !down_done {
        let _ = down.await;
    }
}

/// One direction of one connection: read, schedule on the shared line, deliver in order.
async fn direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
    up: bool,
    fin_lost: Arc<AtomicBool>,
) {
    let chunk = 4096usize;
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>((shared.queue_bytes / chunk).max(1));
    let reader_shared = shared.clone();
    let reader = async move {
        let mut buf = vec![0u8; chunk];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    if *reader_shared.mode.borrow() != Mode::Normal {
                        fin_lost.store(true, Ordering::Relaxed);
                        // Keep the channel (and so the far side's socket) open.
                        std::future::pending::<()>().await;
                    }
                    return;
                }
                Ok(n) => n,
            };
            let s = &reader_shared;
            if *s.mode.borrow() != Mode::Normal {
                s.dropped.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            if up { &s.reads_up } else { &s.reads_down }.fetch_add(1, Ordering::Relaxed);
            let line = if up { &s.up } else { &s.down };
            let done = line.reserve(n, s.rate()).await;
            let half_rtt = Duration::from_millis(s.delay_ms.load(Ordering::Relaxed) / 2);
            if tx.send((done + half_rtt, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if *shared.mode.borrow() != Mode::Normal {
                shared
                    .dropped
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                continue;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
            let counter = if up {
                &shared.bytes_up
            } else {
                &shared.bytes_down
            };
            counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_commands() {
        assert_eq!(parse_command("cut"), Ok(Command::Cut));
        assert_eq!(parse_command(" blackhole "), Ok(Command::Blackhole));
        assert_eq!(parse_command("heal"), Ok(Command::Heal));
        assert_eq!(parse_command("rate 16000"), Ok(Command::Rate(Some(16000))));
        assert_eq!(parse_command("rate 0"), Ok(Command::Rate(None)));
        assert_eq!(parse_command("delay 300"), Ok(Command::Delay(300)));
        assert!(
            parse_command("rate fast")
                .unwrap_err()
                .contains("whole number")
        );
        assert!(parse_command("delay").unwrap_err().contains("needs MS"));
        assert!(
            parse_command("explode")
                .unwrap_err()
                .contains("unknown command")
        );
        assert!(parse_command("cut now").is_err());
        assert_eq!(parse_command("rate 00"), Ok(Command::Rate(None)));
        fuzz_control(b"rate 00");
    }

    proptest! {
        #[test]
        fn any_line_parses_or_errors_without_panicking(s in ".*") {
            fuzz_control(s.as_bytes());
        }

        #[test]
        fn any_bytes_hold_the_control_properties(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            fuzz_control(&data);
        }

        /// Near-misses of real commands: a verb, odd spacing, an argument of any shape.
        #[test]
        fn near_miss_commands(
            verb in prop_oneof![Just("cut"), Just("blackhole"), Just("heal"), Just("rate"), Just("delay"), Just("status"), Just("CUT"), Just("")],
            sep in "[ \t]{0,3}",
            arg in proptest::option::of("[-+0-9a-z.]{0,22}"),
            extra in proptest::option::of("[ -~]{0,5}"),
        ) {
            let mut line = format!("{sep}{verb}");
            if let Some(a) = arg { line.push(' '); line.push_str(&a); }
            if let Some(e) = extra { line.push(' '); line.push_str(&e); }
            fuzz_control(line.as_bytes());
        }

        #[test]
        fn valid_commands_round_trip(n in 1u64..10_000_000, ms in 0u64..60_000) {
            for c in [Command::Cut, Command::Blackhole, Command::Heal, Command::Status, Command::Rate(Some(n)), Command::Rate(None), Command::Delay(ms)] {
                prop_assert_eq!(parse_command(&c.to_string()), Ok(c));
            }
        }
    }
}
