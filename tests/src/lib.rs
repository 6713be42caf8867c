//! Real servers for tests and the lab: two MariaDB servers, OpenSSH's sshd as the hub,
//! mosquitto, each an unprivileged process on a free loopback port in its own temp dir;
//! and the link simulator that stands for the office's slow, flaky line.

pub mod fixture;
pub mod fleet;
pub mod lab;
pub mod linksim;
pub mod mariadb;
pub mod mixed;
pub mod mosquitto;
pub mod process;
pub mod secrets;
pub mod seeding;
pub mod soak;
pub mod sshd;
pub mod workload;

pub use fixture::{Fixture, FixtureOptions, wait_for};
pub use process::ensure_lab_user;
