//! The link simulator does what the lab and the tunnel tests rely on: passthrough,
//! blackhole, cut, heal, rate and delay, and its control socket.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tether_harness::linksim::{LinkOptions, LinkSim};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// An echo server on port 0.
async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A server that sends `n` bytes then closes.
async fn source(n: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                let _ = s.write_all(&data).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn link(upstream: SocketAddr, opts: LinkOptions) -> LinkSim {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    LinkSim::start(l, upstream, opts).await.unwrap()
}

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn passes_megabytes_intact() {
    let n = 4 * 1024 * 1024;
    let sim = link(source(n).await, LinkOptions::default()).await;
    let mut s = TcpStream::connect(sim.local_addr()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), n);
    assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
}

#[tokio::test]
async fn blackhole_keeps_the_connection_and_delivers_nothing_until_heal() {
    let sim = link(echo().await, LinkOptions::default()).await;
    let mut s = TcpStream::connect(sim.local_addr()).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(T, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    sim.blackhole();
    s.write_all(b"lost").await.unwrap();
    // Neither data nor EOF nor reset for a whole second: the connection looks alive.
    let r = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
    assert!(r.is_err(), "a blackholed link delivered something: {r:?}");
    assert!(sim.stats().dropped >= 4);
    sim.heal();
    s.write_all(b"back").await.unwrap();
    tokio::time::timeout(T, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"back");
}

#[tokio::test]
async fn cut_resets_open_connections_and_refuses_new_ones_until_heal() {
    let sim = link(echo().await, LinkOptions::default()).await;
    let mut s = TcpStream::connect(sim.local_addr()).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 1];
    s.read_exact(&mut buf).await.unwrap();
    let t0 = Instant::now();
    sim.cut();
    let r = tokio::time::timeout(T, s.read(&mut buf)).await.unwrap();
    let seen = t0.elapsed();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(seen < Duration::from_millis(500), "cut seen after {seen:?}");
    // New connections are reset.
    let mut s2 = TcpStream::connect(sim.local_addr()).await.unwrap();
    let _ = s2.write_all(b"y").await;
    let r = tokio::time::timeout(T, s2.read(&mut buf)).await.unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    sim.heal();
    let mut s3 = TcpStream::connect(sim.local_addr()).await.unwrap();
    s3.write_all(b"z").await.unwrap();
    tokio::time::timeout(T, s3.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"z");
}

#[tokio::test]
async fn rate_holds_throughput_within_ten_percent() {
    let rate = 32 * 1024u64;
    let sim = link(
        source(10 * 1024 * 1024).await,
        LinkOptions {
            rate: Some(rate),
            ..LinkOptions::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(sim.local_addr()).await.unwrap();
    let mut buf = vec![0u8; 65536];
    // Skip the first chunk (connection set-up), then measure over about 2.5 s.
    let mut got = 0u64;
    while got < 8192 {
        got += tokio::time::timeout(T, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap() as u64;
    }
    let t0 = Instant::now();
    let mut measured = 0u64;
    while t0.elapsed() < Duration::from_millis(2500) {
        measured += tokio::time::timeout(T, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap() as u64;
    }
    let bps = measured as f64 / t0.elapsed().as_secs_f64();
    eprintln!("rate {rate} B/s: measured {bps:.0} B/s");
    assert!(
        (bps - rate as f64).abs() <= rate as f64 * 0.10,
        "measured {bps:.0} B/s for a {rate} B/s link"
    );
}

#[tokio::test]
async fn delay_adds_the_round_trip_latency() {
    let sim = link(
        echo().await,
        LinkOptions {
            delay: Duration::from_millis(200),
            ..LinkOptions::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(sim.local_addr()).await.unwrap();
    let mut buf = [0u8; 1];
    let mut rtts = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        s.write_all(b"p").await.unwrap();
        tokio::time::timeout(T, s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        rtts.push(t0.elapsed());
    }
    let best = *rtts.iter().min().unwrap();
    eprintln!("delay 200 ms: round trips {rtts:?}");
    assert!(
        best >= Duration::from_millis(195) && best <= Duration::from_millis(260),
        "round trip {best:?} for delay 200"
    );
}

#[tokio::test]
async fn control_socket_answers_ok_errors_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("link.sock");
    let sim = link(
        echo().await,
        LinkOptions {
            control_socket: Some(path.clone()),
            ..LinkOptions::default()
        },
    )
    .await;
    let stream = UnixStream::connect(&path).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut ask = async |cmd: &str| {
        w.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
        tokio::time::timeout(T, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    assert_eq!(ask("rate 16000").await, "ok");
    assert_eq!(ask("delay 300").await, "ok");
    assert!(ask("warp 9").await.starts_with("error: unknown command"));
    assert!(ask("rate lots").await.starts_with("error: "));
    assert_eq!(ask("blackhole").await, "ok");
    let status: serde_json::Value = serde_json::from_str(&ask("status").await).unwrap();
    assert_eq!(status["mode"], "blackhole");
    assert_eq!(status["rate"], 16000);
    assert_eq!(status["delay_ms"], 300);
    assert_eq!(ask("heal").await, "ok");
    assert_eq!(sim.stats().mode, "normal");
}

#[test]
fn the_binary_prints_its_port_proxies_and_stops_on_sigterm() {
    use std::io::{BufRead, Read, Write};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(echo());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tether-link"))
        .args(["--upstream", &upstream.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .expect("first line names the address");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "did not stop within 2 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
