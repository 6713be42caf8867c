//! Linux GPIO character-device backend (the v2 uAPI through gpiocdev; never sysfs).
//!
//! Lines are found by NAME (the Pi 5 moved the chip number), requested with the consumer
//! label `tether`, LEDs as outputs starting off, the button as an input with pull-up.
//! They are exposed as embedded-hal pins; active-low is handled by the driver's
//! [`crate::Polarity`], not here, so it lives in one place.

use std::sync::Arc;

use embedded_hal::digital::{ErrorKind, ErrorType, InputPin, OutputPin};
use gpiocdev::Request;
use gpiocdev::line::{Bias, Offset, Value};

/// The consumer label the lines carry while the agent holds them.
pub const CONSUMER: &str = "tether";

/// A GPIO problem, naming the line.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("GPIO line `{0}` not found on any /dev/gpiochip* (check the board's line names)")]
    NotFound(String),
    #[error("GPIO line `{line}`: {source}")]
    Request {
        line: String,
        source: gpiocdev::Error,
    },
}

impl embedded_hal::digital::Error for GpioError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// One requested line.
#[derive(Debug, Clone)]
pub struct GpioPin {
    name: String,
    request: Arc<Request>,
    offset: Offset,
}

fn find(name: &str, chip: Option<&str>) -> Result<gpiocdev::FoundLine, GpioError> {
    let found =
        gpiocdev::find_named_line(name).ok_or_else(|| GpioError::NotFound(name.to_owned()))?;
    if let Some(chip) = chip
        && !found.chip.to_string_lossy().ends_with(chip)
    {
        return Err(GpioError::NotFound(format!("{name} (on {chip})")));
    }
    Ok(found)
}

impl GpioPin {
    /// An LED line, driven off at once.
    pub fn output(name: &str, chip: Option<&str>) -> Result<GpioPin, GpioError> {
        GpioPin::request(name, chip, |b| {
            b.as_output(Value::Inactive);
        })
    }

    /// The button line, with pull-up.
    pub fn input(name: &str, chip: Option<&str>) -> Result<GpioPin, GpioError> {
        GpioPin::request(name, chip, |b| {
            b.as_input().with_bias(Bias::PullUp);
        })
    }

    /// Finds the line by name and requests it for `tether`, configured by `direction`.
    fn request(
        name: &str,
        chip: Option<&str>,
        direction: impl FnOnce(&mut gpiocdev::request::Builder),
    ) -> Result<GpioPin, GpioError> {
        let found = find(name, chip)?;
        let mut builder = Request::builder();
        builder.with_found_line(&found).with_consumer(CONSUMER);
        direction(&mut builder);
        let request = builder.request().map_err(|source| GpioError::Request {
            line: name.to_owned(),
            source,
        })?;
        Ok(GpioPin {
            name: name.to_owned(),
            request: Arc::new(request),
            offset: found.info.offset,
        })
    }

    fn err(&self, source: gpiocdev::Error) -> GpioError {
        GpioError::Request {
            line: self.name.clone(),
            source,
        }
    }
}

impl ErrorType for GpioPin {
    type Error = GpioError;
}

impl OutputPin for GpioPin {
    fn set_low(&mut self) -> Result<(), GpioError> {
        self.request
            .set_value(self.offset, Value::Inactive)
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn set_high(&mut self) -> Result<(), GpioError> {
        self.request
            .set_value(self.offset, Value::Active)
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

impl InputPin for GpioPin {
    fn is_high(&mut self) -> Result<bool, GpioError> {
        self.request
            .value(self.offset)
            .map(|v| v == Value::Active)
            .map_err(|e| self.err(e))
    }

    fn is_low(&mut self) -> Result<bool, GpioError> {
        self.is_high().map(|h| !h)
    }
}
