//! End-to-end path probes: a forwarded path works only if the MySQL server's greeting
//! comes back through it. A local forward accepts even when the far end is dead, so an
//! open socket proves nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::TunnelSettings;
use super::machine::AttemptId;
use super::meter::Meter;
use super::session::HubClient;
use crate::events::{ProbePath, TunnelEvent};

/// What the first packet from a MySQL/MariaDB server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub server_version: String,
}

/// Why a probe failed, in words for the reasons list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("no greeting within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before the database greeted")]
    Closed,
    #[error("the database refused the connection: error {errno}: {message}")]
    Refused { errno: u16, message: String },
    #[error("not a MySQL/MariaDB greeting (first byte {0:#04x})")]
    NotMysql(u8),
    #[error("{0}")]
    Io(String),
}

/// Largest greeting accepted; real ones are about 100 bytes.
const MAX_GREETING: usize = 4096;

/// Reads and checks the server greeting, within `timeout`.
pub async fn read_greeting<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Greeting, ProbeError> {
    tokio::time::timeout(timeout, read_greeting_unbounded(stream))
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

async fn read_greeting_unbounded<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Greeting, ProbeError> {
    let mut header = [0u8; 4];
    read_exact(stream, &mut header).await?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    if len == 0 || len > MAX_GREETING {
        return Err(ProbeError::NotMysql(header[0]));
    }
    let mut payload = vec![0u8; len];
    read_exact(stream, &mut payload).await?;
    parse_greeting(&payload)
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), ProbeError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProbeError::Closed),
        Err(e) => Err(ProbeError::Io(e.to_string())),
    }
}

/// Parses a greeting payload (the bytes after the 4-byte packet header).
pub fn parse_greeting(payload: &[u8]) -> Result<Greeting, ProbeError> {
    match payload.first() {
        Some(0x0a) => {
            let rest = &payload[1..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            Ok(Greeting {
                server_version: String::from_utf8_lossy(&rest[..end]).into_owned(),
            })
        }
        Some(0xff) if payload.len() >= 3 => {
            let errno = u16::from_le_bytes([payload[1], payload[2]]);
            let mut msg = &payload[3..];
            // A '#' and five SQLSTATE characters may precede the text.
            if msg.first() == Some(&b'#') && msg.len() >= 6 {
                msg = &msg[6..];
            }
            Err(ProbeError::Refused {
                errno,
                message: String::from_utf8_lossy(msg).into_owned(),
            })
        }
        Some(&b) => Err(ProbeError::NotMysql(b)),
        None => Err(ProbeError::Closed),
    }
}

/// Probes both forwarded paths of the session `session` one after the other, sending each
/// result as it comes (the remote path's last); returns `session` when done.
pub(crate) async fn probe_both(
    handle: Arc<russh::client::Handle<HubClient>>,
    meter: Arc<Meter>,
    settings: Arc<TunnelSettings>,
    local_addr: Option<SocketAddr>,
    out: mpsc::Sender<(AttemptId, TunnelEvent)>,
    session: AttemptId,
) -> AttemptId {
    let path = ProbePath::HubDbThroughLocalForward;
    let (started, before) = (Instant::now(), Traffic::of(&meter));
    let local = match local_addr {
        Some(addr) => probe_local(addr, settings.probe_timeout).await,
        None => Err(PathFailure::Broken(
            "the local forward has no address".into(),
        )),
    };
    let busy = before.busy_until(Traffic::of(&meter));
    let _ = out
        .send((session, probe_event(path, local, started.elapsed(), busy)))
        .await;
    let path = ProbePath::OfficeDbThroughRemoteForward;
    let (started, before) = (Instant::now(), Traffic::of(&meter));
    let remote = probe_remote(&handle, &settings).await;
    let busy = before.busy_until(Traffic::of(&meter));
    let _ = out
        .send((session, probe_event(path, remote, started.elapsed(), busy)))
        .await;
    session
}

/// Bytes through the SSH socket at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Traffic {
    rx: u64,
    tx: u64,
}

/// Sent bytes beyond this during a probe mean our own bulk data queued ahead of it.
const BUSY_TX_BYTES: u64 = 16 * 1024;

impl Traffic {
    fn of(meter: &Meter) -> Self {
        Traffic {
            rx: meter.rx_bytes(),
            tx: meter.tx_bytes(),
        }
    }

    /// Whether the line carried other traffic between `self` and `later`: data from the
    /// hub, or a queue of ours (keepalives and the probe itself are far below the
    /// threshold).
    fn busy_until(self, later: Traffic) -> bool {
        later.rx > self.rx || later.tx > self.tx + BUSY_TX_BYTES
    }
}

/// Why a probe did not read a greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathFailure {
    /// No answer in time: a dead path, or one queued behind bulk data on a slow link.
    Slow(String),
    /// Refused, closed or garbled: the path is broken.
    Broken(String),
}

impl PathFailure {
    /// The same failure, its words prefixed with which path it was.
    fn on(self, path: &str) -> Self {
        match self {
            PathFailure::Slow(e) => PathFailure::Slow(format!("{path}: {e}")),
            PathFailure::Broken(e) => PathFailure::Broken(format!("{path}: {e}")),
        }
    }
}

impl From<ProbeError> for PathFailure {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Timeout(_) => PathFailure::Slow(e.to_string()),
            other => PathFailure::Broken(other.to_string()),
        }
    }
}

/// A slow probe while the line carried other traffic (replication catching up, in
/// either direction) only says the line is busy: that is not evidence of a broken path.
fn probe_event(
    path: ProbePath,
    res: Result<Greeting, PathFailure>,
    rtt: Duration,
    link_busy: bool,
) -> TunnelEvent {
    match res {
        Ok(_) => TunnelEvent::ProbeOk { path, rtt },
        Err(PathFailure::Slow(_)) if link_busy => TunnelEvent::ProbeBusy { path },
        Err(PathFailure::Slow(error) | PathFailure::Broken(error)) => {
            TunnelEvent::ProbeFailed { path, error }
        }
    }
}

/// Through the agent's own local-forward listener to the hub DB.
async fn probe_local(addr: SocketAddr, timeout: Duration) -> Result<Greeting, PathFailure> {
    let deadline = Instant::now() + timeout;
    let mut tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            PathFailure::Slow(format!(
                "local forward {addr} did not accept within {timeout:?}"
            ))
        })?
        .map_err(|e| PathFailure::Broken(format!("local forward {addr}: {e}")))?;
    read_greeting(&mut tcp, deadline.saturating_duration_since(Instant::now()))
        .await
        .map_err(|e| PathFailure::from(e).on("hub database through the local forward"))
}

/// Asks the hub to connect to its own end of the remote forward, which comes back over
/// this session to the office DB: the exact path the hub's replication uses.
async fn probe_remote(
    handle: &russh::client::Handle<HubClient>,
    settings: &TunnelSettings,
) -> Result<Greeting, PathFailure> {
    let listen = &settings.remote_listen;
    let deadline = Instant::now() + settings.probe_timeout;
    let channel = tokio::time::timeout_at(
        deadline,
        handle.channel_open_direct_tcpip(
            listen.host.clone(),
            u32::from(listen.port),
            "127.0.0.1",
            0,
        ),
    )
    .await
    .map_err(|_| {
        PathFailure::Slow(format!(
            "the hub did not open {listen} within {:?}",
            settings.probe_timeout
        ))
    })?
    .map_err(|e| PathFailure::Broken(format!("the hub could not open {listen}: {e}")))?;
    let mut stream = channel.into_stream();
    let res = read_greeting(
        &mut stream,
        deadline.saturating_duration_since(Instant::now()),
    )
    .await
    .map_err(|e| PathFailure::from(e).on("office database through the remote forward"));
    drop(stream);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut packet = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, 0];
        packet.extend_from_slice(payload);
        packet
    }

    #[test]
    fn a_mysql_greeting_gives_its_version_even_without_the_terminator() {
        let mut payload = vec![0x0a];
        payload.extend_from_slice(b"8.0.36\0");
        payload.extend_from_slice(&[0; 40]);
        assert_eq!(parse_greeting(&payload).unwrap().server_version, "8.0.36");
        assert_eq!(
            parse_greeting(b"\x0a8.4.0").unwrap().server_version,
            "8.4.0"
        );
        assert_eq!(parse_greeting(b"\x0a").unwrap().server_version, "");
    }

    #[test]
    fn an_error_packet_without_sqlstate_or_text_is_still_a_refusal() {
        // 1040 "Too many connections", as old servers send it: no '#' marker.
        let mut payload = vec![0xff, 0x10, 0x04];
        payload.extend_from_slice(b"Too many connections");
        assert_eq!(
            parse_greeting(&payload),
            Err(ProbeError::Refused {
                errno: 1040,
                message: "Too many connections".into()
            })
        );
        let mut payload = vec![0xff, 0x10, 0x04];
        payload.extend_from_slice(b"#08004Too many connections");
        assert_eq!(
            parse_greeting(&payload),
            Err(ProbeError::Refused {
                errno: 1040,
                message: "Too many connections".into()
            })
        );
        // Too short to hold an error number: not a greeting at all.
        assert_eq!(
            parse_greeting(&[0xff, 0x10]),
            Err(ProbeError::NotMysql(0xff))
        );
        assert_eq!(parse_greeting(&[]), Err(ProbeError::Closed));
    }

    #[tokio::test]
    async fn lengths_outside_a_greetings_are_refused_before_reading_the_body() {
        let empty = [0u8, 0, 0, 0];
        assert_eq!(
            read_greeting(&mut &empty[..], Duration::from_secs(1)).await,
            Err(ProbeError::NotMysql(0))
        );
        // 16 MiB announced: an HTTP or TLS server, never a MySQL greeting.
        let huge = [0xff, 0xff, 0xff, 0];
        assert!(matches!(
            read_greeting(&mut &huge[..], Duration::from_secs(1)).await,
            Err(ProbeError::NotMysql(0xff))
        ));
        // A body cut short is a closed connection.
        let mut cut = packet(b"\x0a10.11.6-MariaDB\0");
        cut.truncate(10);
        assert_eq!(
            read_greeting(&mut &cut[..], Duration::from_secs(1)).await,
            Err(ProbeError::Closed)
        );
        // The largest accepted length goes through.
        let mut big = vec![0x0a];
        big.extend_from_slice(b"5.7.44\0");
        big.resize(MAX_GREETING, 0);
        assert_eq!(
            read_greeting(&mut &packet(&big)[..], Duration::from_secs(1))
                .await
                .unwrap()
                .server_version,
            "5.7.44"
        );
    }

    #[test]
    fn a_slow_probe_on_a_busy_line_is_busy_not_failed() {
        let path = ProbePath::OfficeDbThroughRemoteForward;
        let slow = || Err(PathFailure::Slow("no greeting within 5s".into()));
        let broken = || Err(PathFailure::Broken("connection closed".into()));
        let rtt = Duration::from_millis(40);
        assert_eq!(
            probe_event(path, slow(), rtt, true),
            TunnelEvent::ProbeBusy { path }
        );
        assert_eq!(
            probe_event(path, slow(), rtt, false),
            TunnelEvent::ProbeFailed {
                path,
                error: "no greeting within 5s".into()
            }
        );
        // A broken path is broken however busy the line.
        assert_eq!(
            probe_event(path, broken(), rtt, true),
            TunnelEvent::ProbeFailed {
                path,
                error: "connection closed".into()
            }
        );
        let greeting = Greeting {
            server_version: "10.11.6".into(),
        };
        assert_eq!(
            probe_event(path, Ok(greeting), rtt, true),
            TunnelEvent::ProbeOk { path, rtt }
        );
    }

    #[test]
    fn the_line_is_busy_with_any_data_from_the_hub_or_a_queue_of_ours() {
        let before = Traffic { rx: 1000, tx: 5000 };
        assert!(!before.busy_until(before));
        assert!(before.busy_until(Traffic { rx: 1001, tx: 5000 }));
        // Keepalives and the probe's own packets are not a queue.
        assert!(!before.busy_until(Traffic {
            rx: 1000,
            tx: 5000 + BUSY_TX_BYTES
        }));
        assert!(before.busy_until(Traffic {
            rx: 1000,
            tx: 5001 + BUSY_TX_BYTES
        }));
    }

    #[test]
    fn a_timeout_is_slow_and_every_other_probe_error_is_broken() {
        assert_eq!(
            PathFailure::from(ProbeError::Timeout(Duration::from_secs(5))).on("hub database"),
            PathFailure::Slow("hub database: no greeting within 5s".into())
        );
        for e in [
            ProbeError::Closed,
            ProbeError::NotMysql(0x53),
            ProbeError::Io("reset".into()),
            ProbeError::Refused {
                errno: 1129,
                message: "blocked".into(),
            },
        ] {
            assert!(
                matches!(PathFailure::from(e.clone()), PathFailure::Broken(_)),
                "{e:?}"
            );
        }
    }

    #[tokio::test]
    async fn reads_a_mariadb_greeting() {
        let mut payload = vec![0x0a];
        payload.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
        payload.extend_from_slice(&[1, 2, 3, 4]);
        let mut packet = vec![payload.len() as u8, 0, 0, 0];
        packet.extend_from_slice(&payload);
        let g = read_greeting(&mut &packet[..], Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(g.server_version, "5.5.5-10.11.6-MariaDB-0+deb12u1");
    }

    #[test]
    fn error_packet_is_a_refusal_with_the_servers_words() {
        let mut payload = vec![0xff, 0x69, 0x04];
        payload.extend_from_slice(b"Host '10.0.0.5' is blocked");
        let err = parse_greeting(&payload).unwrap_err();
        assert_eq!(
            err,
            ProbeError::Refused {
                errno: 1129,
                message: "Host '10.0.0.5' is blocked".into()
            }
        );
    }

    #[tokio::test]
    async fn eof_and_garbage_are_failures() {
        assert_eq!(
            read_greeting(&mut &b""[..], Duration::from_secs(1)).await,
            Err(ProbeError::Closed)
        );
        assert!(matches!(
            read_greeting(&mut &b"SSH-2.0-OpenSSH_9.2\r\n"[..], Duration::from_secs(1)).await,
            Err(ProbeError::NotMysql(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_times_out() {
        let (mut a, _b) = tokio::io::duplex(64);
        let err = read_greeting(&mut a, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(err, ProbeError::Timeout(Duration::from_secs(3)));
    }
}
