//! A private mosquitto broker on a free loopback port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::{Proc, RunAs, TempDir, on_free_port, program};

/// A running broker.
#[derive(Debug)]
pub struct Mosquitto {
    pub host: String,
    pub port: u16,
    pub log: PathBuf,
    config: PathBuf,
    proc: Proc,
    run_as: RunAs,
    dir: TempDir,
}

const START_TIMEOUT: Duration = Duration::from_secs(15);

impl Mosquitto {
    /// Starts a broker; `extra` lines are appended to its config (password file, TLS).
    pub fn start(extra: &[String]) -> Result<Mosquitto> {
        let run_as = RunAs::detect()?;
        let dir = TempDir::new("mosquitto-", &run_as)?;
        // Config errors come before logging starts, on stderr: keep one log for both.
        let log = dir.path().join("mosquitto.log");
        let config = dir.path().join("mosquitto.conf");
        let mosquitto = program("mosquitto", "mosquitto")?;
        let (port, proc) = on_free_port("broker (mosquitto)", &log, |port| {
            let mut text = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type all\nconnection_messages true\n"
            );
            for line in extra {
                text.push_str(line);
                text.push('\n');
            }
            std::fs::write(&config, text)?;
            let mut cmd = Command::new(&mosquitto);
            cmd.arg("-c").arg(&config);
            let mut proc = Proc::spawn("broker (mosquitto)", &run_as, &mut cmd, &log)?;
            proc.wait_ready(START_TIMEOUT, || connack(port))?;
            Ok(proc)
        })?;
        Ok(Mosquitto {
            host: "127.0.0.1".into(),
            port,
            log,
            config,
            proc,
            run_as,
            dir,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Starts the broker again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.stop();
        let mut cmd = Command::new(program("mosquitto", "mosquitto")?);
        cmd.arg("-c").arg(&self.config);
        let mut proc = Proc::spawn("broker (mosquitto)", &self.run_as, &mut cmd, &self.log)?;
        let port = self.port;
        proc.wait_ready(START_TIMEOUT, || connack(port))?;
        self.proc = proc;
        Ok(())
    }
}

/// Whether an MQTT 3.1.1 CONNECT gets a CONNACK.
pub fn connack(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    // CONNECT, protocol "MQTT" level 4, clean session, keepalive 10 s, client id "h".
    let packet = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 1, b'h',
    ];
    if s.write_all(&packet).is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && buf[0] == 0x20
}
