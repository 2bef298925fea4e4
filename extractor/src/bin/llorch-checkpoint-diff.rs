//! `llorch-checkpoint-diff`: compares two extraction runs (a reference, e.g. CPU,
//! and a test, e.g. CUDA) checkpoint by checkpoint, and summarises the decode
//! times of runs with and without extraction. Needs no cargo: the device
//! bundle's script runs it.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use llorch_checkpoint_extractor::diff::{compare_runs, timing};
use llorch_checkpoint_extractor::record::RunRecord;

#[derive(Parser)]
#[command(
    version,
    about = "Compare two extraction runs (NMSE, max abs error, buffers, logits), or summarise timings"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checkpoints and logits of run B against run A (the reference). Exit 1 when one exceeds --max-nmse.
    Compare {
        /// The reference run's output directory (e.g. the CPU run).
        a: PathBuf,
        /// The run under test (e.g. the GPU run).
        b: PathBuf,
        /// The manifest both runs used.
        #[arg(long, required_unless_present = "logits_only")]
        manifest: Option<PathBuf>,
        /// Compare logits.bin only (e.g. a run with extraction against one with --no-extract).
        #[arg(long, conflicts_with = "manifest")]
        logits_only: bool,
        /// Largest NMSE (mean squared difference over the reference's variance) that passes.
        #[arg(long, default_value_t = 1e-4)]
        max_nmse: f64,
        /// Also write the comparison as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write it as a page here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Median decode times of run directories with and without extraction, and their ratios.
    Timing {
        /// Runs with extraction.
        #[arg(long = "with", required = true, num_args = 1..)]
        with: Vec<PathBuf>,
        /// Runs with --no-extract.
        #[arg(long = "without", required = true, num_args = 1..)]
        without: Vec<PathBuf>,
        /// Also write the summary as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn write_json(path: &Option<PathBuf>, value: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(value)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn run(command: Command) -> Result<bool> {
    match command {
        Command::Compare {
            a,
            b,
            manifest,
            logits_only: _,
            max_nmse,
            json,
            html,
        } => {
            // Expanded as run `b` expanded it (`--layers`).
            let checkpoints = match manifest {
                Some(path) => RunRecord::read(&b)?.manifest(&path)?.checkpoints,
                None => Vec::new(),
            };
            let comparison = compare_runs(&a, &b, &checkpoints, max_nmse)?;
            print!("{}", comparison.table());
            write_json(&json, &comparison)?;
            if let Some(path) = &html {
                std::fs::write(path, comparison.html())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(comparison.pass)
        }
        Command::Timing {
            with,
            without,
            json,
        } => {
            let t = timing(&with, &without)?;
            println!(
                "prompt pass:    median {:.2} ms with extraction, {:.2} ms without ({} and {} runs): ratio {:.3}",
                t.prompt_ms_with, t.prompt_ms_without, t.runs_with, t.runs_without, t.prompt_ratio
            );
            if let (Some(w), Some(wo), Some(r)) =
                (t.token_ms_with, t.token_ms_without, t.token_ratio)
            {
                println!("token passes:   median {w:.2} ms with extraction, {wo:.2} ms without: ratio {r:.3}");
            }
            match t.token_ratio {
                Some(r) => println!(
                    "ratio with/without extraction: prompt {:.3}, per token {r:.3}",
                    t.prompt_ratio
                ),
                None => println!(
                    "ratio with/without extraction: prompt {:.3}",
                    t.prompt_ratio
                ),
            }
            write_json(&json, &t)?;
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
