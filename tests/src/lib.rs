//! Real servers for tests and the lab: two MariaDB or MySQL servers, OpenSSH's sshd as the hub,
//! mosquitto, each an unprivileged process on a free loopback port in its own temp dir;
//! and the link simulator that stands for the office's slow, flaky line.

pub mod db;
pub mod fixture;
pub mod fleet;
pub mod lab;
pub mod linksim;
pub mod mariadb;
pub mod mixed;
pub mod mosquitto;
pub mod mysql;
pub mod offices;
pub mod process;
pub mod releases;
pub mod secrets;
pub mod seeding;
pub mod skip;
pub mod soak;
pub mod sshd;
pub mod workload;

pub use fixture::{Fixture, FixtureOptions, wait_for};
pub use process::ensure_lab_user;

/// One `#[tokio::test]` per family for a scenario `async fn(Family)`: the scenarios about
/// behaviour both families share are written once and run on each
/// (`scenario: mariadb_test_name, mysql_test_name; ...`).
#[macro_export]
macro_rules! on_both_families {
    ($scenario:ident: $($mariadb:ident, $mysql:ident);+ $(;)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $mariadb() {
            $scenario($crate::db::Family::MariaDb).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $mysql() {
            $scenario($crate::db::Family::MySql).await;
        }
    )+};
}
