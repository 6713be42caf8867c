//! Tether's LEDs and button behind embedded-hal traits.
//!
//! `patterns` decides what each LED shows as a pure function of the verdict and time;
//! `driver` puts that on any `OutputPin`s (active-low handled in one place); `button`
//! turns raw samples into gestures; `sim` draws a board in a terminal.

pub mod button;
pub mod driver;
#[cfg(feature = "gpio")]
pub mod gpio;
pub mod patterns;
pub mod recording;
pub mod sim;

pub use button::{Button, ButtonAction};
pub use driver::{Board, BoardError, Polarity};
pub use patterns::{BoardVerdict, LedState, leds_for};
