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
use std::time::Duration;

use russh::ChannelMsg;
use russh::client::Msg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

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

    let mut pending: VecDeque<bytes::Bytes> = VecDeque::new();
    let mut pending_bytes = 0usize;
    let mut offset = 0usize;
    let mut upload_done = false;
    let mut remote_eof = false;
    let mut local_shut = false;
    // When the local side last took data (or had nothing waiting).
    let mut progress = tokio::time::Instant::now();

    let ended = 'pump: loop {
        if upload_done && remote_eof && pending.is_empty() {
            break Ended::Done;
        }
        tokio::select! {
            () = cancel.cancelled() => break Ended::Cancelled,
            res = &mut upload, if !upload_done => match res {
                Ok(()) => upload_done = true,
                Err(e) => break Ended::Failed(e),
            },
            msg = rx.wait(), if !remote_eof && pending_bytes < DOWNLOAD_CAP => {
                // Take every message already queued (up to the cap), so one vectored
                // write hands the local reader many SSH packets at once: fewer wakeups
                // and system calls a megabyte.
                let mut msg = msg;
                loop {
                    match msg {
                        Some(ChannelMsg::Data { data }) => {
                            if pending.is_empty() {
                                progress = tokio::time::Instant::now();
                            }
                            pending_bytes += data.len();
                            pending.push_back(data);
                        }
                        Some(ChannelMsg::Eof) => remote_eof = true,
                        Some(ChannelMsg::Close) | None => {
                            // The far end is gone: stop uploading at once (its window will
                            // never open again) and hand the local reader what already
                            // arrived.
                            let _ = tokio::time::timeout(
                                DRAIN_AFTER_CLOSE,
                                write_all_pending(&mut tcp_w, &mut pending, &mut offset),
                            )
                            .await;
                            break 'pump Ended::Done;
                        }
                        Some(_) => {}
                    }
                    if remote_eof || pending_bytes >= DOWNLOAD_CAP {
                        break;
                    }
                    match ready_now(rx.wait()) {
                        Some(next) => msg = next,
                        None => break,
                    }
                }
            }
            res = write_front(&mut tcp_w, &mut pending, &mut offset), if !pending.is_empty() => match res {
                Ok(n) => {
                    pending_bytes -= n;
                    progress = tokio::time::Instant::now();
                }
                Err(e) => break Ended::Failed(format!("local write: {e}")),
            },
            () = tokio::time::sleep_until(progress + STALL_AFTER), if pending_bytes >= DOWNLOAD_CAP => {
                break Ended::LocalStalled;
            }
        }
        if remote_eof && pending.is_empty() && !local_shut {
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

/// Writes as much of the pending chunks as the socket takes in one vectored write.
async fn write_front(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    pending: &mut VecDeque<bytes::Bytes>,
    offset: &mut usize,
) -> std::io::Result<usize> {
    if pending.is_empty() {
        return Ok(0);
    }
    let n = {
        let slices: Vec<std::io::IoSlice<'_>> = pending
            .iter()
            .take(16)
            .enumerate()
            .map(|(i, b)| std::io::IoSlice::new(if i == 0 { &b[*offset..] } else { &b[..] }))
            .collect();
        w.write_vectored(&slices).await?
    };
    if n == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    let mut left = n;
    while left > 0 {
        let Some(front) = pending.front() else { break };
        let rest = front.len() - *offset;
        if left >= rest {
            left -= rest;
            pending.pop_front();
            *offset = 0;
        } else {
            *offset += left;
            left = 0;
        }
    }
    Ok(n)
}

async fn write_all_pending(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    pending: &mut VecDeque<bytes::Bytes>,
    offset: &mut usize,
) -> std::io::Result<()> {
    while !pending.is_empty() {
        write_front(w, pending, offset).await?;
    }
    w.shutdown().await
}
