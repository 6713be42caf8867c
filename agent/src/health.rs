//! health (being written).
