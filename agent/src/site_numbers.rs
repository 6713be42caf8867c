//! The numbers each site of a hub needs (`server_id`, MariaDB GTID domain,
//! `auto_increment_offset`, `auto_increment_increment`), which ones the hub shows as
//! taken by other offices, and the next free one (pure; the hub is read by
//! [`crate::doctor::gather`]).
//!
//! One number per site, used for all three: the hub is 1, each office the next unused
//! number from 2 up (README "Several offices on one hub"). The hub shows each office's
//! `server_id` as the source id of that office's connection (channel) and, on MariaDB,
//! each office's GTID domains as the domains its server id wrote in the hub's
//! `gtid_binlog_state`. An office's `auto_increment_offset` is not visible from the hub:
//! tying it to the same number is what keeps the lanes apart.

use crate::events::{Finding, Severity};

/// The number the hub has: its `server_id`, GTID domain and offset.
pub const HUB_NUMBER: u64 = 1;

/// Another office the hub replicates from, as the hub shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OtherOffice {
    /// The hub's connection (MariaDB) or channel (MySQL) for it: its site id.
    pub connection: String,
    /// Its server's `server_id` (the connection's source id; `None` before it ever
    /// connected).
    pub server_id: Option<u64>,
    /// The GTID domains its server wrote, as relayed by the hub (MariaDB; empty until it
    /// wrote something, and always on MySQL).
    pub domains: Vec<u64>,
}

/// The numbers one site uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteNumbers {
    /// The site's number: its `server_id`, GTID domain and `auto_increment_offset`.
    pub number: u64,
    /// The sites planned, hub included: every server's `auto_increment_increment`.
    pub increment: u64,
}

impl SiteNumbers {
    /// The `[mysqld]` lines for a server of `family` (MySQL has no GTID domain: its GTIDs
    /// carry each server's own `server_uuid`).
    pub fn config_lines(&self, family: crate::dialect::Family) -> Vec<String> {
        let n = self.number;
        let mut out = vec![format!("server_id = {n}")];
        if family == crate::dialect::Family::MariaDb {
            out.push(format!("gtid_domain_id = {n}"));
        }
        out.push(format!("auto_increment_offset = {n}"));
        out.push(format!("auto_increment_increment = {}", self.increment));
        out
    }
}

/// The `(server_id, domain)` pairs of a MariaDB `gtid_binlog_state`
/// (`domain-server-seqno,...`).
pub fn writers_of_binlog_state(state: &str) -> Vec<(u64, u64)> {
    state
        .split(',')
        .filter_map(|g| {
            let mut parts = g.trim().split('-');
            let domain = parts.next()?.parse().ok()?;
            let server = parts.next()?.parse().ok()?;
            Some((server, domain))
        })
        .collect()
}

/// The other offices as the hub shows them: its replication connections but `own` (this
/// office's), each with the domains its source's server id wrote in `binlog_state`.
pub fn other_offices(
    connections: &[(String, Option<u64>)],
    binlog_state: &str,
    own: &str,
) -> Vec<OtherOffice> {
    let writers = writers_of_binlog_state(binlog_state);
    connections
        .iter()
        .filter(|(name, _)| name != own && !name.is_empty())
        .map(|(name, server_id)| {
            let server_id = server_id.filter(|id| *id != 0);
            let mut domains: Vec<u64> = writers
                .iter()
                .filter(|(s, _)| Some(*s) == server_id)
                .map(|(_, d)| *d)
                .collect();
            domains.sort_unstable();
            domains.dedup();
            OtherOffice {
                connection: name.clone(),
                server_id,
                domains,
            }
        })
        .collect()
}

/// The numbers in use at the hub: its own and every other office's. A server id above
/// the increment (a site numbered another way, such as 11 and 12 for a hub and its first
/// office) cannot be an offset: the lane it would fall in counts as taken too, since that
/// site's offset is not visible from the hub and is most likely that lane.
fn taken(
    hub_server_id: Option<u64>,
    hub_domain: Option<u64>,
    others: &[OtherOffice],
    increment: u64,
) -> Vec<u64> {
    let mut out = vec![HUB_NUMBER];
    out.extend(hub_server_id);
    out.extend(hub_domain);
    for o in others {
        out.extend(o.server_id);
        out.extend(o.domains.iter().copied());
    }
    let lanes: Vec<u64> = out
        .iter()
        .filter(|n| increment > 0 && **n > increment)
        .map(|n| match n % increment {
            0 => increment,
            lane => lane,
        })
        .collect();
    out.extend(lanes);
    out.sort_unstable();
    out.dedup();
    out
}

/// The next office's numbers: the smallest number from 2 to `planned_sites` that neither
/// the hub nor another office uses; an error saying why when every lane is taken.
pub fn propose(
    hub_server_id: Option<u64>,
    hub_domain: Option<u64>,
    others: &[OtherOffice],
    planned_sites: u64,
) -> Result<SiteNumbers, String> {
    let used = taken(hub_server_id, hub_domain, others, planned_sites);
    (HUB_NUMBER + 1..=planned_sites)
        .find(|n| !used.contains(n))
        .map(|number| SiteNumbers {
            number,
            increment: planned_sites,
        })
        .ok_or_else(|| {
            format!(
                "every number from 1 to {planned_sites} (site.planned_sites) is taken by the hub or its {} other offices: a further office has no auto_increment lane of its own. Raising planned_sites means changing auto_increment_increment on every server at the same moment with writes stopped everywhere.",
                others.len()
            )
        })
}

/// Checks an explicit number (`tether enroll --site-number N`) against what is taken.
pub fn check_number(
    number: u64,
    hub_server_id: Option<u64>,
    hub_domain: Option<u64>,
    others: &[OtherOffice],
    planned_sites: u64,
) -> Result<SiteNumbers, String> {
    if number <= HUB_NUMBER || number > planned_sites {
        return Err(format!(
            "site number {number}: an office's number is from 2 to site.planned_sites ({planned_sites}); 1 is the hub's, and a number above the increment gets no lane of its own"
        ));
    }
    // (`number` is above the hub's here, so only the office's own numbers can match.)
    if let Some(o) = others
        .iter()
        .find(|o| taken(None, None, std::slice::from_ref(o), planned_sites).contains(&number))
    {
        return Err(format!(
            "site number {number} is already used by the office on the hub's connection '{}'",
            o.connection
        ));
    }
    if taken(hub_server_id, hub_domain, &[], planned_sites).contains(&number) {
        return Err(format!("site number {number} is the hub's own"));
    }
    Ok(SiteNumbers {
        number,
        increment: planned_sites,
    })
}

/// The doctor's check of this office's `server_id` and GTID domain against the other
/// offices the hub replicates from: a duplicate is refused, naming that office's
/// connection. `office_domain` is `None` on MySQL.
pub fn conflicts(
    office_server_id: Option<u64>,
    office_domain: Option<u64>,
    others: &[OtherOffice],
    family: crate::dialect::Family,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let noun = match family {
        crate::dialect::Family::MariaDb => "connection",
        crate::dialect::Family::MySql => "channel",
    };
    if let Some(id) = office_server_id
        && let Some(o) = others.iter().find(|o| o.server_id == Some(id))
    {
        out.push(Finding {
            severity: Severity::NeedsAttention,
            code: "server_id_taken".into(),
            message: format!(
                "The office database has server_id = {id}, the same as office '{}' (the hub's {noun} '{}' replicates from a server with that id): the hub would take this office's changes for that office's, and each office would ignore the other's as its own.",
                o.connection, o.connection
            ),
            fix: format!(
                "Give this office a number no other site uses (`tether enroll` proposes the next free one) and set server_id, auto_increment_offset{} to it in the office server's config, then restart it.",
                if family == crate::dialect::Family::MariaDb { " and gtid_domain_id" } else { "" }
            ),
        });
    }
    if let Some(domain) = office_domain
        && let Some(o) = others.iter().find(|o| o.domains.contains(&domain))
    {
        out.push(Finding {
            severity: Severity::NeedsAttention,
            code: "gtid_domain_taken".into(),
            message: format!(
                "The office database writes in gtid_domain_id = {domain}, a domain office '{}' (the hub's connection '{}') already writes in: the hub cannot keep the two offices' positions apart.",
                o.connection, o.connection
            ),
            fix: "Give this office a GTID domain no other site has ever used (its site number: `tether enroll` proposes the next free one) in the office server's config, and restart it.".into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Family;

    fn office(name: &str, id: u64, domains: &[u64]) -> OtherOffice {
        OtherOffice {
            connection: name.into(),
            server_id: Some(id),
            domains: domains.to_vec(),
        }
    }

    #[test]
    fn the_hubs_connections_and_binlog_state_name_each_offices_numbers() {
        let connections = [
            ("office-1".to_owned(), Some(2)),
            ("office-2".to_owned(), Some(3)),
            ("office-4".to_owned(), Some(0)),
        ];
        let others = other_offices(&connections, "1-1-40,2-2-17, 3-3-5,2-3-1", "office-2");
        assert_eq!(
            others,
            [
                office("office-1", 2, &[2]),
                OtherOffice {
                    connection: "office-4".into(),
                    server_id: None,
                    domains: vec![],
                }
            ]
        );
    }

    #[test]
    fn the_next_office_gets_the_smallest_free_number() {
        let others = [office("office-1", 2, &[2]), office("office-3", 4, &[4])];
        let n = propose(Some(1), Some(1), &others, 10).unwrap();
        assert_eq!(n.number, 3);
        assert_eq!(
            n.config_lines(Family::MariaDb),
            [
                "server_id = 3",
                "gtid_domain_id = 3",
                "auto_increment_offset = 3",
                "auto_increment_increment = 10"
            ]
        );
        assert_eq!(n.config_lines(Family::MySql).len(), 3);
        // A domain without a server id seen (a connection that never connected) counts.
        let others = [OtherOffice {
            connection: "office-1".into(),
            server_id: None,
            domains: vec![2],
        }];
        assert_eq!(propose(Some(1), Some(1), &others, 3).unwrap().number, 3);
    }

    #[test]
    fn a_site_numbered_above_the_increment_keeps_its_likely_lane() {
        // A hub and first office numbered 11 and 12 (offset 2): 2 is not offered.
        let others = [office("office-1", 12, &[1])];
        assert_eq!(propose(Some(11), Some(0), &others, 10).unwrap().number, 3);
        let e = check_number(2, Some(11), Some(0), &others, 10).unwrap_err();
        assert!(e.contains("'office-1'"), "{e}");
    }

    #[test]
    fn no_lane_left_says_why() {
        let others = [office("office-1", 2, &[2]), office("office-2", 3, &[3])];
        let e = propose(Some(1), Some(1), &others, 3).unwrap_err();
        assert!(
            e.contains("planned_sites") && e.contains("2 other offices"),
            "{e}"
        );
    }

    #[test]
    fn an_explicit_number_is_checked() {
        let others = [office("office-1", 2, &[2])];
        assert_eq!(
            check_number(5, Some(1), Some(1), &others, 10)
                .unwrap()
                .number,
            5
        );
        let e = check_number(2, Some(1), Some(1), &others, 10).unwrap_err();
        assert!(e.contains("'office-1'"), "{e}");
        assert!(check_number(1, Some(1), Some(1), &others, 10).is_err());
        assert!(check_number(11, Some(1), Some(1), &others, 10).is_err());
        let e = check_number(7, Some(7), Some(1), &others, 10).unwrap_err();
        assert!(e.contains("hub"), "{e}");
    }

    #[test]
    fn a_duplicate_of_another_office_is_refused_naming_its_connection() {
        let others = [office("office-1", 2, &[2])];
        let f = conflicts(Some(2), Some(2), &others, Family::MariaDb);
        let codes: Vec<&str> = f.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, ["server_id_taken", "gtid_domain_taken"]);
        assert!(f.iter().all(|f| f.severity == Severity::NeedsAttention));
        assert!(f.iter().all(|f| f.message.contains("'office-1'")), "{f:?}");
        assert!(conflicts(Some(3), Some(3), &others, Family::MariaDb).is_empty());
        let f = conflicts(Some(2), None, &others, Family::MySql);
        assert!(f[0].message.contains("channel 'office-1'"), "{f:?}");
    }
}
