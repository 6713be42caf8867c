//! LEDs and button behind embedded-hal traits.
