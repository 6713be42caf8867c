//! The status page's memory: one point a minute for 7 days in a bounded ring, kept in
//! the data dir next to the state journal.
//!
//! Each point holds the worst verdict of its minute, the seconds the link was down in it
//! and the highest lag per direction: 6 bytes, so the whole week is about 60 KB on disk.
//! Minutes without the agent are "no data". Pure: [`History::observe`] takes the time and
//! what was seen; the file is written atomically (temp file, fsync, rename, fsync of the
//! directory) like the journal, and a bad file is moved aside, never fatal.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::health::Verdict;

/// One week of minutes.
pub const CAPACITY: usize = 7 * 24 * 60;
/// The ring's file name inside the data dir.
pub const FILE_NAME: &str = "history.bin";

const MAGIC: &[u8; 4] = b"TTHH";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 4 + 8 + 8 + 4;
const POINT: usize = 6;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
/// A clock that went back further than this starts the ring over (a box that booted with
/// a wrong clock must not stall its timeline for days).
const BACKWARDS_RESET_MIN: u32 = 60;
/// Longest stretch one observation may count as link-down time (the agent was
/// suspended or starved: what happened meanwhile is unknown).
const MAX_STEP_S: u64 = 5;

/// Lag not read in that minute.
pub const LAG_UNKNOWN: u16 = u16::MAX;
/// The verdict byte of a minute without the agent.
pub const NO_DATA: u8 = u8::MAX;

/// One minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// The worst verdict seen (index in [`Verdict::ALL`]) or [`NO_DATA`].
    pub verdict: u8,
    /// Seconds of the minute the link to the hub was down (0..=60).
    pub down_s: u8,
    /// Highest lag per direction (hub to office, office to hub), whole seconds,
    /// [`LAG_UNKNOWN`] when none was read.
    pub lag: [u16; 2],
}

impl Point {
    pub const EMPTY: Point = Point {
        verdict: NO_DATA,
        down_s: 0,
        lag: [LAG_UNKNOWN; 2],
    };

    pub fn verdict(&self) -> Option<Verdict> {
        Verdict::ALL.get(usize::from(self.verdict)).copied()
    }

    pub fn lag(&self, direction: usize) -> Option<u16> {
        (self.lag[direction] != LAG_UNKNOWN).then_some(self.lag[direction])
    }
}

/// What the agent saw at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub verdict: Verdict,
    pub tunnel_up: bool,
    /// Hub to office, office to hub.
    pub lag_s: [Option<u64>; 2],
}

impl Sample {
    pub fn of(health: &crate::health::Health) -> Sample {
        let r = &health.replication;
        Sample {
            verdict: health.verdict,
            tunnel_up: health.tunnel.up,
            lag_s: [r.hub_to_office.lag_s, r.office_to_hub.lag_s],
        }
    }
}

/// The ring: consecutive minutes, oldest first, the last one being `newest_minute`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    /// Minutes since the Unix epoch of the last point.
    newest_minute: u32,
    points: VecDeque<Point>,
    /// Link-down seconds ever counted (for `/metrics`).
    pub total_down_s: u64,
    /// The last moment everything was in sync, Unix seconds (0: never).
    pub last_in_sync_unix_s: u64,
    /// The previous observation, Unix seconds (not stored).
    last_observed: Option<u64>,
}

impl History {
    pub fn new() -> Self {
        History::default()
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Records what was seen at `unix_s`.
    pub fn observe(&mut self, unix_s: u64, sample: &Sample) {
        let minute = (unix_s / 60).min(u64::from(u32::MAX)) as u32;
        let step = match self.last_observed {
            Some(prev) if unix_s > prev => (unix_s - prev).min(MAX_STEP_S),
            Some(_) => 0,
            // The first observation after a start stands for one second.
            None => 1,
        };
        self.last_observed = Some(unix_s);
        let point = self.point_for(minute);
        let v = Verdict::ALL
            .iter()
            .position(|v| *v == sample.verdict)
            .unwrap_or(0) as u8;
        point.verdict = if point.verdict == NO_DATA {
            v
        } else {
            point.verdict.max(v)
        };
        if !sample.tunnel_up {
            point.down_s = (u64::from(point.down_s) + step).min(60) as u8;
        }
        for (slot, lag) in point.lag.iter_mut().zip(sample.lag_s) {
            if let Some(lag) = lag {
                let lag = lag.min(u64::from(LAG_UNKNOWN - 1)) as u16;
                *slot = if *slot == LAG_UNKNOWN {
                    lag
                } else {
                    (*slot).max(lag)
                };
            }
        }
        if !sample.tunnel_up {
            self.total_down_s += step;
        }
        if sample.verdict == Verdict::InSync {
            self.last_in_sync_unix_s = unix_s;
        }
    }

    /// The point of `minute`, creating it (and no-data points for any gap).
    fn point_for(&mut self, minute: u32) -> &mut Point {
        if self.points.is_empty() || minute.saturating_add(BACKWARDS_RESET_MIN) < self.newest_minute
        {
            self.points.clear();
            self.points.push_back(Point::EMPTY);
            self.newest_minute = minute;
        } else if minute > self.newest_minute {
            let gap = ((minute - self.newest_minute) as usize).min(CAPACITY);
            for _ in 0..gap {
                if self.points.len() == CAPACITY {
                    self.points.pop_front();
                }
                self.points.push_back(Point::EMPTY);
            }
            self.newest_minute = minute;
        }
        // A clock a little behind the newest point adds to it.
        self.points.back_mut().expect("never empty here")
    }

    /// The `count` minutes ending at `end_minute` (inclusive), oldest first; minutes the
    /// ring does not hold are [`Point::EMPTY`].
    pub fn window(&self, end_minute: u32, count: usize) -> Vec<Point> {
        let oldest = i64::from(self.newest_minute) - self.points.len() as i64 + 1;
        (0..count)
            .map(|i| {
                let m = i64::from(end_minute) - (count - 1 - i) as i64;
                let idx = m - oldest;
                if self.points.is_empty() || idx < 0 || m > i64::from(self.newest_minute) {
                    Point::EMPTY
                } else {
                    self.points
                        .get(idx as usize)
                        .copied()
                        .unwrap_or(Point::EMPTY)
                }
            })
            .collect()
    }

    /// The on-disk bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.points.len() * POINT + 4);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.newest_minute.to_le_bytes());
        out.extend_from_slice(&self.total_down_s.to_le_bytes());
        out.extend_from_slice(&self.last_in_sync_unix_s.to_le_bytes());
        out.extend_from_slice(&(self.points.len() as u32).to_le_bytes());
        for p in &self.points {
            out.push(p.verdict);
            out.push(p.down_s);
            out.extend_from_slice(&p.lag[0].to_le_bytes());
            out.extend_from_slice(&p.lag[1].to_le_bytes());
        }
        let crc = CRC.checksum(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads on-disk bytes; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<History, String> {
        if bytes.len() < HEADER + 4 || &bytes[..4] != MAGIC {
            return Err("not a tether history file".into());
        }
        if bytes[4] != VERSION {
            return Err(format!(
                "format version {} (this agent reads {VERSION})",
                bytes[4]
            ));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if CRC.checksum(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err("checksum mismatch".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
        let count = u32_at(25) as usize;
        if count > CAPACITY || body.len() != HEADER + count * POINT {
            return Err("length does not match the file size".into());
        }
        let points = body[HEADER..]
            .chunks_exact(POINT)
            .map(|c| Point {
                verdict: c[0],
                down_s: c[1].min(60),
                lag: [
                    u16::from_le_bytes([c[2], c[3]]),
                    u16::from_le_bytes([c[4], c[5]]),
                ],
            })
            .collect();
        Ok(History {
            newest_minute: u32_at(5),
            total_down_s: u64_at(9),
            last_in_sync_unix_s: u64_at(17),
            points,
            last_observed: None,
        })
    }
}

/// The largest file the ring can make.
pub const MAX_FILE_BYTES: usize = HEADER + CAPACITY * POINT + 4;

/// The ring's file in one data dir.
#[derive(Debug, Clone)]
pub struct HistoryFile {
    path: PathBuf,
}

impl HistoryFile {
    pub fn new(data_dir: &Path) -> Self {
        HistoryFile {
            path: data_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved ring; a missing file is an empty ring, a bad one is moved aside
    /// (`history.bin.corrupt-<unix seconds>`) and reported.
    pub fn load(&self) -> (History, Option<String>) {
        match fs::read(&self.path) {
            Ok(bytes) => match History::decode(&bytes) {
                Ok(h) => (h, None),
                Err(why) => {
                    let secs = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let aside = self.path.with_extension(format!("bin.corrupt-{secs}"));
                    let _ = fs::rename(&self.path, &aside);
                    (
                        History::new(),
                        Some(format!("{}: {why}; moved aside", self.path.display())),
                    )
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (History::new(), None),
            Err(e) => (
                History::new(),
                Some(format!("{}: {e}", self.path.display())),
            ),
        }
    }

    /// Writes atomically: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, history: &History) -> io::Result<()> {
        let tmp = self.path.with_extension("bin.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&history.encode())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(verdict: Verdict, up: bool, lag: [Option<u64>; 2]) -> Sample {
        Sample {
            verdict,
            tunnel_up: up,
            lag_s: lag,
        }
    }

    const T0: u64 = 1_800_000_000 / 60 * 60;

    #[test]
    fn a_minute_keeps_the_worst_verdict_the_down_seconds_and_the_highest_lag() {
        let mut h = History::new();
        for s in 0..60 {
            let up = !(10..25).contains(&s);
            let verdict = if up {
                Verdict::InSync
            } else {
                Verdict::LinkDown
            };
            let lag = if up { Some(s) } else { None };
            h.observe(T0 + s, &sample(verdict, up, [lag, Some(1)]));
        }
        assert_eq!(h.len(), 1);
        let p = h.window((T0 / 60) as u32, 1)[0];
        assert_eq!(p.verdict(), Some(Verdict::LinkDown));
        assert_eq!(p.down_s, 15);
        assert_eq!(p.lag(0), Some(59));
        assert_eq!(p.lag(1), Some(1));
        assert_eq!(h.total_down_s, 15);
        assert_eq!(h.last_in_sync_unix_s, T0 + 59);
    }

    #[test]
    fn gaps_are_no_data_and_the_ring_is_bounded() {
        let mut h = History::new();
        let ok = sample(Verdict::InSync, true, [Some(0), Some(0)]);
        h.observe(T0, &ok);
        h.observe(T0 + 180, &ok);
        let w = h.window((T0 / 60) as u32 + 3, 5);
        assert_eq!(w[0], Point::EMPTY, "before the ring");
        assert_eq!(w[1].verdict(), Some(Verdict::InSync));
        assert_eq!((w[2], w[3]), (Point::EMPTY, Point::EMPTY), "agent away");
        assert_eq!(w[4].verdict(), Some(Verdict::InSync));
        for m in 0..(CAPACITY as u64 + 500) {
            h.observe(T0 + 240 + m * 60, &ok);
        }
        assert_eq!(h.len(), CAPACITY);
        assert!(h.encode().len() <= MAX_FILE_BYTES);
        const { assert!(MAX_FILE_BYTES <= 100_000) };
        // Ten days away: the ring holds only no-data minutes and the new one.
        h.observe(T0 + 240 + (CAPACITY as u64 + 500) * 60 + 10 * 86_400, &ok);
        assert_eq!(h.len(), CAPACITY);
    }

    #[test]
    fn a_clock_far_behind_starts_over_and_a_little_behind_adds_to_the_newest() {
        let mut h = History::new();
        let ok = sample(Verdict::InSync, true, [None, None]);
        let down = sample(Verdict::LinkDown, false, [None, None]);
        h.observe(T0 + 600, &ok);
        h.observe(T0 + 590, &down);
        assert_eq!(h.len(), 1);
        assert_eq!(
            h.window((T0 + 600) as u32 / 60, 1)[0].verdict(),
            Some(Verdict::LinkDown)
        );
        h.observe(T0 - 7200, &ok);
        assert_eq!(h.len(), 1);
        assert_eq!(
            h.window((T0 - 7200) as u32 / 60, 1)[0].verdict(),
            Some(Verdict::InSync)
        );
    }

    #[test]
    fn a_long_pause_counts_at_most_a_few_seconds_of_outage() {
        let mut h = History::new();
        let down = sample(Verdict::LinkDown, false, [None, None]);
        h.observe(T0, &down);
        h.observe(T0 + 40, &down);
        assert_eq!(h.total_down_s, 1 + MAX_STEP_S);
    }

    #[test]
    fn bytes_round_trip_and_every_flip_is_caught() {
        let mut h = History::new();
        for s in 0..300 {
            let up = s % 97 > 10;
            h.observe(
                T0 + s,
                &sample(
                    if up {
                        Verdict::InSync
                    } else {
                        Verdict::LinkDown
                    },
                    up,
                    [Some(s % 13), None],
                ),
            );
        }
        let bytes = h.encode();
        let mut back = History::decode(&bytes).unwrap();
        back.last_observed = h.last_observed;
        assert_eq!(back, h);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x21;
            assert!(History::decode(&bad).is_err(), "flip at {i}");
        }
        for n in 0..bytes.len() {
            assert!(History::decode(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn a_restart_finds_the_saved_ring_and_a_bad_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = HistoryFile::new(dir.path());
        assert_eq!(file.load(), (History::new(), None));
        let mut h = History::new();
        h.observe(T0, &sample(Verdict::LinkDown, false, [None, None]));
        file.save(&h).unwrap();
        let (mut back, problem) = file.load();
        assert_eq!(problem, None);
        back.last_observed = h.last_observed;
        assert_eq!(back, h);
        fs::write(file.path(), b"TTHH junk").unwrap();
        let (empty, problem) = file.load();
        assert!(empty.is_empty());
        assert!(problem.unwrap().contains("moved aside"));
        assert!(!file.path().exists());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = History::decode(&bytes);
        }
    }
}
