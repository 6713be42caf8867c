//! secret (being written).
