//! The version this binary reports, kept in a fixed slot inside the binary itself, so the
//! box can read a downloaded binary's version without running it, and a copy of a
//! binary can be given another version without a rebuild (the update tests do).
//!
//! The slot is a marker followed by the version, NUL-padded, in one static. The marker
//! occurs once in a tether binary: the search reads it from the slot at run time, so no
//! second copy of it is compiled in.

use std::ops::Range;
use std::sync::OnceLock;

/// The version compiled in: `TETHER_VERSION` at build time, else the crate's version.
pub const BUILT: &str = match option_env!("TETHER_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Bytes of the marker at the slot's start.
const MARKER_LEN: usize = 24;
/// Bytes of the whole slot (marker and version).
pub const SLOT_LEN: usize = 80;
/// The longest version a slot holds.
pub const MAX_VERSION_LEN: usize = SLOT_LEN - MARKER_LEN;

const fn slot(marker: &[u8; MARKER_LEN], version: &str) -> [u8; SLOT_LEN] {
    let v = version.as_bytes();
    assert!(v.len() <= MAX_VERSION_LEN, "TETHER_VERSION is too long");
    let mut out = [0u8; SLOT_LEN];
    let mut i = 0;
    while i < MARKER_LEN {
        out[i] = marker[i];
        i += 1;
    }
    let mut j = 0;
    while j < v.len() {
        out[MARKER_LEN + j] = v[j];
        j += 1;
    }
    out
}

/// The slot. Read only through `read_volatile`, so the compiler keeps it in the binary as
/// it is and never folds the version into the code that uses it.
#[used]
static SLOT: [u8; SLOT_LEN] = slot(b"\0tether-version-slot-v1\0", BUILT);

fn slot_bytes() -> [u8; SLOT_LEN] {
    // SAFETY: SLOT is a valid, aligned static of this type; a volatile read of it is a
    // plain read the optimiser may not see through.
    unsafe { std::ptr::read_volatile(&SLOT) }
}

/// The marker that starts every slot.
pub fn marker() -> [u8; MARKER_LEN] {
    let mut m = [0u8; MARKER_LEN];
    m.copy_from_slice(&slot_bytes()[..MARKER_LEN]);
    m
}

/// This binary's version (what `tether version`, the state document and the status page
/// show, and what the launcher and the update check compare).
pub fn current() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| parse_version(&slot_bytes()[MARKER_LEN..]).unwrap_or_else(|| BUILT.into()))
}

fn parse_version(field: &[u8]) -> Option<String> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let v = std::str::from_utf8(&field[..end]).ok()?;
    valid_version_text(v).then(|| v.to_owned())
}

fn valid_version_text(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_VERSION_LEN
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

/// Why a binary's version cannot be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("the file carries no tether version (it is not a tether binary)")]
    Missing,
    #[error("the file carries {0} version slots; a tether binary has one")]
    Ambiguous(usize),
    #[error("the file's version slot holds no readable version")]
    Unreadable,
    #[error("`{0}` cannot be a version (1 to 56 characters of a-z, A-Z, 0-9, . _ - +)")]
    BadVersion(String),
}

/// Where the one version slot of `binary` is.
pub fn find_slot(binary: &[u8]) -> Result<Range<usize>, SlotError> {
    let mut scan = SlotScan::default();
    scan.feed(binary);
    let (at, _) = scan.finish_slot()?;
    Ok(at as usize..at as usize + SLOT_LEN)
}

/// Finds the version slot in a file read piece by piece (a release is checked without
/// holding it in memory).
#[derive(Debug, Default)]
pub struct SlotScan {
    /// The last bytes of the previous piece, so a slot across two pieces is seen.
    carry: Vec<u8>,
    /// Bytes fed before `carry`'s start.
    consumed: u64,
    /// Every marker's offset, with the slot once all of it has been seen.
    found: std::collections::BTreeMap<u64, Option<[u8; SLOT_LEN]>>,
}

impl SlotScan {
    pub fn feed(&mut self, piece: &[u8]) {
        let marker = marker();
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(piece);
        for at in memchr::memmem::find_iter(&buf, &marker) {
            let offset = self.consumed + at as u64;
            let slot = buf.get(at..at + SLOT_LEN).map(|s| {
                let mut out = [0u8; SLOT_LEN];
                out.copy_from_slice(s);
                out
            });
            let entry = self.found.entry(offset).or_insert(None);
            if entry.is_none() {
                *entry = slot;
            }
            if self.found.len() > 8 {
                break;
            }
        }
        let keep = buf.len().min(SLOT_LEN - 1);
        self.consumed += (buf.len() - keep) as u64;
        self.carry = buf.split_off(buf.len() - keep);
    }

    fn finish_slot(&self) -> Result<(u64, [u8; SLOT_LEN]), SlotError> {
        let mut found = self.found.iter();
        match (found.next(), found.next()) {
            (None, _) => Err(SlotError::Missing),
            (Some((at, Some(slot))), None) => Ok((*at, *slot)),
            (Some(_), None) => Err(SlotError::Unreadable),
            (Some(_), Some(_)) => Err(SlotError::Ambiguous(self.found.len())),
        }
    }

    /// The version in the one slot seen.
    pub fn version(&self) -> Result<String, SlotError> {
        let (_, slot) = self.finish_slot()?;
        parse_version(&slot[MARKER_LEN..]).ok_or(SlotError::Unreadable)
    }
}

/// The version a tether binary carries.
pub fn read(binary: &[u8]) -> Result<String, SlotError> {
    let mut scan = SlotScan::default();
    scan.feed(binary);
    scan.version()
}

/// Gives a copy of a tether binary another version (for tests and release tooling: the
/// code stays byte for byte the same).
pub fn write(binary: &mut [u8], version: &str) -> Result<(), SlotError> {
    if !valid_version_text(version) {
        return Err(SlotError::BadVersion(version.to_owned()));
    }
    let slot = find_slot(binary)?;
    let field = &mut binary[slot.start + MARKER_LEN..slot.end];
    field.fill(0);
    field[..version.len()].copy_from_slice(version.as_bytes());
    Ok(())
}

/// A whole slot holding `version`, for building other binaries that carry one (the
/// tests' deliberately broken releases).
pub fn slot_for(version: &str) -> Result<[u8; SLOT_LEN], SlotError> {
    if !valid_version_text(version) {
        return Err(SlotError::BadVersion(version.to_owned()));
    }
    let mut out = [0u8; SLOT_LEN];
    out[..MARKER_LEN].copy_from_slice(&marker());
    out[MARKER_LEN..MARKER_LEN + version.len()].copy_from_slice(version.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_binary_reports_the_built_version() {
        assert_eq!(current(), BUILT);
    }

    #[test]
    fn a_slot_is_found_read_and_rewritten() {
        let mut file = b"ELF....some code....".to_vec();
        file.extend_from_slice(&slot_for("1.2.3").unwrap());
        file.extend_from_slice(b"....more");
        assert_eq!(read(&file), Ok("1.2.3".into()));
        write(&mut file, "1.2.4-rc.1").unwrap();
        assert_eq!(read(&file), Ok("1.2.4-rc.1".into()));
        assert_eq!(
            write(&mut file, "1.2.4 beta"),
            Err(SlotError::BadVersion("1.2.4 beta".into()))
        );
    }

    #[test]
    fn missing_truncated_and_doubled_slots_are_named() {
        assert_eq!(read(b"just bytes"), Err(SlotError::Missing));
        let slot = slot_for("1.0.0").unwrap();
        assert_eq!(read(&slot[..30]), Err(SlotError::Unreadable));
        let twice = [slot, slot].concat();
        assert_eq!(read(&twice), Err(SlotError::Ambiguous(2)));
    }

    #[test]
    fn a_slot_split_across_pieces_is_found() {
        let mut file = vec![7u8; 1000];
        file.extend_from_slice(&slot_for("2.0.0").unwrap());
        file.extend_from_slice(&[9u8; 500]);
        for piece in [1, 3, 23, 24, 25, 79, 80, 81, 4096] {
            let mut scan = SlotScan::default();
            for chunk in file.chunks(piece) {
                scan.feed(chunk);
            }
            assert_eq!(scan.version(), Ok("2.0.0".into()), "pieces of {piece}");
        }
    }

    #[test]
    fn the_test_binary_itself_carries_one_slot() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(read(&me), Ok(BUILT.to_owned()));
    }
}
