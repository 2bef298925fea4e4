//! llorch-checkpoint-model: writes the synthetic GPT-2 GGUF, checks a GGUF is a
//! usable GPT-2, and measures a model's activations. `cargo xtask model` drives it.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use llorch_checkpoint_extractor::ffi::gguf::{Dtype, GgufFile};
use llorch_checkpoint_extractor::gpt2_model::{self, stats, Hparams, Spec, Tokenizer};

#[derive(Parser)]
#[command(
    name = "llorch-checkpoint-model",
    version,
    about = "GGUF models for llorch-checkpoint: the synthetic GPT-2, checks, architecture, statistics, f32 copies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Show llama.cpp's and ggml's own log.
    #[arg(short = 'v', long, global = true)]
    verbose: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Subcommand)]
enum Command {
    /// Write a GPT-2 small-shaped GGUF with the real GPT-2 tokenizer and seeded weights.
    Generate {
        /// Where to write the GGUF (atomically).
        #[arg(long)]
        out: PathBuf,
        /// Number of transformer blocks (GPT-2 small has 12).
        #[arg(long = "n-layer", value_name = "N", default_value_t = 12)]
        layers: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Type of the 2-D weights; norms and biases stay f32.
        #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
        dtype: DtypeArg,
        /// OpenAI's GPT-2 `encoder.json` (token -> id).
        #[arg(long)]
        encoder_json: PathBuf,
        /// OpenAI's GPT-2 `vocab.bpe` (merges).
        #[arg(long)]
        vocab_bpe: PathBuf,
        /// Skip the forward pass that measures the activations.
        #[arg(long)]
        no_stats: bool,
    },
    /// Check that a GGUF is a `gpt2` model with every tensor the manifests need.
    Check { path: PathBuf },
    /// Print a GGUF's `general.architecture` (read from its header: nothing is loaded).
    Architecture { path: PathBuf },
    /// Run a prompt through a model and print per-layer activation statistics.
    Stats { path: PathBuf },
    /// Write a copy of a GGUF with every tensor dequantized to f32 (llama.cpp's
    /// quantize API); writes nothing when no tensor is quantized.
    Dequantize {
        path: PathBuf,
        /// Where to write the copy (atomically).
        #[arg(long)]
        out: PathBuf,
    },
}

fn threads() -> i32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as i32)
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Generate {
            out,
            layers,
            seed,
            dtype,
            encoder_json,
            vocab_bpe,
            no_stats,
        } => {
            let dtype = match dtype {
                DtypeArg::F32 => Dtype::F32,
                DtypeArg::F16 => Dtype::F16,
                DtypeArg::Q8_0 => Dtype::Q8_0,
            };
            let spec = Spec {
                hparams: Hparams {
                    n_layer: layers as i64,
                    ..Hparams::GPT2_SMALL
                },
                seed,
                dtype,
            };
            let started = Instant::now();
            let tokenizer = Tokenizer::load(&encoder_json, &vocab_bpe)?;
            gpt2_model::write(&spec, &tokenizer, &out)?;
            println!(
                "model: wrote {} ({}) in {:.2} s",
                out.display(),
                spec.name(),
                started.elapsed().as_secs_f64()
            );
            if !no_stats {
                print_stats(&out)?;
            }
            Ok(())
        }
        Command::Check { path } => {
            let checked = gpt2_model::check_gpt2(&path)?;
            let h = checked.hparams;
            let types: Vec<String> = checked
                .types
                .iter()
                .map(|(t, n)| format!("{n} {t}"))
                .collect();
            println!(
                "model: {} is a gpt2 model: n_vocab {} n_ctx {} n_embd {} n_head {} n_layer {} n_ff {} eps {:e}; {} tensors ({})",
                path.display(),
                h.n_vocab,
                h.n_ctx,
                h.n_embd,
                h.n_head,
                h.n_layer,
                h.n_ff,
                h.norm_eps,
                checked.n_tensors,
                types.join(", ")
            );
            Ok(())
        }
        Command::Architecture { path } => {
            let header = GgufFile::open(&path)?;
            let arch = header.get_str("general.architecture").ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: its GGUF header has no general.architecture",
                    path.display()
                )
            })?;
            println!("{arch}");
            Ok(())
        }
        Command::Stats { path } => print_stats(&path),
        Command::Dequantize { path, out } => dequantize(&path, &out),
    }
}

fn dequantize(path: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let types: std::collections::BTreeSet<&str> = GgufFile::open(path)?
        .tensors()
        .iter()
        .map(|t| t.type_name())
        .collect();
    if types.iter().all(|t| matches!(*t, "f32" | "f16" | "bf16")) {
        println!(
            "model: {} holds no quantized tensor ({types:?}): nothing to write",
            path.display()
        );
        return Ok(());
    }
    let started = Instant::now();
    let tmp = out.with_extension(format!("tmp{}.gguf", std::process::id()));
    let written = llorch_checkpoint_extractor::ffi::llama::dequantize_to_f32(path, &tmp, threads())
        .and_then(|()| Ok(std::fs::rename(&tmp, out)?));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    println!(
        "model: wrote {} ({types:?} -> f32) in {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_stats(path: &std::path::Path) -> Result<()> {
    let started = Instant::now();
    let layers = stats::measure(path, threads())?;
    println!(
        "model: activations for {:?} ({:.2} s):",
        stats::PROMPT,
        started.elapsed().as_secs_f64()
    );
    print!("{}", stats::table(&layers));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    llorch_checkpoint_extractor::cli::init_logging(cli.verbose);
    llorch_checkpoint_extractor::cli::exit_code(run(cli.command))
}
