//! The graph as it is: `--list-nodes` (every node of a prompt pass as the
//! eval callback's ask path sees it: name, op, type, ne, operands), and what
//! flash attention `auto` gives, which decides the graph.

use anyhow::{Context as _, Result};

use std::path::Path;

use crate::ffi::eval::Observer;
use crate::ffi::llama::{Context, ContextParams, KvType, Model, Token};
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
    /// `--flash-attn`, decided as the run decides it: the graph differs with it.
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
    let first = *tokens.first().context("the prompt has no tokens")?;
    let on = flash_attn_on(&model, opts.flash_attn, opts.kv_type, opts.threads, first)?;
    log::info!(
        "flash attention {} (asked {})",
        if on { "on" } else { "off" },
        opts.flash_attn.name()
    );
    let params = ContextParams {
        n_ctx,
        n_batch: tokens.len().max(1) as u32,
        n_threads: opts.threads,
        kv_type: opts.kv_type,
        flash_attn: on.into(),
    };
    let mut ctx = Context::new(&model, &params, Some(Lister))?;
    ctx.decode(&tokens, 0, true)
        .context("decoding the prompt")?;
    Ok(())
}

/// `--flash-attn` made definite before the run, so that the checkpoints'
/// layouts are known while they are copied: `auto` is what llama.cpp
/// decides for this model and backend, seen in the graph of one token
/// decoded on a throwaway context of a few cells.
pub fn flash_attn_on(
    model: &Model,
    mode: FlashAttnMode,
    kv_type: KvType,
    threads: i32,
    token: Token,
) -> Result<bool> {
    match mode {
        FlashAttnMode::On => return Ok(true),
        FlashAttnMode::Off => return Ok(false),
        FlashAttnMode::Auto => {}
    }
    let params = ContextParams {
        n_ctx: 256,
        n_batch: 1,
        n_threads: threads,
        kv_type,
        flash_attn: FlashAttnMode::Auto,
    };
    let mut ctx = Context::new(model, &params, Some(FlashAttnProbe(false)))?;
    ctx.decode(&[token], 0, false)
        .context("decoding one token to see what flash attention `auto` gives")?;
    Ok(ctx.observer_mut().is_some_and(|p| p.0))
}

/// Asks for nothing; notes a FLASH_ATTN_EXT node.
struct FlashAttnProbe(bool);

impl Observer for FlashAttnProbe {
    fn wants(&mut self, node: &Node<'_>) -> bool {
        self.0 |= node.op_name() == "FLASH_ATTN_EXT";
        false
    }

    fn observe(&mut self, _: &Node<'_>) -> Result<()> {
        Ok(())
    }
}
