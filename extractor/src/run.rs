//! One extraction run: load, decode the prompt (captured), generate, commit.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};

use crate::capture::Selection;
use crate::decode::{self, DecodeOptions, Decoded};
use crate::ffi::llama::Token;
use crate::format::{self, Format};
use crate::list_nodes::{self, ListOptions};
use crate::load::{self, LoadMode, LoadOptions, Loaded, Prompt};
use crate::manifest::{Layers, Manifest, Symbols};
use crate::names::NodeFilter;
use crate::output::{self, Output};
use crate::preflight::{self, ContextAsk, Header};
use crate::record::{
    self, AbsentCheckpoint, CheckpointRecord, Device, FlashAttn, FlashAttnMode, LlamaCpp,
    LlamaTree, LogitsRecord, ManifestInfo, ModelInfo, RunRecord,
};

/// Everything the command line sets for one run.
pub struct Config {
    pub model: PathBuf,
    pub manifest: Option<PathBuf>,
    pub prompt: Prompt,
    /// `--ctx-size`; `None`: 512 cells, or the trained context if smaller.
    pub n_ctx: Option<u32>,
    pub n_gpu_layers: i32,
    pub out: PathBuf,
    pub format: Format,
    pub extract: bool,
    pub list_nodes: bool,
    /// `--layers`: instead of the manifest's own layers.
    pub layers: Option<Layers>,
    /// `--tensors GLOB`: every node whose name matches, instead of a manifest.
    pub tensors: Option<NodeFilter>,
    /// `--keep-padding`: with `--tensors`, a KV cache's nodes written whole.
    pub keep_padding: bool,
    /// `--operands`: with `--tensors`, each node's op parameters and
    /// operands, for replaying it (implies `keep_padding`).
    pub operands: bool,
    /// `--rpc`: RPC servers (`host:port`) whose devices take offloaded layers.
    pub rpc: Vec<String>,
    /// `--tensor-split`: how the offloaded layers are shared among the devices.
    pub tensor_split: Vec<f32>,
    /// `--flash-attn`: as asked; llama.cpp decides under `auto`.
    pub flash_attn: FlashAttnMode,
    /// `--load`: the weights mapped or read whole.
    pub load: LoadMode,
    /// Threads, KV type, generation, steps, `--sequential`, `--repeat`, buffer.
    pub decode: DecodeOptions,
}

/// One run, top-down: refuse what cannot work, load, decode (captured), record, commit.
pub fn run(cfg: &Config) -> Result<()> {
    let header = Header::read(&cfg.model)?;
    let (manifest, layers) = manifest(cfg, &header)?;
    if cfg.list_nodes {
        return list_nodes::list_nodes(&list_options(cfg));
    }
    if let (Some(m), Some(path)) = (&manifest, &cfg.manifest) {
        preflight::check_architecture(m, path, &cfg.model, &header)?;
    }
    let selects = cfg.tensors.is_some() || manifest.is_some();
    if cfg.decode.repeat > 0 && !(cfg.extract && selects) {
        bail!(
            "--repeat times capture against no capture: it needs --manifest or --tensors, and not --no-extract"
        );
    }
    let output = Output::open(&cfg.out, cfg.format)?;
    crate::cleanup::install(&cfg.rpc, output.abandon_handle())?;
    preflight::connect_rpc(&cfg.rpc)?;

    let stamp = preflight::ModelStamp::take(&cfg.model)?;
    let loaded = load::load(&load_options(cfg))?;
    log_header(cfg, &loaded, manifest.as_ref());
    let first = *loaded.tokens.first().context("the prompt has no tokens")?;
    let (threads, kv_type) = (cfg.decode.threads, cfg.decode.kv_type);
    let flash_attn =
        list_nodes::flash_attn_on(&loaded.model, cfg.flash_attn, kv_type, threads, first)?;
    let rows = every_row(cfg, manifest.as_ref(), loaded.model.n_layer());
    let (selection, absent) = selection(cfg, manifest, flash_attn, &header);
    let (decoded, (written, write_ms)) =
        decode::passes(&cfg.decode, &loaded, selection, &output, flash_attn, rows)?;

    // After the decodes, so that it never shares the CPU with one.
    stamp.check_unchanged(&cfg.model)?;
    let model_sha = output::sha256_cached(&cfg.model)?;
    let logits = logits_file(&loaded, &decoded)?;
    let mut record = record(cfg, &loaded, &decoded, written, model_sha, &logits);
    record.model.weights = header.weights;
    record.flash_attn.used = Some(flash_attn);
    record.absent = absent;
    record.layers = layers;
    record.write_ms = write_ms;
    output.commit(&record, &[(LOGITS_FILE, &logits)])?;
    log_summary(cfg, &loaded, &record);
    Ok(())
}

const LOGITS_FILE: &str = "logits.bin";

/// The manifest with `--layers` applied, and the layers it was expanded to;
/// none with `--tensors`, `--no-extract` or `--list-nodes`.
fn manifest(cfg: &Config, header: &Header) -> Result<(Option<Manifest>, Option<Vec<u32>>)> {
    let Some(path) = &cfg.manifest else {
        if cfg.extract && !cfg.list_nodes && cfg.tensors.is_none() {
            bail!("--manifest (or --tensors GLOB) is required, or pass --no-extract");
        }
        return Ok((None, None));
    };
    let (manifest, layers) = preflight::load_manifest(path, cfg.layers.as_ref(), header)?;
    Ok((Some(manifest), layers))
}

fn load_options(cfg: &Config) -> LoadOptions<'_> {
    LoadOptions {
        model: &cfg.model,
        n_gpu_layers: cfg.n_gpu_layers,
        tensor_split: &cfg.tensor_split,
        map_weights: cfg.load == LoadMode::Mmap,
        prompt: &cfg.prompt,
        context: ContextAsk {
            ctx_size: cfg.n_ctx,
            n_predict: cfg.decode.n_predict,
        },
    }
}

/// Whether the prompt pass asks llama.cpp for logits at every position,
/// which also keeps every row through the last layer (llama.cpp otherwise
/// drops the rows no output needs, after the last layer's attention): only
/// where a node asked for is there, since the output head over every
/// position costs up to 3x the pass (Gemma 3's 262,144-token vocabulary).
/// Decided by what is asked, not by `--no-extract`: a run without capture
/// computes what the same run with it does, bit for bit.
fn every_row(cfg: &Config, manifest: Option<&Manifest>, n_layer: i64) -> bool {
    let last = (n_layer - 1).max(0) as u32;
    let (rows, why) =
        match (&cfg.tensors, manifest) {
            (Some(_), _) => (
                true,
                "--tensors may name nodes of the last layer or the output",
            ),
            (None, Some(m)) => match m.checkpoints.iter().find(|c| {
                c.layer == Some(last) || (c.layer.is_none() && !c.tensor.starts_with("inp_"))
            }) {
                Some(c) => (true, c.id.as_str()),
                None => (false, "no checkpoint in the last layer or after it"),
            },
            (None, None) => (false, "nothing asked"),
        };
    match rows {
        true => log::info!(
            "  logits    at every position, and every row through the last layer: {why} needs them"
        ),
        false => log::info!(
            "  logits    at the last position only, as llama.cpp computes them by default ({why})"
        ),
    }
    rows
}

/// What the capture takes: the glob, or the manifest's checkpoints as the
/// graph has them (with flash attention, in its layouts, and those it does
/// not have set apart with the reason); nothing with `--no-extract`.
fn selection(
    cfg: &Config,
    manifest: Option<Manifest>,
    flash_attn: bool,
    header: &Header,
) -> (Option<Selection>, Vec<AbsentCheckpoint>) {
    let (manifest, absent) = match (manifest, flash_attn) {
        (Some(m), true) => {
            let (m, absent) = m.under_flash_attn();
            (Some(m), absent)
        }
        (m, _) => (m, Vec::new()),
    };
    let absent = absent
        .into_iter()
        .map(|(cp, why)| AbsentCheckpoint {
            id: cp.id,
            file: cp.file_stem,
            reason: format!("flash attention on: {why}"),
        })
        .collect();
    let selection = match (&cfg.tensors, manifest) {
        (_, _) if !cfg.extract => None,
        (Some(filter), _) => Some(Selection::Glob {
            filter: filter.clone(),
            keep_padding: cfg.keep_padding || cfg.operands,
            operands: cfg.operands.then(|| {
                let names = header.tensor_names.iter();
                names.map(|n| n.as_bytes().into()).collect()
            }),
        }),
        (None, Some(m)) => Some(Selection::Manifest(m.checkpoints)),
        (None, None) => None,
    };
    (selection, absent)
}

fn list_options(cfg: &Config) -> ListOptions<'_> {
    ListOptions {
        model: &cfg.model,
        n_gpu_layers: cfg.n_gpu_layers,
        prompt: &cfg.prompt,
        ctx_size: cfg.n_ctx,
        threads: cfg.decode.threads,
        kv_type: cfg.decode.kv_type,
        flash_attn: cfg.flash_attn,
    }
}

fn log_header(cfg: &Config, loaded: &Loaded, manifest: Option<&Manifest>) {
    let devices: Vec<String> = crate::ffi::devices()
        .iter()
        .map(|(name, desc)| format!("{name} ({desc})"))
        .collect();
    log::info!("llorch-checkpoint-extractor: {}", describe_build());
    log::info!(
        "  devices   {} (--n-gpu-layers {})",
        devices.join(", "),
        cfg.n_gpu_layers
    );
    log::info!(
        "  model     {} ({}, {} layers)",
        cfg.model.display(),
        loaded.arch,
        loaded.model.n_layer()
    );
    log::info!(
        "  prompt    {:?} -> {} tokens {}",
        cfg.prompt.text,
        loaded.tokens.len(),
        first_ids(&loaded.tokens, 32)
    );
    match (manifest, &cfg.manifest, cfg.extract) {
        (Some(m), Some(path), true) => log::info!(
            "  manifest  {} ({} checkpoints), output {} ({:?})",
            path.display(),
            m.checkpoints.len(),
            cfg.out.display(),
            cfg.format
        ),
        _ => match (&cfg.tensors, cfg.extract) {
            (Some(pattern), true) => log::info!(
                "  tensors   every node matching `{}`, output {} ({:?})",
                pattern.as_str(),
                cfg.out.display(),
                cfg.format
            ),
            _ => log::info!("  extraction disabled: no eval callback registered"),
        },
    }
}

/// `logits.bin`: the last row's logits of every pass, `[passes, n_vocab]`.
fn logits_file(loaded: &Loaded, decoded: &Decoded) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let shape = [decoded.next.len() as i64, loaded.model.n_vocab()];
    format::write(Format::Bin, &mut bytes, &shape, &decoded.logits)?;
    Ok(bytes)
}

fn record(
    cfg: &Config,
    loaded: &Loaded,
    decoded: &Decoded,
    checkpoints: Vec<CheckpointRecord>,
    model_sha256: String,
    logits: &[u8],
) -> RunRecord {
    let (ggml_version, ggml_commit) = crate::ffi::ggml_version();
    let n_prompt = loaded.tokens.len() as i64;
    RunRecord {
        schema_version: record::SCHEMA_VERSION,
        tool: format!("llorch-checkpoint-extractor {}", env!("CARGO_PKG_VERSION")),
        llama_cpp: LlamaCpp {
            tree: built_from(),
            ggml_version,
            ggml_commit,
        },
        backend: crate::ffi::backend_name(),
        system_info: crate::ffi::system_info().trim().to_string(),
        devices: crate::ffi::devices()
            .into_iter()
            .map(|(name, description)| Device { name, description })
            .collect(),
        model: ModelInfo {
            path: cfg.model.clone(),
            sha256: model_sha256,
            architecture: loaded.arch.clone(),
            n_layer: loaded.model.n_layer(),
            weights: Default::default(),
        },
        layers: None,
        tensors: cfg.tensors.as_ref().map(|p| p.as_str().to_string()),
        keep_padding: (cfg.keep_padding || cfg.operands) && cfg.tensors.is_some(),
        manifest: cfg.manifest.as_ref().map(|p| ManifestInfo {
            path: p.clone(),
            sha256: llorch_checkpoint_spec::files::sha256_file(p).ok(),
        }),
        extract: cfg.extract,
        prompt: cfg.prompt.text.clone(),
        tokens: loaded.tokens.clone(),
        generated: {
            let first = cfg.decode.prompt_passes(loaded.tokens.len()) - 1;
            decoded.next[first..first + cfg.decode.n_predict].to_vec()
        },
        next_token: decoded.next.last().copied(),
        threads: cfg.decode.threads,
        n_ctx: loaded.n_ctx,
        n_gpu_layers: cfg.n_gpu_layers,
        kv_type: cfg.decode.kv_type.name().into(),
        flash_attn: FlashAttn {
            requested: cfg.flash_attn,
            used: None,
        },
        absent: Vec::new(),
        format: cfg.format,
        steps: format!("{:?}", cfg.decode.steps).to_lowercase(),
        sequential: cfg.decode.sequential,
        symbols: Symbols {
            n_tokens: n_prompt,
            n_kv: n_prompt,
            ..loaded.base
        },
        decode_ms: decoded.decode_ms.clone(),
        prompt_decode_ms: decoded.decode_ms[0],
        steady: decoded.steady.clone(),
        write_ms: 0.0,
        logits: LogitsRecord {
            file: LOGITS_FILE.into(),
            shape: vec![decoded.next.len() as i64, loaded.model.n_vocab()],
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(logits)),
        },
        peak_rss_mb: peak_rss_mb(),
        checkpoints,
    }
}

fn log_summary(cfg: &Config, loaded: &Loaded, record: &RunRecord) {
    let pieces: Vec<String> = record
        .generated
        .iter()
        .map(|&t| loaded.model.token_to_piece(t))
        .collect();
    log::info!(
        "wrote {} checkpoint file(s) and run.json to {}; prompt decode {:.1} ms; generated {:?}",
        record.checkpoints.len(),
        cfg.out.display(),
        record.prompt_decode_ms,
        pieces
    );
    // Which backend buffer each checkpoint was read from ("CPU", "CUDA0", ...).
    let mut by_buffer: Vec<(&str, Vec<&str>)> = Vec::new();
    for w in &record.checkpoints {
        match by_buffer.iter_mut().find(|(b, _)| *b == w.buffer) {
            Some((_, ids)) => ids.push(&w.id),
            None => by_buffer.push((&w.buffer, vec![&w.id])),
        }
    }
    for (buffer, ids) in by_buffer {
        if ids.len() > 16 {
            log::info!("  read from {buffer}: {} checkpoints", ids.len());
            continue;
        }
        log::info!("  read from {buffer}: {}", ids.join(" "));
    }
    if let Some(absent) = record.absent_summary() {
        log::warn!("  absent from this graph: {absent}");
    }
    // Captured as they are (that is what one debugs), but never in silence.
    // An operand's copy may hold -inf by design (an attention mask).
    let broken: Vec<String> = record
        .checkpoints
        .iter()
        .filter(|c| c.non_finite > 0 && c.operand_of.is_none())
        .map(|c| {
            format!(
                "{} ({} of {})",
                c.file,
                c.non_finite,
                c.shape.iter().product::<i64>()
            )
        })
        .collect();
    if !broken.is_empty() {
        log::warn!(
            "{} checkpoint(s) hold NaN or Inf values, first {}; llorch-checkpoint-validate and compare fail on them",
            broken.len(),
            broken[..broken.len().min(5)].join(", ")
        );
    }
}

/// At most `max` token ids, then how many there are in all.
fn first_ids(tokens: &[Token], max: usize) -> String {
    if tokens.len() <= max {
        return format!("{tokens:?}");
    }
    format!("{:?} ... ({} ids in all)", &tokens[..max], tokens.len())
}

/// The process's peak resident memory (Linux: VmHWM), for the verify report.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn describe_build() -> String {
    format!(
        "llama.cpp {}, backend {}",
        built_from().describe(),
        crate::ffi::backend_name()
    )
}

/// The tree the linked llama.cpp was built from, as `cargo xtask build` recorded it.
pub fn built_from() -> LlamaTree {
    serde_json::from_str(env!("LLORCH_TREE")).expect("build.rs passes the tree xtask recorded")
}
