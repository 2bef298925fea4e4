//! verify's RPC section: two `llorch-checkpoint-rpc-server`s on loopback,
//! the first half of the layers on one and the rest on the other; every
//! checkpoint against a local CPU run, and what capture costs over the wire.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_spec::record::{median, FlashAttnMode, RunRecord};

use super::ctx::Ctx;
use super::report::Report;
use crate::models::prompts::PERF_PROMPT;
use crate::runs::extractor::ExtractorRun;

/// Two RPC servers on loopback, half the layers on each (they are killed
/// when this returns, whatever happened).
pub fn checks(report: &mut Report, ctx: &Ctx<'_>) {
    report.section("rpc: layers on two llorch-checkpoint-rpc-servers on 127.0.0.1");
    let t = Instant::now();
    let servers = match (Server::start(&ctx.exe), Server::start(&ctx.exe)) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(err), _) | (_, Err(err)) => {
            report.check("two RPC servers start", t, Err(err));
            return;
        }
    };
    report.check(
        "two RPC servers start",
        t,
        Ok(format!(
            "{} and {}",
            servers[0].endpoint, servers[1].endpoint
        )),
    );
    let work = ctx.work.join("rpc");
    let t = Instant::now();
    report.check(
        "GPT-2, every layer: each server computes its half; checkpoints and logits bitwise the local CPU's",
        t,
        split_matches_local(ctx, &servers, &ctx.model, &ctx.manifest, &work.join("gpt2")),
    );
    let t = Instant::now();
    let smol = crate::models::model::model_and_manifest(ctx.project, Some("smollm2-135m"), None)
        .and_then(|(model, manifest)| {
            split_matches_local(ctx, &servers, &model, &manifest, &work.join("smollm2"))
        });
    report.check(
        "SmolLM2, every layer: each server computes its half; checkpoints and logits bitwise the local CPU's",
        t,
        smol,
    );
    let t = Instant::now();
    report.info(
        "capture over RPC: steady-state ratio and bytes fetched per checkpoint",
        t,
        cost(ctx, &servers, &work),
    );
    report.tidy(&work);
}

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
/// CPU. The split must be real: the first server's buffer holds the
/// checkpoints of the first half of the layers and only those, the second's
/// the rest. Every checkpoint file and the logits must be bitwise the local
/// run's (NaN and Inf included: the bytes are compared).
pub fn split_matches_local(
    ctx: &Ctx<'_>,
    servers: &[Server; 2],
    model: &Path,
    manifest: &Path,
    work: &Path,
) -> Result<String> {
    let (local, remote) = (work.join("local"), work.join("remote"));
    let every_layer = |out: &Path| {
        ExtractorRun::new(&ctx.exe, model, out)
            .manifest(manifest)
            .layers("all")
            .prompt(PERF_PROMPT)
            .generate(1)
            .flash_attn(FlashAttnMode::Off)
    };
    every_layer(&local).run(&ctx.sh)?;
    let n_layer = u32::try_from(RunRecord::read(&local)?.model.n_layer)?;
    let rpc = format!("{},{}", servers[0].endpoint, servers[1].endpoint);
    // llama.cpp counts the output layer too: n/2 blocks on the first server.
    let split = format!("{},{}", n_layer / 2, n_layer + 1 - n_layer / 2);
    every_layer(&remote)
        .args([
            "--rpc",
            &rpc,
            "--n-gpu-layers",
            "99",
            "--tensor-split",
            &split,
        ])
        .run(&ctx.sh)?;
    let (mine, theirs) = (RunRecord::read(&local)?, RunRecord::read(&remote)?);
    let halves = [0..n_layer / 2, n_layer / 2..n_layer];
    for (server, half) in servers.iter().zip(&halves) {
        let held: BTreeSet<u32> = theirs
            .checkpoints
            .iter()
            .filter(|c| c.buffer.contains(&server.endpoint))
            .filter_map(|c| c.layer)
            .collect();
        ensure!(
            held == half.clone().collect::<BTreeSet<u32>>(),
            "the server on {} holds the checkpoints of layers {held:?}, not of layers {}-{}",
            server.endpoint,
            half.start,
            half.end - 1
        );
    }
    let differing = differing_files(&mine, &local, &theirs, &remote)?;
    ensure!(
        differing.is_empty(),
        "over RPC, {} of {} files differ from the local run: {}",
        differing.len(),
        mine.checkpoints.len() + 1,
        differing.join(", ")
    );
    let shown = |h: &std::ops::Range<u32>| format!("{}-{}", h.start, h.end - 1);
    Ok(format!(
        "layers {} on {}, {} on {}: all {} checkpoint files and logits.bin bitwise equal to the local CPU run",
        shown(&halves[0]),
        servers[0].endpoint,
        shown(&halves[1]),
        servers[1].endpoint,
        mine.checkpoints.len()
    ))
}

/// The files of run `a` (and its logits) whose bytes differ in run `b`, or are missing there.
fn differing_files(
    a: &RunRecord,
    a_dir: &Path,
    b: &RunRecord,
    b_dir: &Path,
) -> Result<Vec<String>> {
    ensure!(
        a.checkpoints.len() == b.checkpoints.len(),
        "{} checkpoints locally, {} over RPC",
        a.checkpoints.len(),
        b.checkpoints.len()
    );
    let files = a
        .checkpoints
        .iter()
        .map(|c| &c.file)
        .chain([&a.logits.file]);
    let mut differing = Vec::new();
    for file in files {
        let ours =
            std::fs::read(a_dir.join(file)).with_context(|| format!("cannot read {file}"))?;
        if std::fs::read(b_dir.join(file)).ok().as_deref() != Some(&ours[..]) {
            differing.push(file.clone());
        }
    }
    Ok(differing)
}

/// Capture over the wire: steady-state decode with and without capture (both
/// offloaded), and the bytes each checkpoint fetched from its server.
pub fn cost(ctx: &Ctx<'_>, servers: &[Server; 2], work: &Path) -> Result<String> {
    let out: PathBuf = work.join("cost");
    let rpc = format!("{},{}", servers[0].endpoint, servers[1].endpoint);
    ctx.run(&out)
        .layers("all")
        .prompt(PERF_PROMPT)
        .generate(0)
        .repeat(7)
        .flash_attn(FlashAttnMode::Off)
        .args(["--rpc", &rpc, "--n-gpu-layers", "99"])
        .run(&ctx.sh)?;
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
