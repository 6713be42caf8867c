//! All the real servers a test needs, started in parallel and torn down together.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::db::{DbOptions, DbServer, Family};
use crate::mariadb::Site;
use crate::mosquitto::Mosquitto;
use crate::process::free_port;
use crate::sshd::{Sshd, SshdOptions};

/// What to start.
#[derive(Debug, Clone)]
pub struct FixtureOptions {
    /// The family each site's database runs (`[office, hub]`): the same at both, except
    /// to prove that a mixed pair is refused.
    pub families: [Family; 2],
    pub databases: bool,
    pub sshd: bool,
    pub broker: bool,
    pub client_alive_interval: Option<u32>,
    /// Both databases unconfigured (`DbOptions::bare`): the pair `tether setup` starts from.
    pub bare: bool,
}

impl FixtureOptions {
    /// Everything, with both sites on `family`.
    pub fn of(family: Family) -> Self {
        FixtureOptions {
            families: [family; 2],
            ..FixtureOptions::default()
        }
    }
}

impl Default for FixtureOptions {
    fn default() -> Self {
        FixtureOptions {
            families: [Family::MariaDb; 2],
            databases: true,
            sshd: true,
            broker: true,
            client_alive_interval: None,
            bare: false,
        }
    }
}

/// One site's database options as the fixture options ask.
fn db_options(opts: &FixtureOptions, site: Site) -> DbOptions {
    let family = match site {
        Site::Office => opts.families[0],
        Site::Hub => opts.families[1],
    };
    DbOptions {
        bare: opts.bare,
        ..DbOptions::new(family, site)
    }
}

/// The two sites' databases, the hub's sshd and the broker.
#[derive(Debug)]
pub struct Fixture {
    pub hub_db: Option<DbServer>,
    pub office_db: Option<DbServer>,
    pub sshd: Option<Sshd>,
    pub broker: Option<Mosquitto>,
    /// The port the hub listens on for the remote forward (permitted by sshd).
    pub remote_listen_port: u16,
    /// How long the start took.
    pub started_in: Duration,
}

impl Fixture {
    /// Starts everything asked for, in parallel. On any failure, what did start is
    /// stopped again and the error names the server that failed.
    pub fn start(opts: FixtureOptions) -> Result<Fixture> {
        let started = Instant::now();
        let remote_listen_port = free_port()?;
        let (hub, office, sshd, broker) = std::thread::scope(|s| {
            let hub = opts
                .databases
                .then(|| s.spawn(|| DbServer::start(db_options(&opts, Site::Hub))));
            let office = opts
                .databases
                .then(|| s.spawn(|| DbServer::start(db_options(&opts, Site::Office))));
            let broker = opts.broker.then(|| s.spawn(|| Mosquitto::start(&[])));
            // sshd needs the hub DB's port for its permitopen; start it once that is known.
            let hub = hub.map(|h| h.join().expect("hub DB thread"));
            let open_port = match &hub {
                Some(Ok(db)) => db.port,
                _ => 3306,
            };
            let sshd = opts.sshd.then(|| {
                Sshd::start(SshdOptions {
                    permit_listen: format!("127.0.0.1:{remote_listen_port}"),
                    permit_open: format!("127.0.0.1:{open_port}"),
                    client_alive_interval: opts.client_alive_interval,
                })
            });
            let office = office.map(|h| h.join().expect("office DB thread"));
            let broker = broker.map(|h| h.join().expect("broker thread"));
            (hub, office, sshd, broker)
        });
        Ok(Fixture {
            hub_db: hub.transpose()?,
            office_db: office.transpose()?,
            sshd: sshd.transpose()?,
            broker: broker.transpose()?,
            remote_listen_port,
            started_in: started.elapsed(),
        })
    }

    pub fn hub_db(&self) -> &DbServer {
        self.hub_db
            .as_ref()
            .expect("fixture started without databases")
    }

    pub fn office_db(&self) -> &DbServer {
        self.office_db
            .as_ref()
            .expect("fixture started without databases")
    }

    pub fn sshd(&self) -> &Sshd {
        self.sshd.as_ref().expect("fixture started without sshd")
    }

    pub fn broker(&self) -> &Mosquitto {
        self.broker
            .as_ref()
            .expect("fixture started without a broker")
    }

    /// Every server process id (for leak checks).
    pub fn pids(&self) -> Vec<u32> {
        [
            self.hub_db.as_ref().and_then(|d| d.pid()),
            self.office_db.as_ref().and_then(|d| d.pid()),
            self.sshd.as_ref().and_then(|d| d.pid()),
            self.broker.as_ref().and_then(|d| d.pid()),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Whether a process is still alive (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .map(|rest| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Every descendant of the current process.
pub fn descendants() -> Vec<u32> {
    descendants_of(std::process::id())
}

/// Every living descendant of `me`.
pub fn descendants_of(me: u32) -> Vec<u32> {
    let mut parents = std::collections::HashMap::<u32, Vec<u32>>::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rsplit(')').next() else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if let Some(ppid) = fields.get(1).and_then(|p| p.parse::<u32>().ok()) {
                parents.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![me];
    while let Some(p) = stack.pop() {
        for c in parents.get(&p).cloned().unwrap_or_default() {
            if alive(c) {
                out.push(c);
            }
            stack.push(c);
        }
    }
    out
}

/// Polls `cond` every 50 ms until true or `timeout`; the error names what was awaited.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "timed out after {timeout:?} waiting for {what}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Context helper so callers can say which server failed.
pub trait Named<T> {
    fn named(self, what: &str) -> Result<T>;
}

impl<T> Named<T> for Result<T> {
    fn named(self, what: &str) -> Result<T> {
        self.with_context(|| what.to_owned())
    }
}
