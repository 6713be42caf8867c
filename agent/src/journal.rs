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
/// reordered: the variant index is the version on disk. Older versions are read and
/// migrated to the current one; only the current one is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalFile {
    V1(StateV1),
    V2(StateV2),
}

/// The variant index of the newest version (the version number minus one).
const NEWEST: u64 = 1;

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

/// Version 2: version 1 plus the link outages the agent recorded (`downtime_ms`, kept in
/// version 1 but never written before, is their total).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateV2 {
    /// Last verdict shown, as its snake_case name (`in_sync`, `link_down`, ...).
    pub verdict: String,
    /// When that verdict began, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// SSH sessions established after the first one.
    pub reconnects: u64,
    /// Total length of the recorded outages, milliseconds.
    pub downtime_ms: u64,
    /// Last moment everything was in sync, milliseconds since the Unix epoch.
    pub last_in_sync_unix_ms: Option<u64>,
    /// The hub's host key fingerprint pinned by `tether enroll --pin`.
    pub hub_key_fingerprint: Option<String>,
    /// The longest outage recorded (what binary log retention must outlast).
    pub longest_outage: Option<Outage>,
    /// The most recent outages, oldest first, at most [`RECENT_OUTAGES`].
    pub recent_outages: Vec<Outage>,
    /// An outage still open when this was written: when it began, milliseconds since the
    /// Unix epoch (an agent restarted during an outage continues it).
    pub outage_open_since_unix_ms: Option<u64>,
}

/// One outage of the link to the hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outage {
    /// When the link went down, milliseconds since the Unix epoch.
    pub start_unix_ms: u64,
    /// When it was up again, milliseconds since the Unix epoch.
    pub end_unix_ms: u64,
    /// How long it lasted, milliseconds (measured on the monotonic clock where it could
    /// be, so a wall clock that jumped does not change it).
    pub length_ms: u64,
}

/// How many recent outages the journal keeps.
pub const RECENT_OUTAGES: usize = 10;

impl From<StateV1> for StateV2 {
    fn from(v1: StateV1) -> Self {
        StateV2 {
            verdict: v1.verdict,
            since_unix_ms: v1.since_unix_ms,
            reconnects: v1.reconnects,
            // Never written by version 1 agents: nothing was recorded.
            downtime_ms: 0,
            last_in_sync_unix_ms: v1.last_in_sync_unix_ms,
            hub_key_fingerprint: v1.hub_key_fingerprint,
            longest_outage: None,
            recent_outages: Vec::new(),
            outage_open_since_unix_ms: None,
        }
    }
}

impl StateV2 {
    /// Adds a finished outage to the record: the total, the longest and the recent ones.
    pub fn record_outage(&mut self, outage: Outage) {
        self.downtime_ms = self.downtime_ms.saturating_add(outage.length_ms);
        if self
            .longest_outage
            .is_none_or(|longest| outage.length_ms > longest.length_ms)
        {
            self.longest_outage = Some(outage);
        }
        self.recent_outages.push(outage);
        let excess = self.recent_outages.len().saturating_sub(RECENT_OUTAGES);
        self.recent_outages.drain(..excess);
    }
}

/// The current version's state, as the rest of the agent uses it.
pub type State = StateV2;

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

/// Encodes a state into the on-disk bytes (always the newest version).
pub fn encode(state: &State) -> Vec<u8> {
    encode_file(&JournalFile::V2(state.clone()))
}

/// Encodes any version into on-disk bytes (the golden files pin each version's bytes).
pub fn encode_file(file: &JournalFile) -> Vec<u8> {
    let payload = postcard::to_stdvec(file)
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

/// Decodes on-disk bytes of any known version into the current state; `path` is only
/// used in errors.
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
    if version > NEWEST {
        return Err(JournalError::Newer {
            path: path.to_path_buf(),
            // A corrupt-but-checksummed varint can be u64::MAX: never overflow on it.
            version: version.saturating_add(1),
            known: NEWEST + 1,
        });
    }
    match postcard::from_bytes::<JournalFile>(payload) {
        Ok(JournalFile::V1(state)) => Ok(state.into()),
        Ok(JournalFile::V2(state)) => Ok(state),
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

    /// Reads the journal without changing anything (for `tether status` and `tether
    /// doctor`, which must not move the running agent's file aside): a missing file is
    /// the fresh state.
    pub fn read(&self) -> Result<State, JournalError> {
        match fs::read(&self.path) {
            Ok(bytes) => decode(&bytes, &self.path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(source) => Err(JournalError::Io {
                path: self.path.clone(),
                source,
            }),
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

/// Makes a rename or creation in `path`'s directory durable.
pub fn sync_dir_of(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
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
    sync_dir_of(path)
}

/// Reads a JSON file of the data dir, if it is there; `what` names what it should be in
/// the error ("a seed job").
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
) -> Result<Option<T>, String> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: not {what} ({e})", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes `value` as JSON to `path` atomically with mode 0600, owned like `data_dir`
/// (the commands that write such files may run as root; the agent runs as its own user
/// and must be able to replace them).
pub fn write_json_owned<T: Serialize>(
    data_dir: &Path,
    path: &Path,
    value: &T,
) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    write_atomic(path, &bytes, Some(0o600))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if let Ok(meta) = fs::metadata(data_dir) {
        use std::os::unix::fs::MetadataExt;
        let _ = std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_v1() -> StateV1 {
        StateV1 {
            verdict: "in_sync".into(),
            since_unix_ms: 1_795_000_000_000,
            reconnects: 7,
            downtime_ms: 123_456,
            last_in_sync_unix_ms: Some(1_795_000_100_000),
            hub_key_fingerprint: Some("SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into()),
        }
    }

    fn outage(start_s: u64, length_s: u64) -> Outage {
        Outage {
            start_unix_ms: start_s * 1000,
            end_unix_ms: (start_s + length_s) * 1000,
            length_ms: length_s * 1000,
        }
    }

    fn sample() -> State {
        let mut state = State::from(sample_v1());
        state.record_outage(outage(1_794_000_000, 600));
        state.record_outage(outage(1_794_500_000, 7_200));
        state.record_outage(outage(1_794_900_000, 30));
        state.outage_open_since_unix_ms = Some(1_795_000_200_000);
        state
    }

    /// Regenerates the golden files; run by hand only when adding a new format version
    /// (the older files must never change).
    #[test]
    #[ignore]
    fn write_golden_files() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let v1 = format!("{dir}/journal-v1.bin");
        if !Path::new(&v1).exists() {
            fs::write(v1, encode_file(&JournalFile::V1(sample_v1()))).unwrap();
        }
        fs::write(format!("{dir}/journal-v2.bin"), encode(&sample())).unwrap();
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&sample());
        assert_eq!(decode(&bytes, Path::new("x")).unwrap(), sample());
    }

    /// Pins the version-1 bytes (every box installed before version 2 has such a file)
    /// and its migration: nothing recorded, everything else kept.
    #[test]
    fn golden_v1_bytes_are_read_and_migrated() {
        let golden = include_bytes!("../tests/fixtures/journal-v1.bin");
        assert_eq!(encode_file(&JournalFile::V1(sample_v1())), golden.to_vec());
        let state = decode(golden, Path::new("golden")).unwrap();
        assert_eq!(state, State::from(sample_v1()));
        assert_eq!(state.reconnects, 7);
        assert_eq!(state.downtime_ms, 0, "version 1 never recorded downtime");
        assert_eq!(state.longest_outage, None);
    }

    /// Pins the version-2 bytes: changing them breaks every installed box's journal.
    #[test]
    fn golden_v2_bytes() {
        let golden = include_bytes!("../tests/fixtures/journal-v2.bin");
        assert_eq!(encode(&sample()), golden.to_vec());
        assert_eq!(decode(golden, Path::new("golden")).unwrap(), sample());
    }

    #[test]
    fn outages_keep_the_total_the_longest_and_the_last_ten() {
        let state = sample();
        assert_eq!(
            state.downtime_ms,
            (600 + 7_200 + 30) * 1000,
            "the v1 figure was never real"
        );
        assert_eq!(state.longest_outage, Some(outage(1_794_500_000, 7_200)));
        let mut state = State::default();
        for i in 0..25 {
            state.record_outage(outage(1_000 * i, 10 + i));
        }
        assert_eq!(state.recent_outages.len(), RECENT_OUTAGES);
        assert_eq!(state.recent_outages[0], outage(15_000, 25));
        assert_eq!(state.recent_outages[9], outage(24_000, 34));
        assert_eq!(state.longest_outage, Some(outage(24_000, 34)));
        // An equal one does not replace the first of that length.
        state.record_outage(outage(99_000, 34));
        assert_eq!(state.longest_outage, Some(outage(24_000, 34)));
    }

    #[test]
    fn reading_never_moves_a_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        assert_eq!(j.read().unwrap(), State::default(), "missing: fresh");
        fs::write(j.path(), b"garbage").unwrap();
        assert!(j.read().is_err());
        assert!(j.path().exists(), "left where it is");
        j.save(&sample()).unwrap();
        assert_eq!(j.read().unwrap(), sample());
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
        let mut payload = postcard::to_stdvec(&JournalFile::V2(sample())).unwrap();
        payload[0] = 2; // variant index 2: version 3
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let crc = CRC.checksum(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let err = decode(&bytes, Path::new("state.bin")).unwrap_err();
        assert!(
            matches!(
                err,
                JournalError::Newer {
                    version: 3,
                    known: 2,
                    ..
                }
            ),
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
