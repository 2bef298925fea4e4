//! The floors capture is read against: the raw-C program
//! (`xtask/bench/raw_capture.c`), which copies the same nodes with nothing
//! around it, and what copying memory can reach on this machine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_spec::record::RunRecord;
use serde::Serialize;
use xshell::{cmd, Shell};

use super::cells::{timed, Capture};
use crate::project::Project;

#[derive(serde::Deserialize)]
pub struct RawC {
    pub with_ms: Vec<f64>,
    pub without_ms: Vec<f64>,
}

/// The raw-C program on a run's nodes and tokens: the floor capture is
/// measured against.
pub struct RawCRun {
    exe: PathBuf,
    model: PathBuf,
    nodes: PathBuf,
    tokens: PathBuf,
    out: PathBuf,
    n_ctx: String,
}

impl RawCRun {
    pub fn prepare(
        exe: &Path,
        model: &Path,
        record: &RunRecord,
        capture: Capture,
        dir: &Path,
    ) -> Result<RawCRun> {
        let run = RawCRun {
            exe: exe.to_path_buf(),
            model: model.to_path_buf(),
            nodes: dir.join("nodes.txt"),
            tokens: dir.join("tokens.txt"),
            out: dir.join("raw-c"),
            n_ctx: record.n_ctx.to_string(),
        };
        std::fs::write(&run.nodes, nodes_file(record, capture))?;
        let ids: Vec<String> = record.tokens.iter().map(|t| t.to_string()).collect();
        std::fs::write(&run.tokens, ids.join(" "))?;
        std::fs::create_dir_all(&run.out)?;
        Ok(run)
    }

    /// Its command line: `repeat` steady passes each way, or 0 for one run.
    fn cmd<'a>(&self, sh: &'a Shell, repeat: &str) -> xshell::Cmd<'a> {
        let RawCRun {
            exe,
            model,
            nodes,
            tokens,
            out,
            n_ctx,
        } = self;
        cmd!(
            sh,
            "{exe} {model} {nodes} {tokens} {out} 2 {n_ctx} {repeat}"
        )
    }

    /// Its steady state over `repeat` passes, with and without copies.
    pub fn steady(&self, sh: &Shell, repeat: &str) -> Result<RawC> {
        let said = self
            .cmd(sh, repeat)
            .quiet()
            .read()
            .context("the raw-C baseline failed")?;
        Ok(serde_json::from_str(&said)?)
    }

    /// One whole process, timed.
    pub fn wall(&self, sh: &Shell) -> Result<f64> {
        timed(self.cmd(sh, "0"))
    }
}

/// The raw-C program's node list: `*`, or `name op ne0 ne1 ne2 ne3` per
/// checkpoint of the run (the kept extent: padded KV cells dropped as the
/// extractor drops them).
fn nodes_file(record: &RunRecord, capture: Capture) -> String {
    if let Capture::EveryNode = capture {
        return "*\n".into();
    }
    let mut text = String::new();
    for c in &record.checkpoints {
        let mut ne: Vec<i64> = c.shape.iter().rev().copied().collect();
        ne.resize(4, 1);
        let _ = writeln!(
            text,
            "{} {} {} {} {} {}",
            c.tensor, c.op, ne[0], ne[1], ne[2], ne[3]
        );
    }
    text
}

/// Compiles `xtask/bench/raw_capture.c` against the active CPU build.
pub fn compile_raw_capture(project: &Project, out: &Path) -> Result<PathBuf> {
    let active: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.active_build_file())?)?;
    let lib_dir = PathBuf::from(
        active["lib_dir"]
            .as_str()
            .context("active-build.json has no lib_dir")?,
    );
    let target = env!("XTASK_TARGET");
    let compiler = cc::Build::new()
        .target(target)
        .host(target)
        .opt_level(2)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .try_get_compiler()
        .context("no C compiler found (install gcc or clang, or set CC)")?;
    let exe = out.join("raw_capture");
    let mut command = compiler.to_command();
    for include in active["include_dirs"].as_array().into_iter().flatten() {
        command.arg("-I").arg(include.as_str().unwrap_or_default());
    }
    command
        .arg(project.root().join("xtask/bench/raw_capture.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib_dir)
        .args(["-lllama", "-lggml", "-lggml-base"])
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    let status = command.status().context("cannot run the C compiler")?;
    ensure!(
        status.success(),
        "the raw-C baseline did not compile (see above)"
    );
    Ok(exe)
}

/// What copying memory can reach on this machine, measured in the same run:
/// the ceiling the copies inside the callback are read against.
#[derive(Serialize)]
pub struct Roofline {
    /// GB/s copying a buffer far larger than the caches on one thread.
    one_thread_gb_per_s: f64,
    /// The same, split over every core.
    all_cores_gb_per_s: f64,
    cores: usize,
}

impl Roofline {
    /// Best of five copies of 256 MB (read and written: the bytes counted once).
    pub fn measure() -> Roofline {
        const BYTES: usize = 256 << 20;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let src = vec![1u8; BYTES];
        let mut dst = vec![0u8; BYTES];
        let mut best = |threads: usize| {
            (0..5)
                .map(|_| {
                    let started = Instant::now();
                    let chunk = BYTES.div_ceil(threads);
                    std::thread::scope(|scope| {
                        for (d, s) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                            scope.spawn(move || d.copy_from_slice(s));
                        }
                    });
                    BYTES as f64 / 1e9 / started.elapsed().as_secs_f64()
                })
                .fold(0.0, f64::max)
        };
        Roofline {
            one_thread_gb_per_s: best(1),
            all_cores_gb_per_s: best(cores),
            cores,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "memcpy roofline (256 MB, best of 5): {:.1} GB/s on one thread, {:.1} GB/s on {} cores\n",
            self.one_thread_gb_per_s, self.all_cores_gb_per_s, self.cores
        )
    }
}
