//! Puts an [`LedState`] on three embedded-hal output pins. Active-low lines are handled
//! here and nowhere else.

use embedded_hal::digital::{ErrorType, OutputPin};

use crate::patterns::LedState;

/// How a line is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    ActiveHigh,
    ActiveLow,
}

/// A pin failed.
#[derive(Debug, thiserror::Error)]
#[error("LED {led}: {message}")]
pub struct BoardError {
    pub led: &'static str,
    pub message: String,
}

/// The three LEDs.
#[derive(Debug, Clone)]
pub struct Board<G, A, R> {
    green: (G, Polarity),
    amber: (A, Polarity),
    red: (R, Polarity),
}

fn set<P: OutputPin>(led: &'static str, pin: &mut (P, Polarity), on: bool) -> Result<(), BoardError>
where
    <P as ErrorType>::Error: core::fmt::Debug,
{
    let high = match pin.1 {
        Polarity::ActiveHigh => on,
        Polarity::ActiveLow => !on,
    };
    let r = if high {
        pin.0.set_high()
    } else {
        pin.0.set_low()
    };
    r.map_err(|e| BoardError {
        led,
        message: format!("{e:?}"),
    })
}

impl<G: OutputPin, A: OutputPin, R: OutputPin> Board<G, A, R>
where
    <G as ErrorType>::Error: core::fmt::Debug,
    <A as ErrorType>::Error: core::fmt::Debug,
    <R as ErrorType>::Error: core::fmt::Debug,
{
    pub fn new(green: (G, Polarity), amber: (A, Polarity), red: (R, Polarity)) -> Self {
        Board { green, amber, red }
    }

    pub fn show(&mut self, state: LedState) -> Result<(), BoardError> {
        set("green", &mut self.green, state.green)?;
        set("amber", &mut self.amber, state.amber)?;
        set("red", &mut self.red, state.red)
    }

    /// Dark: what a stopped or hung agent must look like.
    pub fn all_off(&mut self) -> Result<(), BoardError> {
        self.show(LedState::OFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction as T};

    #[test]
    fn active_low_lines_are_inverted_in_one_place() {
        let mut green = Mock::new(&[T::set(State::High), T::set(State::Low)]);
        let mut amber = Mock::new(&[T::set(State::High), T::set(State::High)]);
        let mut red = Mock::new(&[T::set(State::Low), T::set(State::Low)]);
        {
            let mut b = Board::new(
                (green.clone(), Polarity::ActiveHigh),
                (amber.clone(), Polarity::ActiveLow),
                (red.clone(), Polarity::ActiveHigh),
            );
            b.show(LedState {
                green: true,
                amber: false,
                red: false,
            })
            .unwrap();
            b.all_off().unwrap();
        }
        green.done();
        amber.done();
        red.done();
    }
}
