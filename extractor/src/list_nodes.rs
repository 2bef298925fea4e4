//! `--list-nodes`: every node of a prompt pass as the eval callback's ask path
//! sees it (name, op, type, ne), to write a manifest for a new architecture.

use anyhow::{Context as _, Result};

use crate::ffi::eval::Observer;
use crate::ffi::llama::{Context, ContextParams, Model};
use crate::ffi::tensor::Node;
use crate::preflight;
use crate::run::Config;

/// `--list-nodes`: prints every node of the prompt pass as the ask path sees
/// it (name, op, type, ne), computing nothing extra.
struct Lister;

impl Observer for Lister {
    fn wants(&mut self, node: &Node<'_>) -> bool {
        println!(
            "{:<28} {:<10} {:<5} {}",
            node.name_lossy(),
            node.op_name(),
            node.type_name(),
            crate::manifest::fmt_ne(&node.ne())
        );
        false
    }
    fn observe(&mut self, _: &Node<'_>) -> Result<()> {
        Ok(())
    }
}

pub fn list_nodes(cfg: &Config, flash_attn: bool) -> Result<()> {
    let model = Model::load(&cfg.model, cfg.n_gpu_layers)?;
    let tokens = crate::run::prompt_tokens(cfg, &model)?;
    let n_ctx = preflight::context_size(
        &Config {
            n_predict: 0,
            ..cfg.clone()
        },
        &model,
        tokens.len(),
    )?;
    let params = ContextParams {
        n_ctx,
        n_batch: n_ctx,
        n_threads: cfg.threads,
        kv_type: cfg.kv_type,
        flash_attn: Some(flash_attn),
    };
    let mut ctx = Context::new(&model, &params, Some(Lister))?;
    ctx.decode(&tokens, 0, true)
        .context("decoding the prompt")?;
    Ok(())
}
