//! `llorch-checkpoint-extractor`: runs a prompt through llama.cpp and writes the
//! checkpoints a manifest names. Flags follow llama.cpp's habits.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use llorch_checkpoint_extractor::decode::{DecodeOptions, Steps};
use llorch_checkpoint_extractor::ffi::llama::KvType;
use llorch_checkpoint_extractor::format::Format;
use llorch_checkpoint_extractor::load::{LoadMode, Prompt};
use llorch_checkpoint_extractor::manifest::Layers;
use llorch_checkpoint_extractor::record::FlashAttnMode;
use llorch_checkpoint_extractor::run;

#[derive(Parser)]
#[command(
    name = "llorch-checkpoint-extractor",
    version = concat!(env!("CARGO_PKG_VERSION"), " (llama.cpp ", env!("LLORCH_TREE_NAME"), ", backend ", env!("LLORCH_BACKEND"), ")"),
    about = "Capture intermediate tensors (checkpoints) of a llama.cpp inference through the eval callback",
    long_about = "Runs PROMPT through MODEL with llama.cpp, captures the graph nodes that the checkpoint \
manifest names (after the scheduler computed them, through the eval callback), and writes one file per \
checkpoint plus run.json (settings, token ids, per-checkpoint shape, dtype and sha256, decode time) and \
logits.bin into --out. Extraction only observes: logits are the same as with --no-extract.",
    after_help = "Example:\n  llorch-checkpoint-extractor -m gpt2.gguf --manifest manifests/gpt2.yaml -p 'Hello world' --out checkpoints"
)]
struct Cli {
    /// GGUF model file.
    #[arg(short = 'm', long, required_unless_present = "system_info")]
    model: Option<PathBuf>,
    /// Checkpoint manifest (YAML); required unless --tensors or --no-extract.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Capture every node whose name matches one of these globs instead of a manifest's checkpoints:
    /// `'*'` is the whole graph, `'*-0'` layer 0, `'attn_norm-*,ffn_out-*'` two kinds of node.
    /// Files are named `<graph index>_<name>`.
    #[arg(long, value_name = "GLOB[,GLOB...]", conflicts_with = "manifest")]
    tensors: Option<llorch_checkpoint_extractor::names::NodeFilter>,
    /// With --tensors: write a KV cache's views and writes whole, padding and empty cells
    /// included. By default only the filled cells are written (a read is padded to 256 cells,
    /// a write's node is the whole cache); run.json's `shape` says what was kept, `ggml_ne`
    /// the node's extent.
    #[arg(long, requires = "tensors")]
    keep_padding: bool,
    /// With --tensors: also record each node's op parameters and layout, and its operands as the
    /// op saw them: captured nodes by graph index, the model's weights by GGUF name, anything
    /// else (graph inputs, KV caches, nodes the glob did not take) copied as `<file>.srcK`.
    /// What `cargo xtask replay` reads. Implies --keep-padding.
    #[arg(long, requires = "tensors")]
    operands: bool,
    /// The prompt; its pass is the one captured.
    #[arg(short = 'p', long, default_value = "Hello world")]
    prompt: String,
    /// Read the prompt from this file (as it is: no newline is stripped).
    #[arg(short = 'f', long = "file", value_name = "PROMPT_FILE", conflicts_with_all = ["prompt", "tokens"])]
    prompt_file: Option<PathBuf>,
    /// The prompt as token ids (`15496,995`), so that another engine and this run see the same ids.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "ID,ID,...",
        conflicts_with = "prompt"
    )]
    tokens: Option<Vec<i32>>,
    /// Tokens to generate (greedy) and feed back after the prompt.
    #[arg(short = 'n', long = "n-predict", default_value_t = 1)]
    n_predict: usize,
    /// CPU threads [default: all cores].
    #[arg(short = 't', long)]
    threads: Option<i32>,
    /// Threads that copy a large captured node while the compute waits for the callback,
    /// at most `--threads` [default: `--threads` where ggml computes on OpenMP, whose team
    /// then copies; else 1: the compute's own workers spin on the cores a copy thread would use].
    #[arg(long, value_name = "N")]
    copy_threads: Option<usize>,
    /// Context size (KV-cache cells) [default: 512, or the model's trained context if smaller];
    /// raised to fit the prompt and generation. Never above the trained context.
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<u32>,
    /// RPC servers whose devices take the offloaded layers (`llorch-checkpoint-rpc-server` on
    /// each host), split by their memory: `--rpc 10.0.0.2:50052,10.0.0.3:50052 --n-gpu-layers 99`.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    rpc: Vec<String>,
    /// How the offloaded layers are shared among the devices (GPUs, then RPC servers), e.g.
    /// `1,1` for halves [default: by free memory].
    #[arg(long, value_delimiter = ',', value_name = "W,W,...")]
    tensor_split: Vec<f32>,
    /// Layers offloaded to a GPU or RPC backend, if the build has one (`-ngl`).
    #[arg(long = "n-gpu-layers", visible_alias = "ngl", default_value_t = 0)]
    n_gpu_layers: i32,
    /// Output directory: absent, empty, or an earlier run. The run is staged beside it and,
    /// only once it succeeded, replaces it whole in one rename; a failed run changes nothing.
    #[arg(long, default_value = "checkpoints")]
    out: PathBuf,
    /// Checkpoint file format.
    #[arg(long, value_enum, default_value_t = Format::Bin)]
    format: Format,
    /// Flash attention (`-fa`): on, off, or auto (llama.cpp's default: on where the backend
    /// supports it). With it on there are no attention scores (kq_soft_max): such checkpoints are
    /// recorded as absent, with the reason, and V is cached untransposed.
    #[arg(long, value_enum, default_value_t = FlashAttnMode::Auto)]
    flash_attn: FlashAttnMode,
    /// How the weights reach memory: mapped (llama.cpp's default; the first pass pays any page
    /// faults, and `--repeat` reports the steady state apart) or read whole at load.
    #[arg(long, value_enum, default_value_t = LoadMode::Mmap)]
    load: LoadMode,
    /// KV-cache type (llama.cpp's default is f16).
    #[arg(long = "kv-type", value_enum, default_value_t = KvType::F16)]
    kv_type: KvType,
    /// Which passes to capture: the prompt's, or also each generated token's (files get `.stepN`).
    #[arg(long, value_enum, default_value_t = Steps::Prompt)]
    steps: Steps,
    /// After the run, decode the prompt N more times each way, alternating no eval callback
    /// and capture (copies discarded), on a cleared cache: the steady-state cost in run.json.
    #[arg(long, default_value_t = 0, value_name = "N")]
    repeat: usize,
    /// Captured data (MB) held in memory until the pass ends; a pass that captures more
    /// hands it to the writer early and waits for room, so writing overlaps the compute.
    #[arg(long, value_name = "MB", default_value_t = llorch_checkpoint_extractor::handoff::DEFAULT_BUDGET_MB)]
    buffer_mb: usize,
    /// Feed the prompt one token per pass, each pass captured (`.stepN` files are position N),
    /// to compare with the prompt run as one batch.
    #[arg(long)]
    sequential: bool,
    /// Register no eval callback at all (the baseline for overhead and non-interference checks).
    #[arg(long)]
    no_extract: bool,
    /// The layers `{layer}` expands to, instead of the manifest's: `all`, or numbers like `0,5,29`;
    /// a negative number counts from the end (`-1`: the last layer).
    #[arg(long, value_name = "all|N,N,...", allow_hyphen_values = true)]
    layers: Option<Layers>,
    /// Print every node of the prompt pass (name, op, type, ne) and exit.
    #[arg(long)]
    list_nodes: bool,
    /// Print the llama.cpp build this binary links (version, CPU features, backends) and exit.
    #[arg(long)]
    system_info: bool,
    /// Show llama.cpp's own log.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// The integration tests' hidden flags (`--features test-hooks` only).
    #[cfg(feature = "test-hooks")]
    #[command(flatten)]
    hooks: llorch_checkpoint_extractor::hooks::HookArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(llorch_checkpoint_extractor::flags::expand_llama_short(
        std::env::args_os(),
    ));
    llorch_checkpoint_extractor::cli::init_logging(cli.verbose);
    #[cfg(feature = "test-hooks")]
    cli.hooks.install();
    if cli.system_info {
        let (version, commit) = llorch_checkpoint_extractor::ffi::ggml_version();
        println!(
            "{} (ggml {version}, commit {commit})",
            run::describe_build()
        );
        println!("{}", llorch_checkpoint_extractor::ffi::system_info());
        return ExitCode::SUCCESS;
    }
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get() as i32));
    let text = match &cli.prompt_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("error: cannot read the prompt file {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None if cli.tokens.is_some() => String::new(),
        None => cli.prompt,
    };
    let cfg = run::Config {
        model: cli.model.expect("clap requires --model"),
        manifest: cli.manifest,
        prompt: Prompt {
            text,
            ids: cli.tokens,
        },
        n_ctx: cli.ctx_size,
        n_gpu_layers: cli.n_gpu_layers,
        out: cli.out,
        format: cli.format,
        extract: !cli.no_extract,
        list_nodes: cli.list_nodes,
        layers: cli.layers,
        tensors: cli.tensors,
        keep_padding: cli.keep_padding,
        operands: cli.operands,
        rpc: cli.rpc,
        tensor_split: cli.tensor_split,
        flash_attn: cli.flash_attn,
        load: cli.load,
        decode: DecodeOptions {
            threads,
            copy_threads: cli.copy_threads,
            kv_type: cli.kv_type,
            n_predict: cli.n_predict,
            steps: cli.steps,
            sequential: cli.sequential,
            repeat: cli.repeat,
            buffer_mb: cli.buffer_mb,
        },
    };
    llorch_checkpoint_extractor::cli::exit_code(run::run(&cfg))
}
