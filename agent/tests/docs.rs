//! The words office staff read (README table, the printable card) say the same thing as
//! the LED patterns in the code.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)).unwrap()
}

#[test]
fn readme_and_card_list_every_light_state() {
    let states = [
        "green, steady",
        "green, blinking",
        "amber, blinking",
        "red, steady",
        "all dark",
    ];
    for doc in ["README.md", "docs/led-card.md", "docs/led-card.svg"] {
        let text = read(doc);
        for s in states {
            assert!(text.contains(s), "{doc} does not explain `{s}`");
        }
        assert!(
            text.contains("3 seconds"),
            "{doc} does not explain the button"
        );
    }
    // And the patterns agree with the card.
    use std::time::Duration;
    use tether_board::{BoardVerdict, leds_for};
    let t = Duration::from_millis(100);
    assert!(leds_for(BoardVerdict::InSync, t).green);
    assert!(leds_for(BoardVerdict::LinkDown, t).amber);
    assert!(leds_for(BoardVerdict::NeedsAttention, t).red);
    let off = leds_for(BoardVerdict::Dark, t);
    assert!(!off.green && !off.amber && !off.red);
}
