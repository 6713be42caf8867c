//! End-to-end path probes: a forwarded path works only if the MySQL server's greeting
//! comes back through it. A local forward accepts even when the far end is dead, so an
//! open socket proves nothing.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

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

#[cfg(test)]
mod tests {
    use super::*;

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
