//! The words office staff read (README table, the printable card) say the same thing as
//! the LED patterns in the code: each verdict's row names the LED that is lit and whether
//! it is steady, blinking or pulsing, as the pattern shows it over whole blink periods.

use std::path::Path;
use std::time::Duration;

use tether_board::patterns::{BLINK, SELF_TEST, leds_with_self_test};
use tether_board::{BoardVerdict, LedState, leds_for};

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)).unwrap()
}

/// How one LED behaves over a stretch of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Off,
    Steady,
    /// On about half of each period, once a period.
    Blinking,
    /// On briefly, once a period.
    Pulsing,
}

impl Shape {
    fn word(self) -> &'static str {
        match self {
            Shape::Off => "off",
            Shape::Steady => "steady",
            Shape::Blinking => "blinking",
            Shape::Pulsing => "pulsing",
        }
    }
}

/// The shape of samples taken every `STEP` over `PERIODS` whole blink periods.
fn shape(samples: &[bool]) -> Shape {
    let on = samples.iter().filter(|s| **s).count();
    if on == 0 {
        return Shape::Off;
    }
    if on == samples.len() {
        return Shape::Steady;
    }
    // Switch-ons, counting round the end (the samples cover whole periods).
    let rises = (0..samples.len())
        .filter(|&i| samples[i] && !samples[(i + samples.len() - 1) % samples.len()])
        .count();
    assert_eq!(rises, PERIODS, "not once a period: {samples:?}");
    let duty = on as f64 / samples.len() as f64;
    if (0.4..=0.6).contains(&duty) {
        Shape::Blinking
    } else {
        assert!(duty < 0.4, "on most of the time but not steady: {duty}");
        Shape::Pulsing
    }
}

const STEP: Duration = Duration::from_millis(10);
const PERIODS: usize = 3;

/// What the LEDs of `verdict` do over whole periods, starting at `from`, in the card's
/// words ("green, blinking", "all dark").
fn described(verdict: BoardVerdict, from: Duration) -> String {
    let steps = (BLINK.as_millis() / STEP.as_millis()) as usize * PERIODS;
    let frames: Vec<LedState> = (0..steps)
        .map(|i| leds_for(verdict, from + STEP * i as u32))
        .collect();
    let lit: Vec<String> = [
        ("green", frames.iter().map(|f| f.green).collect::<Vec<_>>()),
        ("amber", frames.iter().map(|f| f.amber).collect()),
        ("red", frames.iter().map(|f| f.red).collect()),
    ]
    .into_iter()
    .filter_map(|(colour, samples)| match shape(&samples) {
        Shape::Off => None,
        s => Some(format!("{colour}, {}", s.word())),
    })
    .collect();
    if lit.is_empty() {
        "all dark".into()
    } else {
        lit.join(" and ")
    }
}

/// Each verdict and words its row's meaning holds (README and card word it differently).
const MEANINGS: &[(BoardVerdict, &[&str])] = &[
    (BoardVerdict::InSync, &["in sync"]),
    (BoardVerdict::CatchingUp, &["catching up"]),
    (BoardVerdict::LinkDown, &["no link", "no line"]),
    (BoardVerdict::NeedsAttention, &["a person must act"]),
    (BoardVerdict::Dark, &["not running"]),
];

/// The table rows of a Markdown document: (first cell, second cell).
fn rows(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim().strip_prefix('|')?.split('|').collect();
            Some((cells.first()?.trim().into(), cells.get(1)?.trim().into()))
        })
        .collect()
}

#[test]
fn every_verdicts_row_says_what_its_leds_do() {
    for doc in ["README.md", "docs/led-card.md"] {
        let text = read(doc);
        let rows = rows(&text);
        for (verdict, meaning) in MEANINGS {
            let matching: Vec<&(String, String)> = rows
                .iter()
                .filter(|(_, m)| {
                    let m = m.to_lowercase();
                    meaning.iter().any(|w| m.contains(w))
                })
                .collect();
            assert_eq!(matching.len(), 1, "{doc}: one row for {verdict:?}");
            // Whatever the phase the pattern is looked at from.
            for from in [0, 250, 499, 500, 1234] {
                assert_eq!(
                    matching[0].0,
                    described(*verdict, Duration::from_millis(from)),
                    "{doc}: the row for {verdict:?} does not say what its LEDs do"
                );
            }
        }
    }
}

#[test]
fn the_card_names_every_light_state_and_the_button() {
    let states: Vec<String> = MEANINGS
        .iter()
        .map(|(v, _)| described(*v, Duration::ZERO))
        .collect();
    for doc in ["README.md", "docs/led-card.md", "docs/led-card.svg"] {
        let text = read(doc);
        for s in &states {
            assert!(text.contains(s.as_str()), "{doc} does not explain `{s}`");
        }
        assert!(
            text.contains("3 seconds"),
            "{doc} does not explain the button"
        );
    }
    // The button's "3 seconds", both ways: the lamp test lasts that long, and holding it
    // that long reconnects.
    assert_eq!(SELF_TEST, Duration::from_secs(3));
    assert_eq!(tether_board::button::LONG_PRESS, Duration::from_secs(3));
    let press = Duration::from_millis(12_345);
    let until = Some(press + SELF_TEST);
    let all = LedState::ALL;
    for v in MEANINGS.iter().map(|(v, _)| *v) {
        assert_eq!(leds_with_self_test(v, press, until), all);
        assert_eq!(leds_with_self_test(v, press + SELF_TEST - STEP, until), all);
        assert_eq!(
            leds_with_self_test(v, press + SELF_TEST, until),
            leds_for(v, press + SELF_TEST)
        );
    }
}

#[test]
fn the_shapes_are_told_apart() {
    let period = (BLINK.as_millis() / STEP.as_millis()) as usize;
    let wave =
        |on: usize| -> Vec<bool> { (0..period * PERIODS).map(|i| i % period < on).collect() };
    assert_eq!(shape(&wave(0)), Shape::Off);
    assert_eq!(shape(&wave(period)), Shape::Steady);
    assert_eq!(shape(&wave(period / 2)), Shape::Blinking);
    assert_eq!(shape(&wave(period / 10)), Shape::Pulsing);
}
