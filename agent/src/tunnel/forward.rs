//! Copies one forwarded connection between a local TCP socket and an SSH channel.
//!
//! Upload (socket to channel) has true backpressure: it waits for SSH window credit.
//! Download (channel to socket) has none from SSH: russh re-opens a channel's window as
//! data arrives, not as the local reader takes it. So download keeps up to
//! [`DOWNLOAD_CAP`] for a local reader that is behind, and beyond that stops taking
//! messages from the channel until the reader takes something. That pauses the session
//! loop (it waits on this channel's bounded queue), which pushes back on the hub through
//! TCP: a reader that is only slower than the sender (a busy machine) keeps its data and
//! sets the pace. The pause is bounded: a reader that takes nothing for [`STALL_AFTER`]
//! has stopped, and its connection is closed so the other forwards and the keepalives
//! go on.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::client::Msg;
use russh::{ChannelMsg, ChannelOpenFailure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Endpoint, LiveHandle, TunnelSettings};

/// Chunk read from the local socket per SSH data message batch.
const COPY_BUF: usize = 64 * 1024;
/// Download bytes held for a local reader that is behind before the channel is paused:
/// two SSH windows. On the office link the reader is always faster than the line.
pub const DOWNLOAD_CAP: usize = 4 * 1024 * 1024;
/// A local reader that takes nothing for this long while the channel is paused has
/// stopped; the whole session waits meanwhile, so this is short.
pub const STALL_AFTER: Duration = Duration::from_secs(2);
/// How long buffered download data may take to reach a local reader after the far end
/// closed the channel.
const DRAIN_AFTER_CLOSE: Duration = Duration::from_secs(5);

/// How a forwarded connection ended, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides finished normally.
    Done,
    /// The agent is shutting down or the session went away.
    Cancelled,
    /// The local side stopped reading; the connection was closed to protect the others.
    LocalStalled,
    /// An I/O or SSH error on one side.
    Failed(String),
}

/// Download bytes waiting for a local reader that is behind: the decisions of the download
/// direction (take more from the channel, or pause it; the reader stalled) without the
/// sockets.
#[derive(Debug, Default)]
struct DownloadBuffer {
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`, less what the reader took of the front one.
    held: usize,
    /// What the reader already took of the front chunk.
    offset: usize,
}

/// Slices handed to one vectored write: enough for a burst of SSH packets.
const WRITE_SLICES: usize = 16;

impl DownloadBuffer {
    /// Whether to take messages from the channel: below [`DOWNLOAD_CAP`] and before the
    /// far end's EOF. Refusing is the pause that pushes back on the hub.
    fn takes_more(&self, remote_eof: bool) -> bool {
        !remote_eof && self.held < DOWNLOAD_CAP
    }

    /// At the cap: the channel is paused, and the reader is watched for a stall.
    fn is_paused(&self) -> bool {
        self.held >= DOWNLOAD_CAP
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Holds `data`; returns whether the buffer was empty before (the reader's clock for a
    /// stall starts then: a reader with nothing to take is not behind). An empty message
    /// is dropped: a write of nothing would read as a closed socket.
    fn push(&mut self, data: Bytes) -> bool {
        if data.is_empty() {
            return false;
        }
        let was_empty = self.chunks.is_empty();
        self.held += data.len();
        self.chunks.push_back(data);
        was_empty
    }

    /// Fills `slices` with what is waiting, front first; returns how many it filled.
    fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>; WRITE_SLICES]) -> usize {
        let mut n = 0;
        for (slot, chunk) in slices.iter_mut().zip(&self.chunks) {
            let from = if n == 0 { self.offset } else { 0 };
            *slot = IoSlice::new(&chunk[from..]);
            n += 1;
        }
        n
    }

    /// The reader took `n` bytes from the front.
    fn consume(&mut self, n: usize) {
        self.held -= n.min(self.held);
        let mut left = n;
        while left > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let rest = front.len() - self.offset;
            if left >= rest {
                left -= rest;
                self.chunks.pop_front();
                self.offset = 0;
            } else {
                self.offset += left;
                left = 0;
            }
        }
    }

    /// When a paused channel's reader counts as stopped, given when it last took data.
    fn stall_deadline(&self, progress: Instant) -> Option<Instant> {
        self.is_paused().then_some(progress + STALL_AFTER)
    }
}

/// Copies until both directions are done, either side fails, or `cancel` fires.
pub async fn pump(
    tcp: TcpStream,
    channel: russh::Channel<Msg>,
    cancel: CancellationToken,
) -> Ended {
    let _ = tcp.set_nodelay(true);
    let (mut rx, tx) = channel.split();
    let (mut tcp_r, mut tcp_w) = tcp.into_split();

    let upload = async {
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            let n = tcp_r
                .read(&mut buf)
                .await
                .map_err(|e| format!("local read: {e}"))?;
            if n == 0 {
                tx.eof().await.map_err(|e| format!("channel eof: {e}"))?;
                return Ok::<(), String>(());
            }
            tx.data(&buf[..n])
                .await
                .map_err(|e| format!("channel write: {e}"))?;
        }
    };
    tokio::pin!(upload);

    let mut download = DownloadBuffer::default();
    let mut upload_done = false;
    let mut remote_eof = false;
    let mut local_shut = false;
    // When the local side last took data (or had nothing waiting).
    let mut progress = Instant::now();

    let ended = 'pump: loop {
        if upload_done && remote_eof && download.is_empty() {
            break Ended::Done;
        }
        let stall_at = download.stall_deadline(progress);
        tokio::select! {
            () = cancel.cancelled() => break Ended::Cancelled,
            res = &mut upload, if !upload_done => match res {
                Ok(()) => upload_done = true,
                Err(e) => break Ended::Failed(e),
            },
            msg = rx.wait(), if download.takes_more(remote_eof) => {
                // Take every message already queued (up to the cap), so one vectored
                // write hands the local reader many SSH packets at once: fewer wakeups
                // and system calls a megabyte.
                let mut msg = msg;
                loop {
                    match msg {
                        Some(ChannelMsg::Data { data }) => {
                            if download.push(data) {
                                progress = Instant::now();
                            }
                        }
                        Some(ChannelMsg::Eof) => remote_eof = true,
                        Some(ChannelMsg::Close) | None => {
                            // The far end is gone: stop uploading at once (its window will
                            // never open again) and hand the local reader what already
                            // arrived.
                            let _ = tokio::time::timeout(
                                DRAIN_AFTER_CLOSE,
                                write_all_pending(&mut tcp_w, &mut download),
                            )
                            .await;
                            break 'pump Ended::Done;
                        }
                        Some(_) => {}
                    }
                    if !download.takes_more(remote_eof) {
                        break;
                    }
                    match ready_now(rx.wait()) {
                        Some(next) => msg = next,
                        None => break,
                    }
                }
            }
            res = write_front(&mut tcp_w, &mut download), if !download.is_empty() => match res {
                Ok(_) => progress = Instant::now(),
                Err(e) => break Ended::Failed(format!("local write: {e}")),
            },
            () = tokio::time::sleep_until(stall_at.unwrap_or(progress)), if stall_at.is_some() => {
                break Ended::LocalStalled;
            }
        }
        if remote_eof && download.is_empty() && !local_shut {
            local_shut = true;
            let _ = tcp_w.shutdown().await;
        }
    };
    // Split halves do not close the channel on drop.
    let _ = tx.close().await;
    ended
}

/// The output of `fut` if it is ready without waiting. Only for futures that lose
/// nothing when dropped unfinished (a channel receive).
fn ready_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Writes as much of the waiting chunks as the socket takes in one vectored write.
async fn write_front(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    download: &mut DownloadBuffer,
) -> std::io::Result<usize> {
    if download.is_empty() {
        return Ok(0);
    }
    let n = {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let filled = download.slices(&mut slices);
        w.write_vectored(&slices[..filled]).await?
    };
    if n == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    download.consume(n);
    Ok(n)
}

async fn write_all_pending(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    download: &mut DownloadBuffer,
) -> std::io::Result<()> {
    while !download.is_empty() {
        write_front(w, download).await?;
    }
    w.shutdown().await
}

/// Accepts local-forward connections for the agent's whole life and sends each through
/// the live session, or closes it at once when there is none. Each connection is a task
/// on `tracker`, ended by `shutdown`.
pub(crate) async fn accept_local(
    listener: TcpListener,
    settings: Arc<TunnelSettings>,
    live: watch::Receiver<LiveHandle>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "local forward: accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            },
            () = shutdown.cancelled() => return,
        };
        let Some(handle) = live.borrow().clone() else {
            tracing::debug!(%peer, "local forward: link is down, connection closed");
            drop(tcp);
            continue;
        };
        let target = settings.local_target.clone();
        let timeout = settings.connect_timeout;
        let cancel = shutdown.child_token();
        tracker.spawn(async move {
            let open = cancel.run_until_cancelled(tokio::time::timeout(
                timeout,
                handle.channel_open_direct_tcpip(
                    target.host.clone(),
                    u32::from(target.port),
                    peer.ip().to_string(),
                    u32::from(peer.port()),
                ),
            ));
            let channel = match open.await {
                None => return,
                Some(Ok(Ok(channel))) => channel,
                Some(Ok(Err(e))) => {
                    tracing::warn!(%target, error = %e, "local forward: the hub refused to open the target");
                    return;
                }
                Some(Err(_)) => {
                    tracing::warn!(%target, "local forward: the hub did not open the target in time");
                    return;
                }
            };
            let ended = pump(tcp, channel, cancel).await;
            if ended == Ended::LocalStalled {
                tracing::warn!(%peer, "local forward: the local client stopped reading; its connection was closed so the others keep flowing");
            } else {
                tracing::debug!(%peer, ?ended, "local forward connection ended");
            }
        });
    }
}

/// Serves one connection the hub forwards to the office database: connects to `target`
/// (within `timeout`), accepts the channel and copies until either side ends or
/// `cancel` fires.
pub(crate) async fn serve_remote(
    channel: russh::Channel<Msg>,
    reply: russh::client::ChannelOpenHandle,
    target: Endpoint,
    timeout: Duration,
    origin: String,
    cancel: CancellationToken,
) {
    let connect = cancel.run_until_cancelled(tokio::time::timeout(
        timeout,
        TcpStream::connect((target.host.as_str(), target.port)),
    ));
    let tcp = match connect.await {
        None => return,
        Some(Ok(Ok(tcp))) => tcp,
        Some(Ok(Err(e))) => {
            tracing::warn!(%target, error = %e, "remote forward: cannot reach the office database");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
        Some(Err(_)) => {
            tracing::warn!(%target, "remote forward: office database did not answer in time");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    reply.accept().await;
    let ended = pump(tcp, channel, cancel).await;
    if ended == Ended::LocalStalled {
        tracing::warn!(%origin, "remote forward: the office database stopped reading; its connection was closed so the others keep flowing");
    } else {
        tracing::debug!(%origin, ?ended, "remote forward connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    /// What one vectored write of `buf` would carry, concatenated.
    fn written(buf: &DownloadBuffer) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let n = buf.slices(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn download_takes_from_the_channel_until_the_cap_then_pauses() {
        let mut buf = DownloadBuffer::default();
        assert!(buf.takes_more(false) && !buf.is_paused());
        assert!(
            buf.push(chunk(32 * 1024, 1)),
            "the first chunk starts the clock"
        );
        assert!(!buf.push(chunk(32 * 1024, 2)));
        while buf.takes_more(false) {
            buf.push(chunk(32 * 1024, 3));
        }
        assert_eq!(buf.held, DOWNLOAD_CAP);
        assert!(buf.is_paused());
        // The reader takes one byte: the channel is taken from again.
        buf.consume(1);
        assert!(buf.takes_more(false) && !buf.is_paused());
        // After the far end's EOF nothing more is asked of the channel.
        assert!(!buf.takes_more(true));
    }

    #[test]
    fn a_paused_reader_that_takes_nothing_for_the_stall_time_has_stopped() {
        let t0 = Instant::now();
        let mut buf = DownloadBuffer::default();
        buf.push(chunk(DOWNLOAD_CAP - 1, 0));
        assert_eq!(
            buf.stall_deadline(t0),
            None,
            "below the cap, a slow reader is fine"
        );
        buf.push(chunk(1, 0));
        assert_eq!(buf.stall_deadline(t0), Some(t0 + STALL_AFTER));
        buf.consume(10);
        assert_eq!(buf.stall_deadline(t0), None);
    }

    #[test]
    fn a_vectored_write_carries_the_front_chunks_from_where_the_reader_is() {
        let mut buf = DownloadBuffer::default();
        buf.push(Bytes::from_static(b"hello "));
        buf.push(Bytes::from_static(b"world"));
        assert_eq!(written(&buf), b"hello world");
        buf.consume(3);
        assert_eq!(written(&buf), b"lo world");
        assert_eq!(buf.held, 8);
        buf.consume(3);
        assert_eq!(written(&buf), b"world");
        assert_eq!((buf.chunks.len(), buf.offset), (1, 0));
        buf.consume(5);
        assert!(buf.is_empty());
        assert_eq!(buf.held, 0);
        assert!(buf.push(Bytes::from_static(b"!")), "empty again");
    }

    #[test]
    fn an_empty_data_message_is_not_held() {
        let mut buf = DownloadBuffer::default();
        assert!(!buf.push(Bytes::new()));
        assert!(buf.is_empty());
        buf.push(Bytes::from_static(b"x"));
        buf.push(Bytes::new());
        assert_eq!(buf.chunks.len(), 1);
        buf.consume(1);
        assert!(buf.is_empty(), "nothing left that a write could not take");
    }

    #[test]
    fn one_write_carries_at_most_the_slice_count_and_the_rest_follows_in_order() {
        let mut buf = DownloadBuffer::default();
        for i in 0..40u8 {
            buf.push(chunk(100, i));
        }
        let mut seen = Vec::new();
        while !buf.is_empty() {
            let batch = written(&buf);
            assert!(batch.len() <= WRITE_SLICES * 100);
            // A socket takes a part of what is offered, not on a chunk boundary.
            let took = batch.len().min(777);
            seen.extend_from_slice(&batch[..took]);
            buf.consume(took);
        }
        let expected: Vec<u8> = (0..40u8).flat_map(|i| [i; 100]).collect();
        assert_eq!(seen, expected);
        assert_eq!(buf.held, 0);
    }
}
