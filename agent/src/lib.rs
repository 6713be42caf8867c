//! Tether: keeps an office database and its hub in sync over one supervised SSH connection.
//!
//! The crate is split the way ARCHITECTURE.md describes: pure decision code
//! (`health`, `backoff`) and thin async tasks at the edges (`tunnel`, ...).

pub mod app;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod dialect;
pub mod doctor;
pub mod enroll;
pub mod events;
pub mod fleet;
pub mod fuzz;
pub mod health;
#[cfg(feature = "web")]
pub mod history;
pub mod hubkit;
pub mod journal;
pub mod leds;
pub mod logging;
pub mod mqtt;
pub mod outages;
pub mod passwd;
pub mod release;
pub mod replication;
pub mod secret;
pub mod seed;
pub mod setup;
pub mod site_numbers;
pub mod status;
pub mod tunnel;
pub mod updates;
pub mod version;
#[cfg(feature = "web")]
pub mod web;
