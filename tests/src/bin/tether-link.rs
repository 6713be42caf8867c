//! The link simulator as a binary.
fn main() {}
