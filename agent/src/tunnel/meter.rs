//! The SSH connection's socket, wrapped so the supervisor can see when bytes last arrived
//! and can end the connection from outside even when the SSH session task is stuck in a
//! write that will never finish (a blackholed link with a full send buffer).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Counters shared between the wrapped socket and the supervisor.
#[derive(Debug)]
pub struct Meter {
    origin: Instant,
    last_rx_ms: AtomicU64,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
}

impl Meter {
    fn new() -> Arc<Self> {
        Arc::new(Meter {
            origin: Instant::now(),
            last_rx_ms: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
        })
    }

    /// When the last byte arrived from the hub (the connect time if none has yet).
    pub fn last_rx(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_rx_ms.load(Ordering::Relaxed))
    }

    pub fn rx_bytes(&self) -> u64 {
        self.rx_bytes.load(Ordering::Relaxed)
    }

    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes.load(Ordering::Relaxed)
    }

    fn saw_rx(&self, n: usize) {
        self.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        let ms = Instant::now()
            .saturating_duration_since(self.origin)
            .as_millis();
        self.last_rx_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Ends the connection from outside: `shutdown(2)` on a duplicate of the socket wakes any
/// task blocked on it with EOF or EPIPE, whatever state the SSH session is in.
#[derive(Debug)]
pub struct Killer(OwnedFd);

impl Killer {
    pub fn kill(&self) {
        // SAFETY: shutdown(2) on a descriptor this value owns. It fails harmlessly
        // if the socket is already shut down, which is all we want anyway.
        unsafe {
            libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&self.0), libc::SHUT_RDWR);
        }
    }
}

/// A TCP stream that records traffic in a [`Meter`].
#[derive(Debug)]
pub struct MeteredStream {
    inner: TcpStream,
    meter: Arc<Meter>,
    /// Bytes read from the socket but not yet asked for: `ahead_buf[ahead]`.
    ahead_buf: Box<[u8]>,
    ahead: std::ops::Range<usize>,
}

/// Unsent bytes the kernel may hold for the SSH socket. On a 16 KB/s office link a deep
/// kernel queue delays keepalive replies behind bulk data and raises false alarms; this
/// keeps that queue to about two seconds there while loopback throughput is unaffected.
const NOTSENT_LOWAT: libc::c_int = 32 * 1024;

impl MeteredStream {
    /// Wraps a connected socket: sets TCP_NODELAY and a small unsent-data watermark.
    pub fn new(inner: TcpStream) -> io::Result<(Self, Arc<Meter>, Killer)> {
        inner.set_nodelay(true)?;
        set_tcp_option(&inner, libc::TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)?;
        let killer = Killer(inner.as_fd().try_clone_to_owned()?);
        let meter = Meter::new();
        Ok((
            MeteredStream {
                inner,
                meter: meter.clone(),
                ahead_buf: vec![0; READ_AHEAD].into_boxed_slice(),
                ahead: 0..0,
            },
            meter,
            killer,
        ))
    }
}

fn set_tcp_option(stream: &TcpStream, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain setsockopt on a socket we own, with a pointer to a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl AsyncRead for MeteredStream {
    /// The SSH reader asks for each packet's first block and then its rest: small reads
    /// are served from a read-ahead buffer, so a stream of packets costs one system call
    /// per buffer rather than two per packet. Large reads go straight to the socket.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if reads_ahead(this.ahead.len(), buf.remaining()) {
            let mut ahead = ReadBuf::new(&mut this.ahead_buf[..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut ahead) {
                Poll::Ready(Ok(())) => {
                    let n = ahead.filled().len();
                    if n == 0 {
                        // End of stream.
                        return Poll::Ready(Ok(()));
                    }
                    this.saw_rx(n);
                    this.ahead = 0..n;
                }
                other => return other,
            }
        }
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            let from = this.ahead.start;
            buf.put_slice(&this.ahead_buf[from..from + n]);
            this.ahead.start += n;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.saw_rx(n);
        }
        res
    }
}

impl MeteredStream {
    /// Counts what arrived and, when it came in bulk, asks the kernel to acknowledge at
    /// once. The agent answers bulk data with small writes of its own (window adjustments,
    /// sent without delay), and a receiver that writes soon after each arrival is taken
    /// for an interactive one whose ACKs may wait to ride on its replies. The sender then
    /// sees its data acknowledged late and in clumps: on the hub that cost sshd 7-26% more
    /// CPU a GB sent to the agent than to `ssh`, and the download that much speed
    /// (sshd is the bottleneck there). Small reads, as on a slow office link, keep the
    /// kernel's default and its fewer ACKs.
    fn saw_rx(&self, n: usize) {
        self.meter.saw_rx(n);
        if wants_quick_ack(n) {
            // Best effort: a socket that refuses it is acknowledged as before.
            let _ = set_tcp_option(&self.inner, libc::TCP_QUICKACK, 1);
        }
    }
}

/// A read at least this large is bulk arriving fast; a 128 kbit/s link's reads are a
/// segment or two. In a traced loopback download 8% of reads were under 16 KiB and a third
/// 16-64 KiB. Measured in the bench's download, sshd's CPU a GB against `ssh`'s: +7-11%
/// without quick ACKs, +2-7% with them from 64 KiB reads, -4-7% from 16 KiB reads (the
/// same as on every read).
const QUICKACK_READ: usize = 16 * 1024;

/// Size of the read-ahead buffer: several full-size SSH packets a read, as OpenSSH reads
/// (fewer, larger reads also cost the sending sshd less CPU a byte: measured in the bench).
const READ_AHEAD: usize = 256 * 1024;

/// Whether a read of `n` bytes from the socket is bulk arriving fast, which asks the
/// kernel to acknowledge at once (see `MeteredStream::saw_rx`).
fn wants_quick_ack(n: usize) -> bool {
    n >= QUICKACK_READ
}

/// Whether a read asking for `wanted` bytes, with `buffered` bytes already read ahead,
/// fills the read-ahead buffer first: only when it is empty and the ask is smaller than
/// it (a larger ask goes straight to the socket, without a copy).
fn reads_ahead(buffered: usize, wanted: usize) -> bool {
    buffered == 0 && wanted < READ_AHEAD
}

/// How long a live session may hear nothing before it is taken for dead: russh gives up
/// after `keepalive_max` unanswered keepalives, one interval apart; one more interval of
/// silence beyond that means the session task itself is stuck (blocked writing into a
/// dead link) and never noticed.
pub(crate) fn silence_limit(keepalive_interval: Duration, keepalive_max: u32) -> Duration {
    keepalive_interval.saturating_mul(keepalive_max.saturating_add(2))
}

impl AsyncWrite for MeteredStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.meter.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            self.meter.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn quick_acks_start_at_bulk_sized_reads() {
        // A 128 kbit/s link's reads are a segment or two.
        assert!(!wants_quick_ack(1448));
        assert!(!wants_quick_ack(2 * 1448));
        assert!(!wants_quick_ack(QUICKACK_READ - 1));
        assert!(wants_quick_ack(QUICKACK_READ));
        assert!(wants_quick_ack(READ_AHEAD));
    }

    #[test]
    fn small_asks_fill_the_read_ahead_and_large_ones_bypass_it() {
        // The SSH reader's first block of a packet, then its rest.
        assert!(reads_ahead(0, 16));
        assert!(reads_ahead(0, 32 * 1024));
        // Data already read ahead is served first, whatever the ask.
        assert!(!reads_ahead(5, 16));
        assert!(!reads_ahead(5, 1 << 20));
        // An ask as large as the buffer gains nothing from a copy.
        assert!(!reads_ahead(0, READ_AHEAD));
    }

    #[test]
    fn a_session_is_silent_one_interval_after_russh_would_have_given_up() {
        assert_eq!(
            silence_limit(Duration::from_secs(2), 3),
            Duration::from_secs(10)
        );
        assert_eq!(
            silence_limit(Duration::from_secs(2), 0),
            Duration::from_secs(4)
        );
        assert_eq!(
            silence_limit(Duration::from_secs(1), u32::MAX),
            Duration::from_secs(u64::from(u32::MAX))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_meter_remembers_when_bytes_last_arrived() {
        let meter = Meter::new();
        let t0 = Instant::now();
        assert_eq!(meter.last_rx(), t0, "the connect time before any byte");
        tokio::time::advance(Duration::from_millis(1500)).await;
        meter.saw_rx(100);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(meter.last_rx(), t0 + Duration::from_millis(1500));
        assert_eq!(Instant::now() - meter.last_rx(), Duration::from_secs(3));
        meter.saw_rx(20);
        assert_eq!(meter.rx_bytes(), 120);
        assert_eq!(meter.last_rx(), Instant::now());
    }

    #[tokio::test]
    async fn counts_and_kill_wakes_a_blocked_reader() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (mut stream, meter, killer) = MeteredStream::new(client).unwrap();
        server.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        stream.write_all(b"abc").await.unwrap();
        assert_eq!(meter.rx_bytes(), 5);
        // Small reads come from the read-ahead, in order, whatever the sizes.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        server.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut step = 1;
        while got.len() < data.len() {
            let mut chunk = vec![0u8; step.min(data.len() - got.len())];
            stream.read_exact(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk);
            step = step * 7 % 70_001 + 1;
        }
        assert_eq!(got, data);
        assert_eq!(meter.rx_bytes(), 5 + data.len() as u64);
        assert_eq!(meter.tx_bytes(), 3);
        let reader = tokio::spawn(async move {
            let mut b = [0u8; 1];
            stream.read(&mut b).await
        });
        killer.kill();
        let res = tokio::time::timeout(std::time::Duration::from_secs(2), reader)
            .await
            .expect("kill must wake the reader")
            .unwrap();
        assert!(matches!(res, Ok(0) | Err(_)));
    }
}
