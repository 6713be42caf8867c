//! The supervised SSH connection and its two forwards (being written).
