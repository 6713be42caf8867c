//! `cargo xtask lab`: a complete two-site setup on this machine (both databases, the hub's
//! sshd, the broker, the link simulator at 128 kbit/s and 300 ms, the agent with its
//! simulated board, two-way replication through the agent's tunnel; MariaDB, or MySQL
//! with `--db mysql`), drawn in the
//! terminal with keys to cut, blackhole and heal the link. `--headless` runs the same
//! without the screen until SIGINT/SIGTERM. Either way it writes target/lab/lab.json once
//! everything is ready, and tears everything down at the end. `--bare` brings up an
//! unconfigured pair instead (no accounts, no replication, the servers' own defaults),
//! where `tether setup` starts; it runs without the screen and restarts the agent when
//! the config file changes, as `tether setup` asks.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use tether_board::LedState;
use tether_harness::db::Family;
use tether_harness::lab::{AgentMode, Lab, LabOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub fn run(headless: bool, family: Family, bare: bool) -> Result<()> {
    crate::install::ensure()?;
    crate::run(crate::cargo().args(["build", "--quiet", "-p", "tether", "--bin", "tether"]))?;
    let bin = crate::root().join("target/debug/tether");
    let dir = crate::root().join("target/lab");
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(lab(bin, dir, headless, family, bare))
}

async fn lab(bin: PathBuf, dir: PathBuf, headless: bool, family: Family, bare: bool) -> Result<()> {
    eprintln!(
        "lab: starting both databases ({family}{}), the hub's sshd, the broker, the link and the agent ...",
        if bare { ", unconfigured" } else { "" }
    );
    let mut opts = LabOptions::office_link(dir.clone(), AgentMode::Binary(bin));
    opts.family = family;
    let lab = if bare {
        Lab::start_bare(opts).await
    } else {
        Lab::start(opts).await
    }
    .context("the lab did not come up")?;
    if bare {
        eprintln!(
            "lab: the pair is unconfigured; set it up with `TETHER_HUB_ADMIN_PASSWORD=... TETHER_OFFICE_ADMIN_PASSWORD=... target/debug/tether setup --config {}` (root's passwords are in lab.json); the lab restarts the agent when it rewrites the config",
            lab.config_path.display()
        );
    }
    let json_path = dir.join("lab.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&lab.lab_json())?)?;
    eprintln!(
        "lab: ready; everything is described in {}",
        json_path.display()
    );
    if let Some(url) = lab.web_url() {
        eprintln!("lab: the status page is at {url}");
    }
    let mut lab = lab;
    let result = if bare {
        // No terminal UI: the lab restarts the agent when `tether setup` rewrites its
        // config, as the service manager would be asked to.
        let signal = wait_for_signal();
        lab.restarting_on_config_change(signal, |path| {
            eprintln!(
                "lab: {} changed; restarting the agent with it",
                path.display()
            )
        })
        .await
        .and_then(|r| r)
    } else if headless {
        wait_for_signal().await
    } else {
        screen(&lab).await
    };
    eprintln!("lab: tearing down ...");
    drop(lab);
    let _ = std::fs::remove_file(&json_path);
    result
}

async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// Restores the terminal however the screen ends.
struct Raw;

impl Raw {
    fn enter() -> Result<Raw> {
        terminal::enable_raw_mode()?;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(Raw)
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

async fn screen(lab: &Lab) -> Result<()> {
    let board_path = lab
        .config
        .board
        .sim_socket
        .clone()
        .context("the lab's board is simulated")?;
    let leds = std::sync::Arc::new(std::sync::Mutex::new(None::<LedState>));
    let (press_tx, mut press_rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    {
        // The simulated board's socket: LED lines in, button gestures out. No connection
        // means the agent is gone: the board is dark.
        let leds = leds.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(stream) = tokio::net::UnixStream::connect(&board_path).await {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    loop {
                        tokio::select! {
                            l = lines.next_line() => match l {
                                Ok(Some(l)) => *leds.lock().unwrap() = tether_board::sim::decode(&l),
                                _ => break,
                            },
                            Some(p) = press_rx.recv() => { let _ = w.write_all(format!("{p}\n").as_bytes()).await; }
                        }
                    }
                }
                *leds.lock().unwrap() = None;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }
    let _raw = Raw::enter()?;
    let mut message = String::from("ready");
    loop {
        let doc = lab.state().await.ok();
        let shown = *leds.lock().unwrap();
        draw(lab, doc.as_ref(), shown, &message)?;
        let key = tokio::task::spawn_blocking(|| -> Option<(KeyCode, KeyModifiers)> {
            if event::poll(Duration::from_millis(200)).ok()?
                && let Ok(Event::Key(k)) = event::read()
                && k.kind == KeyEventKind::Press
            {
                return Some((k.code, k.modifiers));
            }
            None
        })
        .await?;
        match key {
            Some((KeyCode::Char('c'), KeyModifiers::CONTROL)) | Some((KeyCode::Char('q'), _)) => {
                return Ok(());
            }
            Some((KeyCode::Char('c'), _)) => {
                lab.link.cut();
                message = "link cut (connections reset, new ones refused)".into();
            }
            Some((KeyCode::Char('b'), _)) => {
                lab.link.blackhole();
                message = "link blackholed (open, but nothing gets through)".into();
            }
            Some((KeyCode::Char('h'), _)) => {
                lab.link.heal();
                message = "link healed".into();
            }
            Some((KeyCode::Char('s'), _)) => {
                let _ = press_tx.try_send("short");
                message = "button: short press (LED self-test)".into();
            }
            Some((KeyCode::Char('l'), _)) => {
                let _ = press_tx.try_send("long");
                message = "button: long press (reconnect now)".into();
            }
            _ => {}
        }
    }
}

fn draw(
    lab: &Lab,
    doc: Option<&serde_json::Value>,
    leds: Option<LedState>,
    message: &str,
) -> Result<()> {
    let mut out = std::io::stdout();
    execute!(
        out,
        cursor::MoveTo(0, 0),
        terminal::Clear(terminal::ClearType::All)
    )?;
    let mut lines = vec![
        format!(
            "tether lab ({}): office <-> 128 kbit/s, 300 ms link <-> hub",
            lab.fixture.office_db().family
        ),
        String::new(),
        format!(
            "  board:  {}",
            match leds {
                Some(s) => tether_board::sim::render_line(s, true),
                None => "(dark: the agent is not running)".into(),
            }
        ),
        String::new(),
    ];
    match doc {
        Some(d) => {
            lines.push(format!(
                "  verdict: {}   since {}",
                d["verdict"].as_str().unwrap_or("?"),
                d["since"].as_str().unwrap_or("?")
            ));
            for r in d["reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
            {
                lines.push(format!("    - {r}"));
            }
            let t = &d["tunnel"];
            lines.push(format!(
                "  tunnel: {}   reconnects {}",
                if t["up"] == true { "up" } else { "down" },
                t["reconnects"]
            ));
            for dir in ["hub_to_office", "office_to_hub"] {
                let r = &d["replication"][dir];
                lines.push(format!(
                    "  {dir:<14} io {:<5} sql {:<5} lag {} s",
                    r["io_running"].to_string(),
                    r["sql_running"].to_string(),
                    r["lag_s"]
                ));
            }
        }
        None => lines.push("  (the agent does not answer on its status socket)".into()),
    }
    let s = lab.link.stats();
    lines.push(String::new());
    lines.push(format!(
        "  link: {}   up {} B   down {} B   dropped {} B",
        s.mode, s.bytes_up, s.bytes_down, s.dropped
    ));
    lines.push(format!(
        "  lab.json: {}",
        lab.dir().join("lab.json").display()
    ));
    if let Some(url) = lab.web_url() {
        lines.push(format!("  status page: {url}"));
    }
    lines.push(String::new());
    lines.push("  keys: [c]ut  [b]lackhole  [h]eal  [s]hort press  [l]ong press  [q]uit".into());
    lines.push(format!("  > {message}"));
    for l in lines {
        write!(out, "{l}\r\n")?;
    }
    out.flush()?;
    Ok(())
}
