//! `run.json`: what one extractor run did and wrote. The extractor writes it;
//! the validator, diff, `cargo xtask extract`, `compare` and `verify` read it,
//! all through [`RunRecord::read`], which refuses a record of another schema
//! version by name instead of misreading it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::format::Format;
use crate::manifest::{Manifest, Symbols};

mod operand;
pub use operand::{Layout, Operand};

/// Bumped whenever a field changes meaning or a field is added (3: each
/// `--tensors` node's graph index and operands, the model's weight types;
/// 4: `keep_padding`, a KV cache's nodes cut to their filled cells;
/// 5: `--operands`: each node's op parameters, layout and operands as the
/// op saw them, for `replay`).
pub const SCHEMA_VERSION: u32 = 5;

/// The file name of the record inside a run directory.
pub const FILE: &str = "run.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    pub schema_version: u32,
    /// `llorch-checkpoint-extractor <version>`.
    pub tool: String,
    pub llama_cpp: LlamaCpp,
    /// The backend the libraries were built for (`cpu`, `cuda`, `metal`).
    pub backend: String,
    /// ggml's `llama_print_system_info()`: the CPU features the library was built with.
    pub system_info: String,
    pub devices: Vec<Device>,
    pub model: ModelInfo,
    pub manifest: Option<ManifestInfo>,
    /// The layers `--layers` expanded `{layer}` to, instead of the manifest's own.
    pub layers: Option<Vec<u32>>,
    /// `--tensors`: the glob every captured node's name matched (no manifest).
    pub tensors: Option<String>,
    /// `--tensors` with `--keep-padding`: a KV cache's views and writes
    /// written whole. Otherwise (and always with a manifest) only their
    /// filled cells: a checkpoint's `shape` then has `n_kv` where its
    /// `ggml_ne` has the padded or whole cache.
    pub keep_padding: bool,
    /// False with `--no-extract` (no eval callback registered).
    pub extract: bool,
    pub prompt: String,
    pub tokens: Vec<i32>,
    /// The greedy tokens fed back after the prompt (`-n`).
    pub generated: Vec<i32>,
    /// The greedy choice after the last pass.
    pub next_token: Option<i32>,
    pub threads: i32,
    pub n_ctx: u32,
    pub n_gpu_layers: i32,
    /// KV-cache type: `f16` or `f32`.
    pub kv_type: String,
    pub flash_attn: FlashAttn,
    /// Checkpoints of the manifest the graph did not have (scores under
    /// flash attention), each with the reason.
    pub absent: Vec<AbsentCheckpoint>,
    pub format: Format,
    /// `prompt` or `all`: which passes were captured.
    pub steps: String,
    /// The prompt went one token per pass (`--sequential`): its step N
    /// checkpoints are position N's.
    pub sequential: bool,
    /// The symbols of the prompt pass.
    pub symbols: Symbols,
    /// `llama_decode` wall time of every pass.
    pub decode_ms: Vec<f64>,
    /// The first (prompt) pass's: it includes the warm-up of a fresh context.
    pub prompt_decode_ms: f64,
    /// `--repeat N`: the prompt decoded again N times each way, alternating.
    pub steady: Option<Steady>,
    /// The writer thread's busy time: formatting, hashing and writing the files.
    pub write_ms: f64,
    pub logits: LogitsRecord,
    /// The process's peak resident memory (Linux only).
    pub peak_rss_mb: Option<f64>,
    pub checkpoints: Vec<CheckpointRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaCpp {
    pub tree: LlamaTree,
    pub ggml_version: String,
    pub ggml_commit: String,
}

/// llama.cpp's flash attention setting: `on`, `off`, or `auto` (llama.cpp's
/// default: on where the backend supports it for the model).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum FlashAttnMode {
    On,
    Off,
    Auto,
}

/// A checkpoint the run's graph did not have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbsentCheckpoint {
    pub id: String,
    pub file: String,
    pub reason: String,
}

impl From<bool> for FlashAttnMode {
    fn from(on: bool) -> FlashAttnMode {
        match on {
            true => FlashAttnMode::On,
            false => FlashAttnMode::Off,
        }
    }
}

impl FlashAttnMode {
    /// As the command line and run.json spell it.
    pub fn name(self) -> &'static str {
        match self {
            FlashAttnMode::On => "on",
            FlashAttnMode::Off => "off",
            FlashAttnMode::Auto => "auto",
        }
    }
}

/// What a run asked of flash attention and what the graph did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlashAttn {
    pub requested: FlashAttnMode,
    /// Whether a FLASH_ATTN_EXT node ran (None when nothing was observed:
    /// `--no-extract`). Under `auto` this is llama.cpp's choice.
    pub used: Option<bool>,
}

impl FlashAttn {
    /// What the graph had, in words: `on`, `off`, or `unknown` (nothing observed it).
    pub fn used_name(&self) -> &'static str {
        match self.used {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown",
        }
    }
}

/// The llama.cpp source tree a build was made from. `cargo xtask build`
/// records it beside the build; the extractor copies it into every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaTree {
    /// `pinned` (vendor/pin.yaml) or `local` (a directory given with
    /// `--llama-cpp`); runs of earlier versions may say `pinned-unpatched`.
    pub kind: String,
    /// The pin's id (`llama-cpp-sys-2-0.1.161`), or the local directory's name.
    pub name: String,
    /// Where the tree is, as it was built.
    pub path: PathBuf,
    /// sha256 over every source file's relative path and content (build
    /// directories, `.git` and `*.gguf` left out): equal hashes, equal trees.
    pub content_sha256: String,
    /// `git describe --always --tags --dirty`, when the tree is a git checkout.
    pub git_describe: Option<String>,
}

impl LlamaTree {
    /// One line for tables and `--version`.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "{} ({}, {})",
            self.name,
            self.kind,
            &self.content_sha256[..12.min(self.content_sha256.len())]
        );
        if let Some(git) = &self.git_describe {
            line.push_str(&format!(", git {git}"));
        }
        line
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub sha256: String,
    pub architecture: String,
    pub n_layer: i64,
    /// How many matrices (tensors of two or more dimensions) the GGUF stores
    /// in each type (`f32`, `q4_K`...): the weights' precision, which sets
    /// how close a comparison can expect llama.cpp to be.
    #[serde(default)]
    pub weights: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestInfo {
    pub path: PathBuf,
    pub sha256: Option<String>,
}

/// Steady-state timing: after the run's own passes, the prompt decoded again
/// on a cleared cache, alternating a context without an eval callback and the
/// capturing one (asking only, then copying and discarding), so warm-up and
/// drifting load hit every side alike.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Steady {
    /// Prompt decode times with the checkpoints captured.
    pub with_ms: Vec<f64>,
    /// Prompt decode times with no eval callback at all.
    pub without_ms: Vec<f64>,
    /// Prompt decode times with the same nodes asked for but not read: the
    /// scheduler's stops alone (`with - asked` is the reading).
    #[serde(default)]
    pub asked_ms: Vec<f64>,
}

impl Steady {
    /// Median with capture / median without.
    pub fn ratio(&self) -> f64 {
        median(&self.with_ms) / median(&self.without_ms)
    }
}

/// The median of `values` (NaN when there are none).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `logits.bin`: the last row's logits of every pass, `[passes, n_vocab]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogitsRecord {
    pub file: String,
    pub shape: Vec<i64>,
    pub sha256: String,
}

/// One checkpoint file of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRecord {
    pub id: String,
    pub layer: Option<u32>,
    /// The pass: 0 is the prompt's, N the N-th generated token's.
    pub step: usize,
    /// The ggml node name.
    pub tensor: String,
    pub op: String,
    /// The node's ne, innermost first (before padded KV cells were dropped).
    pub ggml_ne: [i64; 4],
    /// The file's shape, row-major.
    pub shape: Vec<i64>,
    /// The node's type before conversion to f32.
    pub source_dtype: String,
    /// The backend buffer it was read from (`CPU`, `CUDA0`, `RPC0[host:port]`...).
    pub buffer: String,
    /// Bytes fetched from that backend for it (0 when read in host memory):
    /// what crossed PCIe or the network.
    #[serde(default)]
    pub fetched_bytes: u64,
    pub file: String,
    pub sha256: String,
    /// Over the finite values; `None` when there are none.
    pub min: Option<f32>,
    pub max: Option<f32>,
    pub mean: Option<f64>,
    pub non_finite: usize,
    /// `--tensors`: the node's index in the pass's graph (its file's prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_index: Option<usize>,
    /// `--tensors`: the node's operands in order, each by name and, where it
    /// is a node this run captured, by graph index: the graph's edges, for
    /// matching it with another implementation's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operands: Vec<Operand>,
    /// `--operands`: ggml's `op_params` of the node (trailing zeros
    /// dropped): a float parameter (an epsilon, a scale) is its bits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub op_params: Vec<i32>,
    /// `--operands`: how the node's bytes lie (what a view op is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// `--operands`: ggml's tensor flags (where a tree has it, 16 marks a
    /// node the backend computes: nodes no output needs are skipped and
    /// hold whatever their memory held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ggml_flags: Option<i32>,
    /// `--operands`: this file is a copy of an operand of the node with
    /// this graph index (one that is neither a captured node nor a weight:
    /// a graph input, a cache, a node the glob did not take).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operand_of: Option<usize>,
}

impl RunRecord {
    /// Reads `dir/run.json`, refusing a record of another schema version.
    pub fn read(dir: &Path) -> Result<RunRecord> {
        let path = dir.join(FILE);
        let bytes =
            std::fs::read(&path).with_context(|| format!("no run record at {}", path.display()))?;
        RunRecord::parse(&bytes).with_context(|| format!("cannot use {}", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<RunRecord> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).context("not JSON: not a run record")?;
        let version = value.get("schema_version").and_then(|v| v.as_u64());
        match version {
            Some(v) if v == u64::from(SCHEMA_VERSION) => {}
            Some(v) if v > u64::from(SCHEMA_VERSION) => bail!(
                "run record schema version {v} is newer than this tool's ({SCHEMA_VERSION}): \
                 update llorch-checkpoint to read it"
            ),
            Some(v) => bail!(
                "run record schema version {v} is older than this tool's ({SCHEMA_VERSION}): \
                 rerun the extraction"
            ),
            None => bail!(
                "the run record has no schema_version (written by an extractor older than \
                 schema version {SCHEMA_VERSION}): rerun the extraction"
            ),
        }
        serde_json::from_value(value).context("the run record does not have the expected fields")
    }

    /// The record as written to disk.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a run record always serializes")
    }

    /// The manifest at `path` expanded as this run expanded it (`--layers`),
    /// as its graph had it: with flash attention, each checkpoint's layout
    /// then, and without those the graph did not have (`absent`).
    pub fn manifest(&self, path: &Path) -> Result<Manifest> {
        let manifest = Manifest::load_with_layers(path, self.layers.as_deref())?;
        Ok(match self.flash_attn.used {
            Some(true) => manifest.under_flash_attn().0,
            _ => manifest,
        })
    }

    /// One line naming the checkpoints the graph did not have, by id, with
    /// the reason and the flag that brings them back (only flash attention
    /// takes nodes away); None when it had them all.
    pub fn absent_summary(&self) -> Option<String> {
        let mut ids: Vec<(&str, usize, &str)> = Vec::new();
        for a in &self.absent {
            match ids.iter_mut().find(|(id, _, _)| *id == a.id) {
                Some((_, n, _)) => *n += 1,
                None => ids.push((&a.id, 1, &a.reason)),
            }
        }
        let parts: Vec<String> = ids
            .iter()
            .map(|(id, n, why)| match n {
                1 => format!("{id} ({why})"),
                n => format!("{id} x{n} ({why})"),
            })
            .collect();
        let them = if ids.len() == 1 { "it" } else { "them" };
        (!parts.is_empty()).then(|| format!("{}; `-fa off` brings {them} back", parts.join(", ")))
    }

    /// The prompt pass's first checkpoint read from node `tensor`.
    pub fn checkpoint_by_tensor(&self, tensor: &str) -> Option<&CheckpointRecord> {
        self.checkpoints
            .iter()
            .find(|c| c.tensor == tensor && c.step == 0)
    }

    /// The prompt pass's record of checkpoint file `file`.
    pub fn checkpoint(&self, file: &str) -> Option<&CheckpointRecord> {
        self.checkpoints.iter().find(|c| c.file == file)
    }
}

/// A complete record of a 2-token GPT-2 run with one checkpoint, for tests
/// of the readers (the `fixture` feature; unit tests here).
#[cfg(any(test, feature = "fixture"))]
pub fn example() -> RunRecord {
    RunRecord {
        schema_version: SCHEMA_VERSION,
        tool: "llorch-checkpoint-extractor 0.1.0".into(),
        llama_cpp: LlamaCpp {
            tree: LlamaTree {
                kind: "pinned".into(),
                name: "pin".into(),
                path: "vendor/llama.cpp".into(),
                content_sha256: "0123456789abcdef".into(),
                git_describe: None,
            },
            ggml_version: "0.26.0".into(),
            ggml_commit: "abc".into(),
        },
        backend: "cpu".into(),
        system_info: "CPU : AVX2 = 1 |".into(),
        devices: vec![Device {
            name: "CPU".into(),
            description: "x86".into(),
        }],
        model: ModelInfo {
            path: "m.gguf".into(),
            sha256: "00".into(),
            architecture: "gpt2".into(),
            n_layer: 12,
            weights: [("f32".to_string(), 49)].into(),
        },
        manifest: None,
        layers: None,
        tensors: None,
        keep_padding: false,
        extract: true,
        prompt: "Hello world".into(),
        tokens: vec![15496, 995],
        generated: vec![11],
        next_token: Some(11),
        threads: 2,
        n_ctx: 512,
        n_gpu_layers: 0,
        kv_type: "f16".into(),
        flash_attn: FlashAttn {
            requested: FlashAttnMode::Auto,
            used: Some(false),
        },
        absent: Vec::new(),
        format: Format::Bin,
        steps: "prompt".into(),
        sequential: false,
        symbols: example_symbols(),
        decode_ms: vec![10.0, 5.0],
        prompt_decode_ms: 10.0,
        steady: Some(Steady {
            with_ms: vec![5.0, 6.0, 4.0],
            without_ms: vec![4.0, 5.0],
            asked_ms: vec![4.5],
        }),
        write_ms: 1.5,
        logits: LogitsRecord {
            file: "logits.bin".into(),
            shape: vec![2, 50257],
            sha256: "11".into(),
        },
        peak_rss_mb: Some(100.0),
        checkpoints: vec![CheckpointRecord {
            id: "01_ln1_output".into(),
            layer: Some(0),
            step: 0,
            tensor: "attn_norm-0".into(),
            op: "ADD".into(),
            ggml_ne: [768, 2, 1, 1],
            shape: vec![2, 768],
            source_dtype: "f32".into(),
            buffer: "CPU".into(),
            fetched_bytes: 0,
            file: "checkpoint_01_ln1_output.bin".into(),
            sha256: "22".into(),
            min: None,
            max: Some(1.0),
            mean: Some(0.5),
            non_finite: 0,
            graph_index: None,
            operands: Vec::new(),
            op_params: Vec::new(),
            layout: None,
            ggml_flags: None,
            operand_of: None,
        }],
    }
}

/// GPT-2 small's symbols for a 2-token prompt pass.
#[cfg(any(test, feature = "fixture"))]
fn example_symbols() -> Symbols {
    Symbols {
        n_embd: 768,
        n_head: 12,
        n_head_kv: 12,
        head_dim: 64,
        n_embd_gqa: 768,
        n_ff: 3072,
        n_vocab: 50257,
        n_ctx: 512,
        n_tokens: 2,
        n_kv: 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_state_ratio_is_of_medians() {
        let steady = example().steady.unwrap();
        assert_eq!(median(&steady.with_ms), 5.0);
        assert_eq!(median(&steady.without_ms), 4.5);
        assert_eq!(steady.ratio(), 5.0 / 4.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn a_record_round_trips() {
        let record = example();
        let back = RunRecord::parse(&record.to_json()).unwrap();
        assert_eq!(back.to_json(), record.to_json());
        assert_eq!(
            back.checkpoint("checkpoint_01_ln1_output.bin").unwrap().min,
            None
        );
    }

    fn with_version(version: Option<u64>) -> Vec<u8> {
        let mut value = serde_json::to_value(example()).unwrap();
        match version {
            Some(v) => value["schema_version"] = v.into(),
            None => {
                value.as_object_mut().unwrap().remove("schema_version");
            }
        }
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn a_record_of_another_schema_version_is_refused_by_name() {
        let future = RunRecord::parse(&with_version(Some(7))).unwrap_err();
        assert_eq!(
            future.to_string(),
            "run record schema version 7 is newer than this tool's (5): update llorch-checkpoint to read it"
        );
        let old = RunRecord::parse(&with_version(Some(0))).unwrap_err();
        assert!(old.to_string().contains("version 0 is older"), "{old}");
        let none = RunRecord::parse(&with_version(None)).unwrap_err();
        assert!(none.to_string().contains("no schema_version"), "{none}");
    }

    #[test]
    fn a_record_missing_a_field_says_so() {
        let mut value = serde_json::to_value(example()).unwrap();
        value.as_object_mut().unwrap().remove("tokens");
        let err = RunRecord::parse(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(
            format!("{err:#}").contains("missing field `tokens`"),
            "{err:#}"
        );
    }
}
