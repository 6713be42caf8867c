//! The button: debounced samples in, gestures out. Pure: the caller passes the time.
//!
//! A short press (released before 3 s) asks for the LED self-test; holding it 3 s asks
//! for a reconnect, once, while still held.

use std::time::Duration;

/// What a press means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonAction {
    SelfTest,
    ForceReconnect,
}

pub const LONG_PRESS: Duration = Duration::from_secs(3);
pub const DEBOUNCE: Duration = Duration::from_millis(30);

/// Debouncer and gesture recogniser.
#[derive(Debug, Clone)]
pub struct Button {
    debounce: Duration,
    stable: bool,
    candidate: Option<(bool, Duration)>,
    pressed_at: Option<Duration>,
    long_fired: bool,
}

impl Button {
    pub fn new(debounce: Duration) -> Self {
        Button {
            debounce,
            stable: false,
            candidate: None,
            pressed_at: None,
            long_fired: false,
        }
    }

    /// Feeds one raw sample (`pressed` already corrected for active-low).
    pub fn sample(&mut self, pressed: bool, now: Duration) -> Option<ButtonAction> {
        if pressed != self.stable {
            match self.candidate {
                Some((v, since)) if v == pressed => {
                    if now.saturating_sub(since) >= self.debounce {
                        self.candidate = None;
                        return self.settle(pressed, now);
                    }
                }
                _ => self.candidate = Some((pressed, now)),
            }
        } else {
            self.candidate = None;
        }
        if self.stable
            && !self.long_fired
            && let Some(at) = self.pressed_at
            && now.saturating_sub(at) >= LONG_PRESS
        {
            self.long_fired = true;
            return Some(ButtonAction::ForceReconnect);
        }
        None
    }

    fn settle(&mut self, pressed: bool, now: Duration) -> Option<ButtonAction> {
        self.stable = pressed;
        if pressed {
            self.pressed_at = Some(now);
            self.long_fired = false;
            None
        } else {
            let was_long = self.long_fired;
            self.pressed_at = None;
            self.long_fired = false;
            (!was_long).then_some(ButtonAction::SelfTest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn run(samples: &[(u64, bool)]) -> Vec<(u64, ButtonAction)> {
        let mut b = Button::new(DEBOUNCE);
        samples
            .iter()
            .filter_map(|(t, p)| b.sample(*p, ms(*t)).map(|a| (*t, a)))
            .collect()
    }

    #[test]
    fn bounces_are_ignored() {
        assert!(run(&[(0, true), (5, false), (10, true), (15, false), (100, false)]).is_empty());
    }

    #[test]
    fn short_press_is_a_self_test_on_release() {
        let got = run(&[(0, true), (40, true), (500, false), (540, false)]);
        assert_eq!(got, vec![(540, ButtonAction::SelfTest)]);
    }

    #[test]
    fn long_press_reconnects_once_while_held() {
        let mut s: Vec<(u64, bool)> = (0..=400).map(|i| (i * 10, true)).collect();
        s.push((4010, false));
        s.push((4050, false));
        assert_eq!(run(&s), vec![(3030, ButtonAction::ForceReconnect)]);
    }
}
