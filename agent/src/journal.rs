//! The state journal: what the agent must remember across restarts and power loss.
//!
//! File layout (little endian): magic `TTHJ`, payload length (u32), payload, CRC-32C of
//! everything before it. The payload is a postcard-encoded [`JournalFile`], a versioned
//! enum whose variant index is the format version. Writes are atomic (temp file, fsync,
//! rename, fsync of the directory), so a reader always finds the old or the new state.
//! A corrupt file, or one written by a newer agent, is moved aside and reported; it
//! never stops the agent.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"TTHJ";
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
/// The journal's file name inside the data dir.
pub const FILE_NAME: &str = "state.bin";
/// Payloads are small; anything larger is not ours.
const MAX_PAYLOAD: usize = 64 * 1024;

/// Every format version the agent can read. New versions are added at the end, never
/// reordered: the variant index is the version on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalFile {
    V1(StateV1),
}

/// Version 1 of what is remembered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateV1 {
    /// Last verdict shown, as its snake_case name (`in_sync`, `link_down`, ...).
    pub verdict: String,
    /// When that verdict began, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// SSH sessions established after the first one.
    pub reconnects: u64,
    /// Total time the link was down, milliseconds.
    pub downtime_ms: u64,
    /// Last moment everything was in sync, milliseconds since the Unix epoch.
    pub last_in_sync_unix_ms: Option<u64>,
    /// The hub's host key fingerprint pinned by `tether enroll --pin`.
    pub hub_key_fingerprint: Option<String>,
}

/// The current version's state, as the rest of the agent uses it.
pub type State = StateV1;

/// Why a journal file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: corrupt journal ({why})")]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "{path}: written by a newer tether (format version {version}); this one reads up to {known}"
    )]
    Newer {
        path: PathBuf,
        version: u64,
        known: u64,
    },
}

/// Encodes a state into the on-disk bytes.
pub fn encode(state: &State) -> Vec<u8> {
    let payload = postcard::to_stdvec(&JournalFile::V1(state.clone()))
        .expect("postcard encodes plain structs into a Vec without failing");
    frame(&payload)
}

/// Wraps a payload in the file layout: magic, length, payload, CRC.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 12);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = CRC.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes on-disk bytes; `path` is only used in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<State, JournalError> {
    let corrupt = |why: &str| JournalError::Corrupt {
        path: path.to_path_buf(),
        why: why.to_owned(),
    };
    if bytes.len() < 12 || &bytes[..4] != MAGIC {
        return Err(corrupt("not a tether journal"));
    }
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if len > MAX_PAYLOAD || bytes.len() != 8 + len + 4 {
        return Err(corrupt("length does not match the file size"));
    }
    let (body, crc) = bytes.split_at(8 + len);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if CRC.checksum(body) != want {
        return Err(corrupt("checksum mismatch"));
    }
    let payload = &body[8..];
    let version = leading_varint(payload).ok_or_else(|| corrupt("no version"))?;
    const KNOWN: u64 = 0;
    if version > KNOWN {
        return Err(JournalError::Newer {
            path: path.to_path_buf(),
            // A corrupt-but-checksummed varint can be u64::MAX: never overflow on it.
            version: version.saturating_add(1),
            known: KNOWN + 1,
        });
    }
    match postcard::from_bytes::<JournalFile>(payload) {
        Ok(JournalFile::V1(state)) => Ok(state),
        Err(e) => Err(corrupt(&e.to_string())),
    }
}

fn leading_varint(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// What loading found.
#[derive(Debug)]
pub struct Loaded {
    pub state: State,
    /// Set when a file existed but could not be used; it was moved to `set_aside`.
    pub problem: Option<(JournalError, Option<PathBuf>)>,
}

/// The journal in one data dir.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(data_dir: &Path) -> Self {
        Journal {
            path: data_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the journal. A missing file is a fresh start; an unusable one is moved aside
    /// (to `state.bin.corrupt-<unix seconds>` or `.newer-...`) and reported, never fatal.
    pub fn load(&self) -> Loaded {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Loaded {
                    state: State::default(),
                    problem: None,
                };
            }
            Err(source) => {
                return Loaded {
                    state: State::default(),
                    problem: Some((
                        JournalError::Io {
                            path: self.path.clone(),
                            source,
                        },
                        None,
                    )),
                };
            }
        };
        match decode(&bytes, &self.path) {
            Ok(state) => Loaded {
                state,
                problem: None,
            },
            Err(err) => {
                let tag = if matches!(err, JournalError::Newer { .. }) {
                    "newer"
                } else {
                    "corrupt"
                };
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = self.path.with_extension(format!("bin.{tag}-{secs}"));
                let moved = fs::rename(&self.path, &aside).ok().map(|()| aside);
                Loaded {
                    state: State::default(),
                    problem: Some((err, moved)),
                }
            }
        }
    }

    /// Writes atomically: temp file, fsync, rename over the old one, fsync the directory.
    pub fn save(&self, state: &State) -> Result<(), JournalError> {
        write_atomic(&self.path, &encode(state), None).map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Replaces `path` with `bytes` so that a reader (or a power cut) sees the old or the new
/// content, never a mix: a temp file beside it (created with `mode`, if given), fsync,
/// rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if let Some(mode) = mode {
        options.mode(mode);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        File::open(dir).and_then(|d| d.sync_all())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            verdict: "in_sync".into(),
            since_unix_ms: 1_795_000_000_000,
            reconnects: 7,
            downtime_ms: 123_456,
            last_in_sync_unix_ms: Some(1_795_000_100_000),
            hub_key_fingerprint: Some("SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into()),
        }
    }

    /// Regenerates the golden file; run by hand only when adding a new format version.
    #[test]
    #[ignore]
    fn write_golden_v1() {
        fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/journal-v1.bin"),
            encode(&sample()),
        )
        .unwrap();
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&sample());
        assert_eq!(decode(&bytes, Path::new("x")).unwrap(), sample());
    }

    /// Pins the version-1 bytes: changing them breaks every installed box's journal.
    #[test]
    fn golden_v1_bytes() {
        let golden = include_bytes!("../tests/fixtures/journal-v1.bin");
        assert_eq!(encode(&sample()), golden.to_vec());
        assert_eq!(decode(golden, Path::new("golden")).unwrap(), sample());
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x5a;
            assert!(
                decode(&bad, Path::new("x")).is_err(),
                "flip at {i} went unnoticed"
            );
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], Path::new("x")).is_err());
        }
    }

    #[test]
    fn newer_version_is_named_as_such() {
        let mut payload = postcard::to_stdvec(&JournalFile::V1(sample())).unwrap();
        payload[0] = 1; // variant index 1: version 2
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let crc = CRC.checksum(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let err = decode(&bytes, Path::new("state.bin")).unwrap_err();
        assert!(
            matches!(err, JournalError::Newer { version: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("newer tether"));
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_fresh_state_used() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        fs::write(j.path(), b"garbage that is not a journal").unwrap();
        let loaded = j.load();
        assert_eq!(loaded.state, State::default());
        let (err, aside) = loaded.problem.expect("reported");
        assert!(err.to_string().contains("corrupt"), "{err}");
        let aside = aside.expect("moved aside");
        assert!(aside.exists());
        assert!(!j.path().exists());
        j.save(&sample()).unwrap();
        assert_eq!(j.load().state, sample());
    }

    /// Found by the fuzzer: the largest version number a varint can hold.
    #[test]
    fn a_huge_version_number_is_reported_not_a_panic() {
        let payload = [0xff; 9].into_iter().chain([0x01]).collect::<Vec<u8>>();
        let err = decode(&frame(&payload), Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("newer tether"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&bytes, Path::new("x"));
        }
    }
}
