//! `cargo xtask bench`: what capturing checkpoints costs, against no capture
//! and against the least a C program can do (`xtask/bench/raw_capture.c`).
//!
//! For each prompt length and capture (the nine checkpoints, every layer's,
//! every node of the graph), on the default synthetic GPT-2 (CPU, 2 threads):
//! - steady state: the extractor's `--repeat N` (the prompt decoded N times
//!   each way in one process, alternating no callback and capture), and the
//!   same in the raw-C program: median ratio with/without and the spread;
//! - whole process: `--runs` alternating runs with capture and with
//!   `--no-extract` (and of the raw-C program), median wall time;
//! - MB captured, MB/s written (the writer's busy time), peak RSS, and whether
//!   logits are bitwise equal with and without capture.
//!
//! Writes a table, `bench.json` and `cost.svg` (cost against captured bytes)
//! into `--out`. Timings are figures to read, never pass/fail thresholds.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_spec::record::{median, RunRecord};
use serde::Serialize;
use xshell::{cmd, Shell};

use crate::build::Backend;
use crate::extract::ensure_extractor;
use crate::project::Project;

#[derive(clap::Args)]
pub struct Bench {
    /// Prompt lengths in tokens (approximate: the table gives the real count; at most 1020).
    #[arg(long, value_delimiter = ',', default_value = "2,128,512,1000")]
    prompts: Vec<usize>,
    /// Steady-state passes each way.
    #[arg(long, default_value_t = 7)]
    repeat: usize,
    /// Whole-process runs each way, alternating.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the runs, bench.json and cost.svg go [default: target/llorch/bench].
    #[arg(long)]
    out: Option<PathBuf>,
    /// More flags for every extractor run, e.g. `--extra='--copy-threads 2 --load read'`
    /// (two threads copying, the weights read at load) to measure what those choices buy.
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    extra: String,
    /// An extractor binary to measure instead of this checkout's, built against the same
    /// llama.cpp (an earlier commit's, say): what a change bought, one bench right after the other.
    #[arg(long, value_name = "PATH")]
    extractor: Option<PathBuf>,
}

/// What is captured.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Capture {
    /// `manifests/gpt2.yaml`: the seed's nine checkpoints of layer 0.
    Nine,
    /// `manifests/gpt2.yaml --layers all`: the nine of each of the 12 layers.
    AllLayers,
    /// `--tensors '*'`: every node of the graph.
    EveryNode,
}

const CAPTURES: [Capture; 3] = [Capture::Nine, Capture::AllLayers, Capture::EveryNode];

impl Capture {
    fn name(self) -> &'static str {
        match self {
            Capture::Nine => "nine",
            Capture::AllLayers => "all layers",
            Capture::EveryNode => "every node",
        }
    }

    fn flags(self, project: &Project, extra: &str) -> Vec<String> {
        let manifest = project.root().join("manifests/gpt2.yaml");
        let manifest = manifest.display().to_string();
        let mut flags: Vec<String> = match self {
            Capture::Nine => vec!["--manifest".into(), manifest],
            Capture::AllLayers => vec!["--manifest".into(), manifest, "--layers=all".into()],
            Capture::EveryNode => vec!["--tensors".into(), "*".into()],
        };
        flags.extend(extra.split_whitespace().map(String::from));
        flags
    }
}

/// One cell of the table.
#[derive(Serialize)]
struct Cell {
    capture: Capture,
    tokens: usize,
    files: usize,
    mb: f64,
    first_pass_ms: f64,
    /// Steady state, the extractor: decode ms with and without capture.
    steady_with_ms: Vec<f64>,
    steady_without_ms: Vec<f64>,
    steady_ratio: f64,
    /// Steady state, the extractor's nodes asked for but not read: the stops alone.
    steady_asked_ms: Vec<f64>,
    /// The cost model: one scheduler stop, from (asked - without) / stops.
    stop_us: f64,
    /// The copies inside the callback: MB written over (with - asked).
    copy_gb_per_s: f64,
    /// Steady state, the raw-C program.
    c_with_ms: Vec<f64>,
    c_without_ms: Vec<f64>,
    c_ratio: f64,
    /// Whole-process wall time (ms) of each run.
    wall_with_ms: Vec<f64>,
    wall_without_ms: Vec<f64>,
    wall_c_ms: Vec<f64>,
    write_mb_per_s: f64,
    peak_rss_mb_with: f64,
    peak_rss_mb_without: f64,
    logits_bitwise_equal: bool,
}

impl Bench {
    pub fn run(self, project: &Project) -> Result<()> {
        ensure!(
            self.repeat >= 1 && self.runs >= 1,
            "--repeat and --runs must be at least 1"
        );
        let out = match &self.out {
            Some(dir) => std::path::absolute(dir)?,
            None => project.work_dir().join("bench"),
        };
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let model = crate::model::default_model(project)?;
        let exe = match &self.extractor {
            Some(exe) => std::path::absolute(exe)?,
            None => ensure_extractor(project, Backend::Cpu)?,
        };
        ensure!(exe.is_file(), "no extractor at {}", exe.display());
        let raw_c = compile_raw_capture(project, &out)?;
        let sh = project.shell()?;
        let mut cells = Vec::new();
        for &tokens in &self.prompts {
            let prompt = prompt_of(tokens);
            for capture in CAPTURES {
                let started = Instant::now();
                let dir = out.join(format!("{}-{tokens}", slug(capture)));
                let cell = self
                    .cell(&sh, project, &exe, &raw_c, &model, &prompt, capture, &dir)
                    .with_context(|| {
                        format!("bench: {} with a {tokens}-token prompt", capture.name())
                    })?;
                eprintln!(
                    "bench: {:<10} {:>5} tokens: steady {:.3} (C {:.3}), {:.1} MB, in {:.0} s",
                    capture.name(),
                    cell.tokens,
                    cell.steady_ratio,
                    cell.c_ratio,
                    cell.mb,
                    started.elapsed().as_secs_f64()
                );
                cells.push(cell);
            }
        }
        let roofline = Roofline::measure();
        let table = table(&cells) + &roofline.line();
        print!("{table}");
        std::fs::write(out.join("bench.txt"), &table)?;
        let json = serde_json::json!({
            "model": model, "threads": 2, "repeat": self.repeat, "runs": self.runs, "extra": self.extra,
            "extractor": self.extractor,
            "cpu": cpu_model(), "roofline": roofline, "cells": cells,
        });
        std::fs::write(out.join("bench.json"), serde_json::to_vec_pretty(&json)?)?;
        std::fs::write(out.join("cost.svg"), svg(&cells))?;
        println!("\nbench: {}/bench.json, cost.svg", out.display());
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn cell(
        &self,
        sh: &Shell,
        project: &Project,
        exe: &Path,
        raw_c: &Path,
        model: &Path,
        prompt: &str,
        capture: Capture,
        dir: &Path,
    ) -> Result<Cell> {
        let flags = &capture.flags(project, &self.extra);
        let repeat = self.repeat.to_string();
        // Steady state, and the files the other runs are checked against.
        let steady_dir = dir.join("steady");
        run(cmd!(sh, "{exe} -m {model} {flags...} -p {prompt} -n 0 -t 2 --repeat {repeat} --out {steady_dir}"))?;
        let record = RunRecord::read(&steady_dir)?;
        let steady = record
            .steady
            .clone()
            .context("no steady-state figures in run.json")?;
        let bytes: u64 = record
            .checkpoints
            .iter()
            .map(|c| std::fs::metadata(steady_dir.join(&c.file)).map_or(0, |m| m.len()))
            .sum();

        // The raw-C program on the same nodes and tokens.
        let (nodes, tokens, c_dir) = (
            dir.join("nodes.txt"),
            dir.join("tokens.txt"),
            dir.join("raw-c"),
        );
        std::fs::write(&nodes, nodes_file(&record, capture))?;
        let ids: Vec<String> = record.tokens.iter().map(|t| t.to_string()).collect();
        std::fs::write(&tokens, ids.join(" "))?;
        std::fs::create_dir_all(&c_dir)?;
        let n_ctx = record.n_ctx.to_string();
        let c_out = cmd!(
            sh,
            "{raw_c} {model} {nodes} {tokens} {c_dir} 2 {n_ctx} {repeat}"
        )
        .quiet()
        .read()
        .context("the raw-C baseline failed")?;
        let c_steady: RawC = serde_json::from_str(&c_out)?;

        // Whole process, alternating.
        let (mut with, mut without, mut c_wall) = (Vec::new(), Vec::new(), Vec::new());
        let (with_dir, without_dir) = (dir.join("with"), dir.join("without"));
        for _ in 0..self.runs {
            with.push(timed(cmd!(
                sh,
                "{exe} -m {model} {flags...} -p {prompt} -n 0 -t 2 --out {with_dir}"
            ))?);
            without.push(timed(cmd!(sh, "{exe} -m {model} {flags...} -p {prompt} -n 0 -t 2 --no-extract --out {without_dir}"))?);
            c_wall.push(timed(cmd!(
                sh,
                "{raw_c} {model} {nodes} {tokens} {c_dir} 2 {n_ctx} 0"
            ))?);
        }
        let (w, wo) = (RunRecord::read(&with_dir)?, RunRecord::read(&without_dir)?);
        let (with_ms, asked_ms, without_ms) = (
            median(&steady.with_ms),
            median(&steady.asked_ms),
            median(&steady.without_ms),
        );
        let stops = record.checkpoints.len().max(1) as f64;
        Ok(Cell {
            stop_us: (asked_ms - without_ms) * 1e3 / stops,
            copy_gb_per_s: bytes as f64 / 1e9 / ((with_ms - asked_ms).max(1e-3) / 1e3),
            capture,
            tokens: record.tokens.len(),
            files: record.checkpoints.len(),
            mb: bytes as f64 / 1e6,
            first_pass_ms: record.prompt_decode_ms,
            steady_ratio: steady.ratio(),
            steady_asked_ms: steady.asked_ms.clone(),
            steady_with_ms: steady.with_ms,
            steady_without_ms: steady.without_ms,
            c_ratio: median(&c_steady.with_ms) / median(&c_steady.without_ms),
            c_with_ms: c_steady.with_ms,
            c_without_ms: c_steady.without_ms,
            wall_with_ms: with,
            wall_without_ms: without,
            wall_c_ms: c_wall,
            write_mb_per_s: (bytes as f64 / 1e6) / (w.write_ms.max(1e-3) / 1e3),
            peak_rss_mb_with: w.peak_rss_mb.unwrap_or(f64::NAN),
            peak_rss_mb_without: wo.peak_rss_mb.unwrap_or(f64::NAN),
            logits_bitwise_equal: w.logits.sha256 == wo.logits.sha256,
        })
    }
}

#[derive(serde::Deserialize)]
struct RawC {
    with_ms: Vec<f64>,
    without_ms: Vec<f64>,
}

fn slug(capture: Capture) -> String {
    capture.name().replace(' ', "-")
}

/// About `tokens` GPT-2 tokens of English (the table reports the real count).
fn prompt_of(tokens: usize) -> String {
    if tokens <= 2 {
        return "Hello world".into();
    }
    // GPT-2 spends about 1.2 tokens on a word of this text.
    crate::prompts::words_of_english((tokens as f64 / 1.2).round() as usize)
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
fn compile_raw_capture(project: &Project, out: &Path) -> Result<PathBuf> {
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

/// Runs a command; its output is shown only when it fails.
fn run(cmd: xshell::Cmd<'_>) -> Result<()> {
    let out = cmd.quiet().ignore_status().output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    Ok(())
}

/// What copying memory can reach on this machine, measured in the same run:
/// the ceiling the copies inside the callback are read against.
#[derive(Serialize)]
struct Roofline {
    /// GB/s copying a buffer far larger than the caches on one thread.
    one_thread_gb_per_s: f64,
    /// The same, split over every core.
    all_cores_gb_per_s: f64,
    cores: usize,
}

impl Roofline {
    /// Best of five copies of 256 MB (read and written: the bytes counted once).
    fn measure() -> Roofline {
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

    fn line(&self) -> String {
        format!(
            "memcpy roofline (256 MB, best of 5): {:.1} GB/s on one thread, {:.1} GB/s on {} cores\n",
            self.one_thread_gb_per_s, self.all_cores_gb_per_s, self.cores
        )
    }
}

/// The whole process's wall time, in ms.
fn timed(cmd: xshell::Cmd<'_>) -> Result<f64> {
    let started = Instant::now();
    run(cmd)?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// `median (min-max)` of a sample.
fn spread(v: &[f64]) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    format!("{:.1} ({:.1}-{:.1})", median(v), lo, hi)
}

fn table(cells: &[Cell]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<10} {:>6} {:>6} {:>8} | {:>24} {:>24} {:>7} {:>7} | {:>7} {:>6} | {:>8} {:>8} {:>8} {:>7} {:>7} | {:>8} {:>11} {:>7}",
        "capture", "tokens", "files", "MB", "decode with, ms", "without, ms", "ratio", "C ratio", "stop us", "GB/s",
        "wall", "no-extr", "raw C", "w/no-ex", "w/C", "MB/s", "RSS w/wo", "logits"
    );
    for c in cells {
        let (w, wo, rc) = (
            median(&c.wall_with_ms),
            median(&c.wall_without_ms),
            median(&c.wall_c_ms),
        );
        let _ = writeln!(
            s,
            "{:<10} {:>6} {:>6} {:>8.1} | {:>24} {:>24} {:>7.3} {:>7.3} | {:>7.1} {:>6.2} | {:>8.0} {:>8.0} {:>8.0} {:>7.2} {:>7.2} | {:>8.0} {:>5.0}/{:<5.0} {:>7}",
            c.capture.name(),
            c.tokens,
            c.files,
            c.mb,
            spread(&c.steady_with_ms),
            spread(&c.steady_without_ms),
            c.steady_ratio,
            c.c_ratio,
            c.stop_us,
            c.copy_gb_per_s,
            w,
            wo,
            rc,
            w / wo,
            w / rc,
            c.write_mb_per_s,
            c.peak_rss_mb_with,
            c.peak_rss_mb_without,
            if c.logits_bitwise_equal { "equal" } else { "DIFFER" }
        );
    }
    let _ = writeln!(
        s,
        "decode: steady-state prompt decode, median (min-max); ratio: with/without capture (C: the raw-C program's). \
         stop us: one scheduler stop, (asked only - without) / nodes asked; GB/s: the copies inside the callback, \
         MB written / (with - asked only). wall: whole process, median ms; MB/s: captured MB over the writer's busy time."
    );
    s
}

/// Steady-state cost against captured MB (log scale), the extractor's and raw C's.
fn svg(cells: &[Cell]) -> String {
    let (w, h, left, top, right, bottom) = (720.0, 420.0, 70.0, 40.0, 20.0, 50.0);
    let (x_lo, x_hi) = (-3.0f64, 4.0f64); // log10 MB
    let y_hi = cells
        .iter()
        .flat_map(|c| [c.steady_ratio, c.c_ratio])
        .fold(1.2f64, f64::max)
        .min(10.0);
    let (y_lo, y_hi) = (0.8f64, (y_hi * 10.0).ceil() / 10.0);
    let px = |mb: f64| left + (mb.max(1e-3).log10() - x_lo) / (x_hi - x_lo) * (w - left - right);
    let py = |r: f64| top + (y_hi - r.clamp(y_lo, y_hi)) / (y_hi - y_lo) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="20" font-size="13" font-weight="bold">Steady-state decode with capture / without, against MB captured per pass</text>"#
    );
    grid(&mut s, &px, &py, (y_lo, y_hi), (w, h, left, right, bottom));
    let colours = ["#1f77b4", "#ff7f0e", "#2ca02c"];
    for (k, capture) in CAPTURES.iter().enumerate() {
        for c in cells.iter().filter(|c| c.capture.name() == capture.name()) {
            let (x, y, yc) = (px(c.mb), py(c.steady_ratio), py(c.c_ratio));
            let _ = writeln!(
                s,
                r#"<circle cx="{x}" cy="{y}" r="5" fill="{}"><title>{} {} tokens: {:.3}</title></circle>"#,
                colours[k],
                capture.name(),
                c.tokens,
                c.steady_ratio
            );
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="8" height="8" fill="none" stroke="{}"><title>raw C, {} {} tokens: {:.3}</title></rect>"#,
                x - 4.0,
                yc - 4.0,
                colours[k],
                capture.name(),
                c.tokens,
                c.c_ratio
            );
        }
        let ly = top + 14.0 * k as f64 + 10.0;
        let _ = writeln!(
            s,
            r#"<circle cx="{}" cy="{ly}" r="5" fill="{}"/><text x="{}" y="{}">{} (squares: raw C)</text>"#,
            left + 20.0,
            colours[k],
            left + 30.0,
            ly + 4.0,
            capture.name()
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The plot's grid and axis labels: decades of MB across, ratios up.
fn grid(
    s: &mut String,
    px: &dyn Fn(f64) -> f64,
    py: &dyn Fn(f64) -> f64,
    (y_lo, y_hi): (f64, f64),
    (w, h, left, right, bottom): (f64, f64, f64, f64, f64),
) {
    let top = py(y_hi);
    for e in -3..=4 {
        let x = px(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            h - bottom,
            h - bottom + 14.0,
            10f64.powi(e)
        );
    }
    let step = if y_hi - y_lo > 2.0 { 0.5 } else { 0.1 };
    let mut r = (y_lo / step).ceil() * step;
    while r <= y_hi + 1e-9 {
        let y = py(r);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{r:.1}</text>"##,
            w - right,
            left - 6.0,
            y + 4.0
        );
        r += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">MB captured per pass (log)</text>"#,
        (left + w - right) / 2.0,
        h - 12.0
    );
}
