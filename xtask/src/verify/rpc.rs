//! verify's RPC section: two `llorch-checkpoint-rpc-server`s on loopback,
//! the first half of the layers on one and the rest on the other; every
//! checkpoint against a local CPU run, and what capture costs over the wire.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_spec::record::{median, RunRecord};
use xshell::{cmd, Shell};

use super::checks::quietly;
use super::PERF_PROMPT;

/// A server on a free loopback port, killed when dropped (whatever happens).
pub struct Server {
    child: Child,
    pub endpoint: String,
}

impl Server {
    pub fn start(exe: &Path) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(exe.with_file_name("llorch-checkpoint-rpc-server"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "-t",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start llorch-checkpoint-rpc-server")?;
        let server = Server {
            child,
            endpoint: format!("127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&server.endpoint).is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the RPC server on {} did not start in 5 s", server.endpoint)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One model's layers over two servers against the same run on the local
/// CPU: which buffer each half came from, how many checkpoints are bitwise
/// equal (and the worst NMSE of the others), and the logits.
#[allow(clippy::too_many_arguments)]
pub fn split_matches_local(
    sh: &Shell,
    exe: &Path,
    servers: &[Server; 2],
    model: &Path,
    manifest: &Path,
    n_layer: u32,
    work: &Path,
) -> Result<String> {
    let (local, remote) = (work.join("local"), work.join("remote"));
    let rpc = format!("{},{}", servers[0].endpoint, servers[1].endpoint);
    // llama.cpp counts the output layer too: n/2 blocks on the first server.
    let split = format!("{},{}", n_layer / 2, n_layer + 1 - n_layer / 2);
    quietly(cmd!(sh, "{exe} -m {model} --manifest {manifest} --layers all -p {PERF_PROMPT} -n 1 -t 2 --out {local}"))?;
    quietly(cmd!(sh, "{exe} -m {model} --manifest {manifest} --layers all -p {PERF_PROMPT} -n 1 -t 2 --out {remote} --rpc {rpc} --n-gpu-layers 99 --tensor-split {split}"))?;
    let record = RunRecord::read(&remote)?;
    let on = |endpoint: &str| {
        record
            .checkpoints
            .iter()
            .filter(|c| c.buffer.contains(endpoint))
            .filter_map(|c| c.layer)
            .fold((u32::MAX, 0), |(lo, hi), l| (lo.min(l), hi.max(l)))
    };
    let (a, b) = (on(&servers[0].endpoint), on(&servers[1].endpoint));
    ensure!(
        a.1 < b.0,
        "the layers are not split in two: {} holds {a:?}, {} holds {b:?}",
        servers[0].endpoint,
        servers[1].endpoint
    );
    let diff = exe.with_file_name("llorch-checkpoint-diff");
    let json = work.join("diff.json");
    let _ = cmd!(
        sh,
        "{diff} compare {local} {remote} --manifest {manifest} --max-nmse 1e-9 --json {json}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    let compared: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let rows = compared["checkpoints"]
        .as_array()
        .context("no checkpoints compared")?;
    let bitwise = rows
        .iter()
        .filter(|r| r["stats"]["bitwise_equal"] == true)
        .count();
    let worst = rows
        .iter()
        .filter_map(|r| r["stats"]["nmse"].as_f64())
        .fold(0f64, f64::max);
    let logits = compared["logits"]["stats"]["bitwise_equal"] == true;
    ensure!(
        worst <= 1e-9 && compared["logits"]["pass"] == true,
        "over RPC the checkpoints differ from the local run: worst NMSE {worst:e}, {bitwise} of {} bitwise",
        rows.len()
    );
    Ok(format!(
        "layers {}-{} on {}, {}-{} on {}: {bitwise} of {} checkpoints bitwise equal to the local CPU run (worst NMSE {worst:.1e}); logits {}",
        a.0,
        a.1,
        servers[0].endpoint,
        b.0,
        b.1,
        servers[1].endpoint,
        rows.len(),
        if logits { "bitwise equal" } else { "within 1e-9" }
    ))
}

/// Capture over the wire: steady-state decode with and without capture (both
/// offloaded), and the bytes each checkpoint fetched from its server.
pub fn cost(
    sh: &Shell,
    exe: &Path,
    servers: &[Server; 2],
    model: &Path,
    manifest: &Path,
    work: &Path,
) -> Result<String> {
    let out: PathBuf = work.join("cost");
    let rpc = format!("{},{}", servers[0].endpoint, servers[1].endpoint);
    quietly(cmd!(sh, "{exe} -m {model} --manifest {manifest} -p {PERF_PROMPT} -n 0 -t 2 --repeat 7 --out {out} --rpc {rpc} --n-gpu-layers 99"))?;
    let record = RunRecord::read(&out)?;
    let steady = record.steady.context("no steady-state figures")?;
    let bytes: Vec<f64> = record
        .checkpoints
        .iter()
        .map(|c| c.fetched_bytes as f64)
        .collect();
    let data: f64 = record
        .checkpoints
        .iter()
        .map(|c| c.shape.iter().product::<i64>() as f64 * 4.0)
        .sum();
    let (with, without, asked) = (
        median(&steady.with_ms),
        median(&steady.without_ms),
        median(&steady.asked_ms),
    );
    Ok(format!(
        "{} checkpoints over RPC, steady-state decode: {without:.1} ms without capture, {asked:.1} ms asking for the \
         nodes without reading them ({:+.1} ms: the scheduler stops at each, one sub-graph sent and waited for per \
         node), {with:.1} ms reading them too ({:+.1} ms: a tensor_get round trip each); ratio {:.3}. \
         {:.0} kB fetched per checkpoint (median; {:.1} MB in all for {:.1} MB of f32 kept: strided views and \
         the transposed V cache are fetched to their last kept byte)",
        record.checkpoints.len(),
        asked - without,
        with - asked,
        steady.ratio(),
        median(&bytes) / 1e3,
        bytes.iter().sum::<f64>() / 1e6,
        data / 1e6,
    ))
}
