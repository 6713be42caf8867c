//! hubkit (being written).
