//! A recording board for tests: remembers every LED state it was asked to show.

use std::time::Duration;

use crate::patterns::LedState;

/// The timeline of what the LEDs showed, with the time of each change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordingBoard {
    changes: Vec<(Duration, LedState)>,
}

impl RecordingBoard {
    pub fn new() -> Self {
        RecordingBoard::default()
    }

    /// Records `state` at `t` if it differs from the last one shown.
    pub fn show(&mut self, t: Duration, state: LedState) {
        if self.changes.last().map(|(_, s)| *s) != Some(state) {
            self.changes.push((t, state));
        }
    }

    pub fn changes(&self) -> &[(Duration, LedState)] {
        &self.changes
    }

    /// What the board showed at `t`.
    pub fn at(&self, t: Duration) -> LedState {
        self.changes
            .iter()
            .rev()
            .find(|(when, _)| *when <= t)
            .map(|(_, s)| *s)
            .unwrap_or(LedState::OFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patterns::{BoardVerdict, leds_for};

    #[test]
    fn records_only_changes_and_answers_what_was_shown() {
        let mut b = RecordingBoard::new();
        for ms in (0..3000).step_by(100) {
            let t = Duration::from_millis(ms);
            b.show(t, leds_for(BoardVerdict::LinkDown, t));
        }
        // Amber blinks at 1 Hz: on, off, on, off, on, off over three seconds.
        assert_eq!(b.changes().len(), 6);
        assert!(b.at(Duration::from_millis(250)).amber);
        assert!(!b.at(Duration::from_millis(750)).amber);
        assert!(b.changes().iter().all(|(_, s)| !s.green && !s.red));
    }
}
