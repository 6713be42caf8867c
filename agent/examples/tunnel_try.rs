use std::sync::Arc;
use std::time::Duration;
use tether::backoff::BackoffPolicy;
use tether::tunnel::*;
#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or("info".into()))
        .init();
    let key = russh::keys::load_secret_key("/tmp/sshdt/devkey", None).unwrap();
    let pin =
        HostKeyPin::parse(&std::fs::read_to_string("/tmp/sshdt/hostkey.pub").unwrap()).unwrap();
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse().unwrap())
        .unwrap_or(12222);
    let s = TunnelSettings::new(
        Endpoint::new("127.0.0.1", port),
        "root".into(),
        Arc::new(key),
        Some(pin),
        Endpoint::new("127.0.0.1", 13308),
        Endpoint::new("127.0.0.1", 13406),
        Endpoint::new("127.0.0.1", 13306),
    );
    let settings = Arc::new(s);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:13307")
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let (_ctx, crx) = tokio::sync::mpsc::channel(1);
    let sd = tokio_util::sync::CancellationToken::new();
    let t0 = std::time::Instant::now();
    tokio::spawn(run(settings, listener, tx, crx, sd.clone()));
    let sd2 = sd.clone();
    tokio::spawn(async move {
        tokio::signal::ctrl_c().await.ok();
        sd2.cancel();
    });
    while let Some(ev) = rx.recv().await {
        println!("{:>7.2?} {ev:?}", t0.elapsed());
    }
    let _ = Duration::ZERO;
    let _ = BackoffPolicy {
        min: Duration::ZERO,
        max: Duration::ZERO,
        jitter_pct: 0,
    };
}
