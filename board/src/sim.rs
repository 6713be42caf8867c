//! The simulated board: the LEDs drawn in a terminal line (the lab), with ANSI colours.

use crate::patterns::LedState;

/// One line showing the three LEDs: `●` lit in its colour, `○` dim when off.
pub fn render_line(state: LedState, colour: bool) -> String {
    let led = |on: bool, code: &str, name: &str| {
        let glyph = if on { "●" } else { "○" };
        if colour {
            if on {
                format!("\x1b[1;{code}m{glyph}\x1b[0m {name}")
            } else {
                format!("\x1b[2m{glyph} {name}\x1b[0m")
            }
        } else {
            format!("{glyph} {name}")
        }
    };
    format!(
        "{}   {}   {}",
        led(state.green, "32", "green"),
        led(state.amber, "33", "amber"),
        led(state.red, "31", "red")
    )
}

/// The line protocol the agent's simulated board speaks: `G1 A0 R0`.
pub fn encode(state: LedState) -> String {
    format!(
        "G{} A{} R{}",
        u8::from(state.green),
        u8::from(state.amber),
        u8::from(state.red)
    )
}

/// Parses [`encode`]'s output.
pub fn decode(line: &str) -> Option<LedState> {
    let mut it = line.split_whitespace();
    let mut bit = |p: char| -> Option<bool> {
        let w = it.next()?;
        let rest = w.strip_prefix(p)?;
        match rest {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        }
    };
    Some(LedState {
        green: bit('G')?,
        amber: bit('A')?,
        red: bit('R')?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_plain_render() {
        let s = LedState {
            green: true,
            amber: false,
            red: true,
        };
        assert_eq!(decode(&encode(s)), Some(s));
        assert_eq!(render_line(s, false), "● green   ○ amber   ● red");
        assert_eq!(decode("junk"), None);
    }
}
