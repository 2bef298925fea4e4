//! `--list-nodes`: every node of a prompt pass as the eval callback's ask path
//! sees it (name, op, type, ne, operands), to write a manifest for a new architecture.

use anyhow::{Context as _, Result};

use std::path::Path;

use crate::ffi::eval::Observer;
use crate::ffi::llama::{Context, ContextParams, KvType, Model};
use crate::ffi::tensor::Node;
use crate::load::Prompt;
use crate::preflight::{self, ContextAsk};
use crate::record::FlashAttnMode;

/// `--list-nodes`: prints every node of the prompt pass as the ask path sees
/// it (name, op, type, ne, operand names), computing nothing extra.
struct Lister;

impl Observer for Lister {
    fn wants(&mut self, node: &Node<'_>) -> bool {
        let operands: Vec<String> = node
            .source_names()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        println!(
            "{:<28} {:<10} {:<5} {:<22} <- {}",
            node.name_lossy(),
            node.op_name(),
            node.type_name(),
            crate::manifest::fmt_ne(&node.ne()),
            operands.join(", ")
        );
        false
    }
    fn observe(&mut self, _: &Node<'_>) -> Result<()> {
        Ok(())
    }
}

/// What [`list_nodes`] reads.
pub struct ListOptions<'a> {
    pub model: &'a Path,
    /// `--n-gpu-layers`.
    pub n_gpu_layers: i32,
    pub prompt: &'a Prompt,
    /// `--ctx-size`.
    pub ctx_size: Option<u32>,
    pub threads: i32,
    pub kv_type: KvType,
    /// As the run would decide it: the node names differ with flash attention.
    pub flash_attn: FlashAttnMode,
}

pub fn list_nodes(opts: &ListOptions<'_>) -> Result<()> {
    let model = Model::load(opts.model, opts.n_gpu_layers)?;
    let tokens = opts.prompt.tokens(&model)?;
    let ask = ContextAsk {
        ctx_size: opts.ctx_size,
        n_predict: 0,
    };
    let n_ctx = preflight::context_size(ask, opts.model, &model, tokens.len())?;
    let params = ContextParams {
        n_ctx,
        n_batch: tokens.len().max(1) as u32,
        n_threads: opts.threads,
        kv_type: opts.kv_type,
        flash_attn: opts.flash_attn,
    };
    let mut ctx = Context::new(&model, &params, Some(Lister))?;
    ctx.decode(&tokens, 0, true)
        .context("decoding the prompt")?;
    Ok(())
}
