//! What the LEDs show: a pure function of the verdict and the time.
//!
//! Default meanings (the card next to the box says the same): green steady = in sync;
//! green blinking = catching up; amber blinking = link down, work is kept; red steady = a
//! person must act; all dark = the agent is not running (a problem too).

use std::time::Duration;

/// The verdicts the board knows (the agent maps its own to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BoardVerdict {
    InSync,
    CatchingUp,
    LinkDown,
    NeedsAttention,
    /// Agent stopping or not running: everything off.
    Dark,
}

/// The three LEDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LedState {
    pub green: bool,
    pub amber: bool,
    pub red: bool,
}

impl LedState {
    pub const OFF: LedState = LedState {
        green: false,
        amber: false,
        red: false,
    };
    pub const ALL: LedState = LedState {
        green: true,
        amber: true,
        red: true,
    };
}

/// Blink period: 1 Hz, half on, half off.
pub const BLINK: Duration = Duration::from_millis(1000);
/// How long a short button press lights every LED.
pub const SELF_TEST: Duration = Duration::from_secs(3);

fn blink_on(t: Duration) -> bool {
    (t.as_millis() % BLINK.as_millis()) < BLINK.as_millis() / 2
}

/// The LEDs for `verdict` at time `t` (any monotonic origin).
pub fn leds_for(verdict: BoardVerdict, t: Duration) -> LedState {
    let on = blink_on(t);
    match verdict {
        BoardVerdict::InSync => LedState {
            green: true,
            ..LedState::OFF
        },
        BoardVerdict::CatchingUp => LedState {
            green: on,
            ..LedState::OFF
        },
        BoardVerdict::LinkDown => LedState {
            amber: on,
            ..LedState::OFF
        },
        BoardVerdict::NeedsAttention => LedState {
            red: true,
            ..LedState::OFF
        },
        BoardVerdict::Dark => LedState::OFF,
    }
}

/// Like [`leds_for`], with a self-test (all on) running until `self_test_until`.
pub fn leds_with_self_test(
    verdict: BoardVerdict,
    t: Duration,
    self_test_until: Option<Duration>,
) -> LedState {
    match self_test_until {
        Some(until) if t < until => LedState::ALL,
        _ => leds_for(verdict, t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn meanings() {
        let t = Duration::from_millis(100);
        assert_eq!(
            leds_for(BoardVerdict::InSync, t),
            LedState {
                green: true,
                ..LedState::OFF
            }
        );
        assert_eq!(
            leds_for(BoardVerdict::NeedsAttention, t),
            LedState {
                red: true,
                ..LedState::OFF
            }
        );
        assert_eq!(leds_for(BoardVerdict::Dark, t), LedState::OFF);
        let later = Duration::from_millis(600);
        assert!(leds_for(BoardVerdict::LinkDown, t).amber);
        assert!(!leds_for(BoardVerdict::LinkDown, later).amber);
        assert!(!leds_for(BoardVerdict::CatchingUp, later).green);
    }

    #[test]
    fn self_test_lights_everything_for_three_seconds() {
        let until = Some(Duration::from_secs(13));
        assert_eq!(
            leds_with_self_test(BoardVerdict::Dark, Duration::from_secs(12), until),
            LedState::ALL
        );
        assert_eq!(
            leds_with_self_test(BoardVerdict::Dark, Duration::from_secs(13), until),
            LedState::OFF
        );
    }

    proptest! {
        #[test]
        fn pure_and_never_green_when_something_is_wrong(ms in 0u64..10_000_000) {
            let t = Duration::from_millis(ms);
            for v in [BoardVerdict::InSync, BoardVerdict::CatchingUp, BoardVerdict::LinkDown, BoardVerdict::NeedsAttention, BoardVerdict::Dark] {
                prop_assert_eq!(leds_for(v, t), leds_for(v, t));
            }
            prop_assert!(!leds_for(BoardVerdict::LinkDown, t).green);
            prop_assert!(!leds_for(BoardVerdict::NeedsAttention, t).green);
            prop_assert!(leds_for(BoardVerdict::NeedsAttention, t).red);
        }
    }
}
