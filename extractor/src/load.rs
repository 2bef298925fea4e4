//! The model and the prompt's tokens, loaded, and what follows from both: the
//! context size and the symbols a manifest's shapes are written in.

use std::path::Path;

use anyhow::{bail, Result};

use crate::ffi::llama::{Model, Token};
use crate::manifest::Symbols;
use crate::preflight::{self, ContextAsk};

/// The prompt as the command line gives it: text, or token ids (`--tokens`).
#[derive(Clone, Debug)]
pub struct Prompt {
    /// `-p` or `-f`; empty with `--tokens`.
    pub text: String,
    /// `--tokens`: the prompt as token ids, instead of text to tokenize.
    pub ids: Option<Vec<Token>>,
}

impl Prompt {
    /// The prompt's token ids: `--tokens` as given (each checked against the
    /// vocabulary), or the text tokenized by the model.
    pub fn tokens(&self, model: &Model) -> Result<Vec<Token>> {
        let tokens = match &self.ids {
            Some(ids) => {
                let n_vocab = model.n_vocab();
                if let Some(bad) = ids.iter().find(|&&t| t < 0 || i64::from(t) >= n_vocab) {
                    bail!(
                        "--tokens: id {bad} is not in the model's vocabulary (0 to {})",
                        n_vocab - 1
                    );
                }
                ids.clone()
            }
            None => model.tokenize(&self.text)?,
        };
        if tokens.is_empty() {
            bail!("the prompt {:?} gives no tokens", self.text);
        }
        Ok(tokens)
    }
}

/// `--load`: how the weights reach memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadMode {
    /// Mapped from the file, as llama.cpp does by default: a warm page cache
    /// makes the load almost free; the first pass pays any page faults.
    Mmap,
    /// Read whole at load, so that the first pass's time is compute alone.
    Read,
}

/// What `load` reads.
pub struct LoadOptions<'a> {
    pub model: &'a Path,
    /// `--n-gpu-layers`.
    pub n_gpu_layers: i32,
    /// `--tensor-split`: how the offloaded layers are shared among the devices.
    pub tensor_split: &'a [f32],
    /// `--load`: the weights mapped (true) or read whole.
    pub map_weights: bool,
    pub prompt: &'a Prompt,
    pub context: ContextAsk,
}

/// The model, the prompt's tokens and what follows from both.
pub(crate) struct Loaded {
    pub(crate) model: Model,
    /// GGUF `general.architecture`.
    pub(crate) arch: String,
    pub(crate) tokens: Vec<Token>,
    pub(crate) n_ctx: u32,
    /// The symbols of the run; `n_tokens` and `n_kv` are set per pass.
    pub(crate) base: Symbols,
}

pub(crate) fn load(opts: &LoadOptions<'_>) -> Result<Loaded> {
    let model = Model::load_split(
        opts.model,
        opts.n_gpu_layers,
        opts.tensor_split,
        opts.map_weights,
    )?;
    let arch = model
        .meta("general.architecture")
        .unwrap_or_else(|| "unknown".into());
    let tokens = opts.prompt.tokens(&model)?;
    let n_ctx = preflight::context_size(opts.context, opts.model, &model, tokens.len())?;
    let base = symbols(&model, &arch, n_ctx);
    Ok(Loaded {
        model,
        arch,
        tokens,
        n_ctx,
        base,
    })
}

/// The model's symbols (`n_embd`, `head_dim`, ...) for a context of `n_ctx`.
fn symbols(model: &Model, arch: &str, n_ctx: u32) -> Symbols {
    let head_dim = model
        .meta(&format!("{arch}.attention.key_length"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(model.n_embd() / model.n_head().max(1));
    Symbols {
        n_embd: model.n_embd(),
        n_head: model.n_head(),
        n_head_kv: model.n_head_kv(),
        head_dim,
        n_embd_gqa: head_dim.saturating_mul(model.n_head_kv()),
        n_ff: model
            .meta(&format!("{arch}.feed_forward_length"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        n_vocab: model.n_vocab(),
        n_ctx: n_ctx as i64,
        n_tokens: 0,
        n_kv: 0,
    }
}
