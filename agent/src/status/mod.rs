//! The local status socket: `tether status` asks the running agent for its health.
//!
//! Protocol: connect, read one line of JSON (the MQTT state document), EOF. Nothing is
//! read from the client, so a stuck or hostile client cannot hold the agent up: each
//! answer is bounded by a short write timeout, at most [`MAX_CONNECTIONS`] are answered
//! at once (more are closed at accept), and every answer is a tracked task, ended and
//! awaited at shutdown. [`words`] is what `tether status` prints.

pub mod words;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Longest time one client may take to read its answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers in flight at once; a connection beyond them is closed at accept.
pub const MAX_CONNECTIONS: usize = 8;

/// Binds the socket (replacing a stale one) with mode 0660.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Serves the latest state document to every client until shutdown, then removes the
/// socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    state: watch::Receiver<String>,
    shutdown: CancellationToken,
) {
    serve_bounded(listener, path, state, shutdown, WRITE_TIMEOUT).await;
}

async fn serve_bounded(
    listener: UnixListener,
    path: PathBuf,
    state: watch::Receiver<String>,
    shutdown: CancellationToken,
    write_timeout: Duration,
) {
    let mut answers = JoinSet::new();
    loop {
        let conn = tokio::select! {
            r = listener.accept() => r,
            Some(_) = answers.join_next(), if !answers.is_empty() => continue,
            () = shutdown.cancelled() => break,
        };
        let Ok((mut stream, _)) = conn else {
            // Transient (EMFILE and the like): pause rather than spin.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                () = shutdown.cancelled() => break,
            }
        };
        if answers.len() >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        let mut doc = state.borrow().clone();
        doc.push('\n');
        let stop = shutdown.clone();
        answers.spawn(async move {
            tokio::select! {
                _ = tokio::time::timeout(write_timeout, stream.write_all(doc.as_bytes())) => {}
                () = stop.cancelled() => {}
            }
        });
    }
    // Each answer ends at the token: this wait is short.
    while answers.join_next().await.is_some() {}
    let _ = std::fs::remove_file(&path);
}

/// Reads the running agent's state document, bounded by `timeout`.
pub async fn query(path: &Path, timeout: Duration) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let fut = async {
        let mut stream = tokio::net::UnixStream::connect(path).await?;
        let mut out = String::new();
        stream.read_to_string(&mut out).await?;
        Ok(out)
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "the agent did not answer")
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_latest_document_with_mode_0660() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/tether.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let (tx, rx) = watch::channel(r#"{"verdict":"link_down"}"#.to_string());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, path.clone(), rx, shutdown.clone()));
        let first = query(&path, Duration::from_secs(2)).await.unwrap();
        assert_eq!(first.trim(), r#"{"verdict":"link_down"}"#);
        tx.send_replace(r#"{"verdict":"in_sync"}"#.to_string());
        let second = query(&path, Duration::from_secs(2)).await.unwrap();
        assert_eq!(second.trim(), r#"{"verdict":"in_sync"}"#);
        shutdown.cancel();
        server.await.unwrap();
        assert!(!path.exists(), "socket file removed at shutdown");
    }

    /// Clients that never read hold their answers (a document larger than the socket's
    /// buffer): the ninth is closed at accept, and shutdown still ends every answer.
    #[tokio::test]
    async fn at_most_eight_answers_at_once_and_all_end_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.sock");
        let listener = bind(&path).unwrap();
        let big = format!("{{\"verdict\":\"{}\"}}", "x".repeat(8 << 20));
        let (_tx, rx) = watch::channel(big);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_bounded(
            listener,
            path.clone(),
            rx,
            shutdown.clone(),
            Duration::from_secs(600),
        ));
        let mut stuck = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
            // The first bytes arrive: this one is being answered.
            let mut first = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(&mut c, &mut first)
                .await
                .unwrap();
            stuck.push(c);
        }
        let mut ninth = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut ninth, &mut got),
        )
        .await
        .expect("closed, not left hanging");
        assert!(
            read.is_ok() && got.is_empty(),
            "the ninth got {} bytes",
            got.len()
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("shutdown ends the answers in flight")
            .unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn no_agent_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let err = query(&dir.path().join("none.sock"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
