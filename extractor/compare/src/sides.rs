//! The two sides a comparison needs and does not implement: llama.cpp (an
//! extractor run) and the reference model (PyTorch). `cargo xtask` provides
//! both; tests provide fakes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

/// One extractor run: the prompt pass of `model`, fresh cache, into `out`.
#[derive(Clone, Copy, Debug)]
pub struct Extraction<'a> {
    pub model: &'a Path,
    pub manifest: &'a Path,
    pub prompt: &'a str,
    /// `--layers`: `all` or `0,5,-1`; `None`: the manifest's.
    pub layers: Option<&'a str>,
    pub out: &'a Path,
    pub threads: u32,
    /// An f32 KV cache instead of llama.cpp's f16.
    pub kv_f32: bool,
    /// The prompt one token per pass (`.step<i>` files are position i).
    pub sequential: bool,
}

/// What a pass is fed: text the model tokenizes, or its token ids.
#[derive(Clone, Copy, Debug)]
pub enum Prompt<'a> {
    Text(&'a str),
    Tokens(&'a [i32]),
}

/// Runs llama.cpp.
pub trait Extractor {
    /// Writes the run directory `run.out` (`run.json` and `.bin` checkpoints).
    fn extract(&self, run: &Extraction<'_>) -> Result<()>;
    /// An f32 copy of `model` (its quantized tensors dequantized by
    /// llama.cpp), or `None` when no tensor of it is quantized.
    fn dequantized(&self, model: &Path) -> Result<Option<PathBuf>>;
    /// Writes into `out` a run of every node of the prompt pass of `prompt`
    /// (the extractor's `--tensors '*'`), each with its graph index and
    /// operands; with flash attention on or off where `flash_attn` says,
    /// else as every run of this extractor.
    fn extract_graph(
        &self,
        _model: &Path,
        _prompt: Prompt<'_>,
        _out: &Path,
        _flash_attn: Option<bool>,
    ) -> Result<()> {
        anyhow::bail!("this extractor cannot capture a whole graph")
    }
}

/// What the reference must compute: `job.json` in `out` says it, for a
/// reference written in another language.
#[derive(Serialize, Debug)]
pub struct ReferenceJob {
    pub gguf: PathBuf,
    /// The Hugging Face checkpoint the GGUF was converted from: loaded
    /// instead of the GGUF where given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hf: Option<PathBuf>,
    /// No checkpoints: every tensor the pass makes, for the matcher.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub everything: bool,
    /// The GGUF's sha256: keys a reference's saved copy of the model it
    /// built from it, so that a GGUF is parsed once.
    pub gguf_sha256: String,
    pub tokens: Vec<i32>,
    /// Where the tensors go: `out/<variant>/<stem>.npy`, and `out/reference.json`.
    pub out: PathBuf,
    pub variants: Vec<String>,
    pub threads: u32,
    pub checkpoints: Vec<JobCheckpoint>,
    /// Each layer's weights read from `hf` only while it runs: memory of one layer, whatever the model's size.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// The `f64+replay` variant's input of each layer but the first: llama.cpp's (`.npy`, [n_tokens, n_embd]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub layer_inputs: BTreeMap<u32, PathBuf>,
}

/// One tensor the reference captures, and the layout ops that give it the
/// checkpoint file's shape.
#[derive(Serialize, Debug)]
pub struct JobCheckpoint {
    pub key: String,
    pub stem: String,
    pub capture: String,
    pub shape: Vec<usize>,
    /// The manifest's ops, symbols resolved to numbers.
    pub ops: Vec<serde_json::Value>,
}

impl ReferenceJob {
    /// The job's file, which the comparison writes before [`Reference::compute`].
    pub fn file(&self) -> PathBuf {
        self.out.join("job.json")
    }
}

/// Produces reference tensors (transformers, in the project).
pub trait Reference {
    /// Writes every checkpoint of `job` for every variant, and
    /// `reference.json` ([`llorch_checkpoint_report::findings::Info`]), into `job.out`.
    fn compute(&self, job: &ReferenceJob) -> Result<()>;
}
