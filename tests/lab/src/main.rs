//! `mediaproxy-lab`: the demo and the benchmark. `mediaproxy demo` and `mediaproxy bench` run
//! this binary, installed beside the relay's.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mediaproxy-lab",
    version,
    about = "The demo and the packet-rate benchmark of the mediaproxy relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a namespace topology and show media flowing through one relay, and through two
    /// relays in series behind a NAT (the deadlock, and its resolution by probing).
    Demo(mediaproxy_lab::demo::DemoArgs),
    /// Measure packet rates of every forwarding mode side by side (and rtpengine's).
    Bench(mediaproxy_lab::bench::BenchArgs),
    /// The benchmark's kernel-socket baseline relay (started by `bench`).
    #[command(hide = true)]
    BenchSocketRelay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        from: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        back_to: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Cmd::Demo(a) => mediaproxy_lab::demo::run(&a),
        Cmd::Bench(a) => mediaproxy_lab::bench::run(&a),
        Cmd::BenchSocketRelay {
            listen,
            from,
            to,
            back_to,
        } => mediaproxy_lab::bench::socket_relay(listen, from, to, back_to),
    }
}
