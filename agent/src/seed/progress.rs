//! The seed's arithmetic, pure: chunk sizes that follow the measured link, rates over a
//! sliding window, an ETA that says "estimating" until it has seen enough, the words for
//! people and the terminal's progress bar.

use std::collections::VecDeque;
use std::time::Duration;

/// How long one chunk should take from request to answer: long enough that the round
/// trip is a small part of it, short enough that a cut loses little.
pub const CHUNK_TIME: Duration = Duration::from_secs(2);
/// Smallest chunk worth a round trip, in compressed bytes.
pub const MIN_CHUNK_WIRE: u64 = 2 * 1024;
/// A chunk is at most this share of the whole copy (1/500): with three readers, five
/// cuts and a restart lose at most 18 chunks, 3.6 % even if each was all but done.
pub const CHUNK_SHARE: u64 = 500;
/// Rows per chunk to start a table with.
pub const FIRST_ROWS: u64 = 100;
const MAX_ROWS: u64 = 200_000;

/// Chunk size for one table, adapted after every chunk.
#[derive(Debug, Clone)]
pub struct ChunkSizer {
    rows: u64,
    max_wire: u64,
    max_text: u64,
    /// Compressed bytes per row and text bytes per row, smoothed.
    wire_per_row: Option<f64>,
    text_per_row: Option<f64>,
}

impl ChunkSizer {
    /// `estimated_wire` is the whole copy's estimate; `max_text` the packet limit.
    pub fn new(estimated_wire: u64, max_text: u64) -> Self {
        ChunkSizer {
            rows: FIRST_ROWS,
            max_wire: (estimated_wire / CHUNK_SHARE).max(MIN_CHUNK_WIRE),
            max_text: max_text.max(1024),
            wire_per_row: None,
            text_per_row: None,
        }
    }

    /// A better estimate of the whole copy's compressed bytes (from the copy itself:
    /// the estimate at the start comes from a sample and the servers' table statistics,
    /// which can be off severalfold).
    pub fn set_total(&mut self, estimated_wire: u64) {
        self.max_wire = (estimated_wire / CHUNK_SHARE).max(MIN_CHUNK_WIRE);
    }

    /// Rows to ask for next.
    pub fn rows(&self) -> u64 {
        let mut rows = self.rows;
        if let Some(w) = self.wire_per_row.filter(|w| *w > 0.0) {
            rows = rows.min((self.max_wire as f64 / w) as u64);
        }
        if let Some(t) = self.text_per_row.filter(|t| *t > 0.0) {
            rows = rows.min((self.max_text as f64 / t) as u64);
        }
        rows.clamp(1, MAX_ROWS)
    }

    /// After a chunk of `rows` rows (`text` bytes, `wire` compressed) took `elapsed`.
    pub fn observe(&mut self, rows: u64, text: u64, wire: u64, elapsed: Duration) {
        if rows == 0 {
            return;
        }
        let smooth = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| o * 0.5 + new * 0.5));
        self.wire_per_row = smooth(self.wire_per_row, wire as f64 / rows as f64);
        self.text_per_row = smooth(self.text_per_row, text as f64 / rows as f64);
        // Aim at CHUNK_TIME, growing at most 2x and shrinking at most 4x a step.
        let secs = elapsed.as_secs_f64().max(0.05);
        let factor = (CHUNK_TIME.as_secs_f64() / secs).clamp(0.25, 2.0);
        self.rows = ((rows as f64 * factor) as u64).clamp(1, MAX_ROWS);
    }

    /// After a chunk was lost (a cut): the next one is no larger than `rows`.
    pub fn lost(&mut self, rows: u64) {
        self.rows = self.rows.min(rows.max(1));
    }
}

/// Totals over a sliding window, for rates.
#[derive(Debug, Clone)]
pub struct RateWindow {
    window: Duration,
    samples: VecDeque<(Duration, u64, u64)>,
    /// The first sample ever: a window that started later than that is full.
    since: Option<Duration>,
}

impl RateWindow {
    pub fn new(window: Duration) -> Self {
        RateWindow {
            window,
            samples: VecDeque::new(),
            since: None,
        }
    }

    /// `rows` and `bytes` arrived at `now` (monotonic).
    pub fn add(&mut self, now: Duration, rows: u64, bytes: u64) {
        self.since.get_or_insert(now);
        self.samples.push_back((now, rows, bytes));
        while let Some((t, _, _)) = self.samples.front() {
            if now.saturating_sub(*t) > self.window {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// (rows/s, bytes/s) over the window ending `now`, once it spans at least `min_span`.
    pub fn rates(&self, now: Duration, min_span: Duration) -> Option<(f64, f64)> {
        let span = now.saturating_sub(self.since?);
        let recent: Vec<_> = self
            .samples
            .iter()
            .filter(|(t, _, _)| now.saturating_sub(*t) <= self.window)
            .collect();
        if span < min_span {
            return None;
        }
        let span = span.min(self.window).as_secs_f64();
        let rows: u64 = recent.iter().map(|(_, r, _)| r).sum();
        let bytes: u64 = recent.iter().map(|(_, _, b)| b).sum();
        Some((rows as f64 / span, bytes as f64 / span))
    }
}

/// Time left at `rows_per_s` for `remaining` rows, rounded to what people are shown (so
/// the state document changes rarely).
pub fn eta(remaining: u64, rows_per_s: f64) -> Option<Duration> {
    if rows_per_s <= 0.0 || !rows_per_s.is_finite() {
        return None;
    }
    let secs = remaining as f64 / rows_per_s;
    let step = if secs < 600.0 {
        60.0
    } else if secs < 3600.0 {
        300.0
    } else if secs < 36_000.0 {
        1800.0
    } else {
        3600.0
    };
    Some(Duration::from_secs(((secs / step).ceil() * step) as u64))
}

/// "about 2 h left", "about 40 min left", "less than a minute left".
pub fn eta_words(eta: Duration) -> String {
    let s = eta.as_secs();
    if s <= 60 {
        "less than a minute left".into()
    } else if s < 3600 {
        format!("about {} min left", s.div_ceil(60))
    } else {
        let half_hours = (s as f64 / 1800.0).round() as u64;
        if half_hours % 2 == 1 && half_hours < 20 {
            format!("about {} h left", half_hours as f64 / 2.0)
        } else {
            format!("about {} h left", half_hours.div_ceil(2))
        }
    }
}

/// Whole percent done, never 100 before the end.
pub fn percent(done: u64, total: u64) -> u8 {
    if total == 0 {
        return 0;
    }
    ((done.saturating_mul(100) / total).min(99)) as u8
}

/// "3.4 MB", "812 kB", "950 B".
pub fn bytes_words(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// "1h 05m 12s"-style durations for summaries.
pub fn duration_words(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The whole copy's compressed bytes as the copy so far says (bytes a row so far, times
/// every row), once it has seen enough rows; else the estimate from the start.
pub fn copy_estimate(start: u64, wire_so_far: u64, rows_so_far: u64, rows_total: u64) -> u64 {
    if rows_so_far < 1000 || rows_total == 0 {
        return start;
    }
    (wire_so_far as f64 / rows_so_far as f64 * rows_total as f64) as u64
}

/// One line for the terminal from the seed's progress document.
pub fn bar_line(doc: &serde_json::Value, width: usize) -> String {
    let phase = doc["phase"].as_str().unwrap_or("?");
    let pct = doc["percent"].as_u64().unwrap_or(0).min(100) as usize;
    let filled = width * pct / 100;
    let bar: String = (0..width)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    let rows = doc["rows_done"].as_u64().unwrap_or(0);
    let total = doc["rows_total"].as_u64().unwrap_or(0);
    let bytes = bytes_words(doc["wire_bytes"].as_u64().unwrap_or(0));
    let rate = doc["bytes_per_s"]
        .as_f64()
        .map(|r| format!("{}/s", bytes_words(r as u64)))
        .unwrap_or_else(|| "-".into());
    let eta = doc["eta_s"]
        .as_u64()
        .map(|s| eta_words(Duration::from_secs(s)))
        .unwrap_or_else(|| "estimating time left".into());
    // The side read (older agents did not say: the hub).
    let source = doc["source"].as_str().unwrap_or("hub");
    let words = match phase {
        "copy" => format!("{rows}/{total} rows, {bytes}, {rate}, {eta}"),
        "verify" => format!(
            "checking the copy against the {source} ({} ranges, {} rows repaired)",
            doc["verify_ranges"].as_u64().unwrap_or(0),
            doc["verify_rows"].as_u64().unwrap_or(0)
        ),
        "finishing" => "starting replication from the copy's position".into(),
        "plan" => format!("counting rows on the {source}"),
        "waiting" => "waiting for the link to the hub".into(),
        other => other.to_owned(),
    };
    format!("[{bar}] {pct:>3} %  {words}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_grow_towards_the_target_time_and_stay_a_small_share() {
        // 100 MB expected: at most 200 kB a chunk.
        let mut s = ChunkSizer::new(100_000_000, 4 << 20);
        assert_eq!(s.rows(), FIRST_ROWS);
        // 100 rows of 100 text bytes, 40 wire bytes each, in 0.4 s: grow 2x at most.
        s.observe(100, 10_000, 4_000, Duration::from_millis(400));
        assert_eq!(s.rows(), 200);
        for _ in 0..20 {
            let r = s.rows();
            s.observe(r, r * 100, r * 40, Duration::from_millis(100));
        }
        assert_eq!(s.rows(), 200_000 / 40, "capped by the share of the copy");
        // A slow chunk shrinks the next one.
        let r = s.rows();
        s.observe(r, r * 100, r * 40, Duration::from_secs(8));
        assert!(s.rows() <= r / 4 + 1, "{}", s.rows());
        s.lost(10);
        assert_eq!(s.rows(), 10);
        // The copy turns out smaller than estimated: chunks shrink with it.
        s.set_total(10_000_000);
        for _ in 0..20 {
            let r = s.rows();
            s.observe(r, r * 100, r * 40, Duration::from_millis(100));
        }
        assert_eq!(s.rows(), 20_000 / 40);
        assert_eq!(copy_estimate(7, 4_000, 999, 10_000), 7, "too early to tell");
        assert_eq!(copy_estimate(7, 40_000, 1_000, 10_000), 400_000);
    }

    #[test]
    fn chunks_respect_the_packet_limit() {
        let mut s = ChunkSizer::new(u64::MAX / 2, 1 << 20);
        s.observe(100, 100 * 100_000, 100 * 1000, Duration::from_millis(10));
        assert_eq!(s.rows(), (1 << 20) / 100_000);
    }

    #[test]
    fn rates_need_enough_time_before_they_are_believed() {
        let mut w = RateWindow::new(Duration::from_secs(60));
        let t = Duration::from_secs;
        w.add(t(100), 1000, 50_000);
        assert_eq!(w.rates(t(101), t(10)), None);
        w.add(t(105), 1000, 50_000);
        w.add(t(110), 1000, 50_000);
        let (rows, bytes) = w.rates(t(110), t(10)).unwrap();
        assert!((rows - 300.0).abs() < 1e-9, "{rows}");
        assert!((bytes - 15_000.0).abs() < 1e-9, "{bytes}");
        // Old samples leave the window.
        w.add(t(200), 10, 10);
        let (rows, _) = w.rates(t(200), t(10)).unwrap();
        assert!(rows < 1.0, "{rows}");
    }

    #[test]
    fn eta_words_are_coarse() {
        assert_eq!(eta(100, 0.0), None);
        assert_eq!(eta(30, 1.0), Some(Duration::from_secs(60)));
        assert_eq!(
            eta_words(Duration::from_secs(60)),
            "less than a minute left"
        );
        assert_eq!(eta_words(eta(2_370, 1.0).unwrap()), "about 40 min left");
        assert_eq!(eta_words(eta(7_000, 1.0).unwrap()), "about 2 h left");
        assert_eq!(eta_words(Duration::from_secs(5400)), "about 1.5 h left");
        assert_eq!(eta_words(Duration::from_secs(50 * 3600)), "about 50 h left");
        assert_eq!(percent(43, 100), 43);
        assert_eq!(percent(100, 100), 99, "never 100 before the end");
        assert_eq!(percent(5, 0), 0);
    }

    #[test]
    fn the_bar_shows_rows_bytes_rate_and_eta() {
        let doc = serde_json::json!({
            "phase": "copy", "percent": 43, "rows_done": 86012, "rows_total": 200000,
            "wire_bytes": 3_100_000u64, "bytes_per_s": 52_000.0, "eta_s": 7200,
        });
        let line = bar_line(&doc, 20);
        assert!(line.starts_with("[########............]  43 %"), "{line}");
        assert!(
            line.contains("86012/200000 rows, 3.1 MB, 52 kB/s, about 2 h left"),
            "{line}"
        );
        let early = bar_line(&serde_json::json!({"phase": "copy", "percent": 0}), 10);
        assert!(early.contains("estimating time left"), "{early}");
        let check = bar_line(
            &serde_json::json!({"phase": "verify", "percent": 99, "source": "office", "verify_ranges": 436, "verify_rows": 194}),
            10,
        );
        assert!(
            check.contains("checking the copy against the office (436 ranges, 194 rows repaired)"),
            "{check}"
        );
    }
}
