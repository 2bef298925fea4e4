//! `llorch-checkpoint-rpc-server`: serves a device of this llama.cpp build to
//! extractors on other hosts (`--rpc HOST:PORT`), through ggml's RPC backend.
//! The pinned crate does not ship llama.cpp's own `rpc-server`.
//!
//! The RPC protocol has no authentication and no encryption: anyone who
//! reaches the port can run code on the device and read its memory. It binds
//! to the address given, 127.0.0.1 by default, and warns for any other.

#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::process::ExitCode;

use clap::Parser;
use llorch_checkpoint_extractor::ffi;

#[derive(Parser)]
#[command(
    version,
    about = "Serve this build's device to llorch-checkpoint-extractor --rpc over ggml's RPC protocol",
    after_help = "The protocol has no authentication: bind to loopback (the default) or to a network only trusted hosts reach.\n\
                  Example, on the host that computes: llorch-checkpoint-rpc-server --host 10.0.0.2 --port 50052\n\
                  and on the client: llorch-checkpoint-extractor -m MODEL --manifest M --rpc 10.0.0.2:50052 --n-gpu-layers 99"
)]
struct Cli {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(short, long, default_value_t = 50052)]
    port: u16,
    /// CPU threads for the device's computation [default: all cores].
    #[arg(short, long)]
    threads: Option<usize>,
    /// The device to serve (see llorch-checkpoint-extractor --system-info).
    #[arg(long, default_value = "CPU")]
    device: String,
    /// Show llama.cpp's own log.
    #[arg(short = 'v', long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    llorch_checkpoint_extractor::cli::init_logging(cli.verbose);
    if !cli.host.is_loopback() {
        eprintln!(
            "warning: listening on {}: the RPC protocol has no authentication; anyone who reaches this port \
             can run computations on this host and read what it holds. Use only on a network you trust.",
            cli.host
        );
    }
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get()));
    let endpoint = match cli.host {
        IpAddr::V6(ip) => format!("[{ip}]:{}", cli.port),
        IpAddr::V4(ip) => format!("{ip}:{}", cli.port),
    };
    eprintln!(
        "rpc-server: serving {} on {endpoint} with {threads} threads",
        cli.device
    );
    llorch_checkpoint_extractor::cli::exit_code(ffi::rpc::serve(&endpoint, &cli.device, threads))
}
