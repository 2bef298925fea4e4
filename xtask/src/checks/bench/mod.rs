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

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_spec::record::{median, RunRecord};
use xshell::Shell;

use crate::llama_cpp::build::{self, Backend};
use crate::llama_cpp::tree::Tree;
use crate::project::Project;

mod cells;
mod figures;
mod floors;

use crate::runs::extractor::ExtractorRun;
use cells::{timed, Capture, Cell, CAPTURES};
use figures::{svg, table};
use floors::{compile_raw_capture, RawCRun, Roofline};

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
    /// The backend llama.cpp computes on, every layer on its device (the raw-C floor too).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
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
        let model = crate::models::model::default_model(project)?;
        let tree = Tree::pinned(project)?;
        let exe = match &self.extractor {
            Some(exe) => std::path::absolute(exe)?,
            None => build::ensure_extractor(project, self.backend, &tree)?,
        };
        ensure!(exe.is_file(), "no extractor at {}", exe.display());
        let raw_c = compile_raw_capture(project, &out)?;
        let sh = project.shell()?;
        // The backend's libraries for every run, the raw-C floor's too.
        for (name, value) in build::backend_env(project, self.backend, &tree) {
            sh.set_var(name, value);
        }
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
            "model": model, "backend": self.backend.name(), "threads": 2, "repeat": self.repeat, "runs": self.runs, "extra": self.extra,
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
        let extractor = |out: &Path| {
            ExtractorRun::new(exe, model, out)
                .args(flags)
                .args(
                    self.backend
                        .default_gpu_layers()
                        .map(|n| format!("--n-gpu-layers={n}")),
                )
                .prompt(prompt)
                .generate(0)
        };
        // Steady state, and the files the other runs are checked against.
        let steady_dir = dir.join("steady");
        extractor(&steady_dir).repeat(self.repeat).run(sh)?;
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

        let floor = RawCRun::prepare(raw_c, model, &record, capture, dir)?;
        let c_steady = floor.steady(sh, &self.repeat.to_string())?;

        // Whole process, alternating.
        let (mut with, mut without, mut c_wall) = (Vec::new(), Vec::new(), Vec::new());
        let (with_dir, without_dir) = (dir.join("with"), dir.join("without"));
        for _ in 0..self.runs {
            with.push(timed(extractor(&with_dir).cmd(sh))?);
            without.push(timed(extractor(&without_dir).no_extract().cmd(sh))?);
            c_wall.push(floor.wall(sh)?);
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

fn slug(capture: Capture) -> String {
    capture.name().replace(' ', "-")
}

/// About `tokens` GPT-2 tokens of English (the table reports the real count).
fn prompt_of(tokens: usize) -> String {
    if tokens <= 2 {
        return "Hello world".into();
    }
    // GPT-2 spends about 1.2 tokens on a word of this text.
    crate::models::prompts::words_of_english((tokens as f64 / 1.2).round() as usize)
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
