//! `tether-link`: the link simulator as a program, for the lab and outside scripts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tether_harness::linksim::{LinkOptions, LinkSim};

#[derive(Parser)]
#[command(about = "A TCP proxy that throttles, delays, cuts and blackholes traffic")]
struct Args {
    /// Address to listen on (port 0 picks a free one; printed on the first line).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where connections go.
    #[arg(long)]
    upstream: SocketAddr,
    /// Unix control socket taking cut, blackhole, heal, rate N, delay MS, status.
    #[arg(long)]
    control: Option<PathBuf>,
    /// Bytes per second per direction (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Added round-trip latency in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay: u64,
    /// Bytes the link may hold per direction and connection.
    #[arg(long, default_value_t = 64 * 1024)]
    queue: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let sim = LinkSim::start(
        listener,
        args.upstream,
        LinkOptions {
            rate: (args.rate > 0).then_some(args.rate),
            delay: Duration::from_millis(args.delay),
            control_socket: args.control,
            queue_bytes: args.queue,
        },
    )
    .await?;
    println!("listening {}", sim.local_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(sim);
    Ok(())
}
