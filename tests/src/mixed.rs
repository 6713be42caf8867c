//! A fixed, mixed write workload for both sites (the wire-bytes benchmark): inserts,
//! one-column updates and deletes,
//! each site on its own keys (odd ids at the hub, even ids at the office), the same
//! statements for the same seed. Used to count replication's bytes on the wire.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};

use crate::db::DbServer;

/// The table the workload writes (`db.table`), created by [`create_table`].
pub fn create_table(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, site VARCHAR(8) NOT NULL, customer VARCHAR(40) NOT NULL, \
         qty INT NOT NULL, price DECIMAL(10,2) NOT NULL, note VARCHAR(100) NOT NULL, \
         changed TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)) ENGINE=InnoDB"
    )
}

/// The statements one site runs, each its own transaction: for every 17 steps, 10
/// inserts, 6 updates of one column of an earlier row and 1 delete (the shape of
/// 5,000 inserts, 3,000 updates and 500 deletes). `site` 0 writes odd ids, 1 even ids.
pub fn statements(table: &str, site: u8, steps: usize, seed: u64) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (u64::from(site) << 32));
    let name = if site == 0 { "hub" } else { "office" };
    let id = |n: usize| 2 * n as i64 + 1 + i64::from(site);
    let mut live: BTreeSet<usize> = BTreeSet::new();
    let mut next = 0usize;
    let mut out = Vec::with_capacity(steps);
    for step in 0..steps {
        let kind = step % 17;
        if kind < 10 || live.is_empty() {
            let customer = format!("customer {:05}", rng.random_range(0..20_000));
            out.push(format!(
                "INSERT INTO {table} (id, site, customer, qty, price, note) VALUES ({}, '{name}', '{customer}', {}, {}.{:02}, 'order taken at the {name} desk, ref {:08}')",
                id(next),
                rng.random_range(1..50),
                rng.random_range(1..900),
                rng.random_range(0..100),
                rng.random_range(0..100_000_000u32),
            ));
            live.insert(next);
            next += 1;
        } else {
            let pick = *live
                .iter()
                .nth(rng.random_range(0..live.len()))
                .expect("not empty");
            if kind < 16 {
                out.push(format!(
                    "UPDATE {table} SET qty = qty + {} WHERE id = {}",
                    rng.random_range(1..5),
                    id(pick)
                ));
            } else {
                out.push(format!("DELETE FROM {table} WHERE id = {}", id(pick)));
                live.remove(&pick);
            }
        }
    }
    out
}

/// Runs `statements` against `db`, one every `pace` (as fast as they go when zero).
pub async fn run(db: &DbServer, statements: &[String], pace: Duration) -> Result<()> {
    let mut conn = mysql_async::Conn::from_url(db.root_url())
        .await
        .with_context(|| format!("{}: connect for the workload", db.name))?;
    let mut tick = tokio::time::interval(pace.max(Duration::from_micros(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for sql in statements {
        if !pace.is_zero() {
            tick.tick().await;
        }
        conn.query_drop(sql)
            .await
            .with_context(|| format!("{}: {sql}", db.name))?;
    }
    let _ = conn.disconnect().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_statements_and_sites_never_share_a_key() {
        let a = statements("t", 0, 340, 7);
        assert_eq!(a, statements("t", 0, 340, 7));
        let b = statements("t", 1, 340, 7);
        let ids = |v: &[String]| -> BTreeSet<i64> {
            v.iter()
                .filter(|s| s.starts_with("INSERT"))
                .map(|s| {
                    s.split("VALUES (")
                        .nth(1)
                        .unwrap()
                        .split(',')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect()
        };
        assert!(ids(&a).is_disjoint(&ids(&b)));
        let count = |p: &str| a.iter().filter(|s| s.starts_with(p)).count();
        assert_eq!(
            (count("INSERT"), count("UPDATE"), count("DELETE")),
            (200, 120, 20)
        );
    }
}
