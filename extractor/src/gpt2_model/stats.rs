//! Measured, not assumed: one forward pass through llama.cpp with an eval
//! callback, summarising the activations a checkpoint comparison relies on.

use std::path::Path;

use anyhow::Result;

use crate::ffi::eval::Observer;
use crate::ffi::llama::{Context, ContextParams, KvType, Model};
use crate::ffi::tensor::Node;
use crate::record::FlashAttnMode;

/// A prompt with repetition, punctuation and a long-ish span (29 tokens).
pub const PROMPT: &str = "The quick brown fox jumps over the lazy dog. The dog, surprised, barks twice; the fox runs away!";

#[derive(Debug, Default, Clone)]
pub struct Layer {
    /// Mean over heads and query rows (with >= 4 keys) of the largest attention weight.
    pub attn_max: f64,
    /// Mean normalised entropy of those rows: 1.0 would be uniform attention.
    pub attn_entropy: f64,
    /// Standard deviation of the residual stream entering the attention LayerNorm.
    pub attn_ln_in_std: f64,
    /// ... and entering the FFN LayerNorm.
    pub ffn_ln_in_std: f64,
    /// Fraction of GELU inputs above zero, and their range.
    pub gelu_pos: f64,
    pub gelu_min: f32,
    pub gelu_max: f32,
}

#[derive(Default)]
struct Collect {
    n_tokens: i64,
    layers: Vec<Layer>,
    scratch: Vec<u8>,
    buf: Vec<f32>,
}

fn layer_of(name: &[u8], prefix: &[u8]) -> Option<usize> {
    let rest = name.strip_prefix(prefix)?.strip_prefix(b"-")?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

fn std_dev(v: &[f32]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

impl Collect {
    fn layer(&mut self, l: usize) -> &mut Layer {
        if self.layers.len() <= l {
            self.layers.resize(l + 1, Layer::default());
        }
        &mut self.layers[l]
    }
}

impl Observer for Collect {
    fn wants(&mut self, node: &Node<'_>) -> bool {
        let n = node.name();
        n == b"inpL"
            || layer_of(n, b"kq_soft_max").is_some()
            || layer_of(n, b"l_out").is_some()
            || layer_of(n, b"ffn_inp").is_some()
            || layer_of(n, b"ffn_up_b").is_some()
    }

    fn observe(&mut self, node: &Node<'_>) -> Result<()> {
        let name = node.name();
        let ne = node.ne();
        if let Some(l) = layer_of(name, b"kq_soft_max") {
            // [n_kv, n_tokens, n_head]: keep the keys that exist.
            let t = self.n_tokens.min(ne[0]).min(ne[1]);
            node.copy_to_f32([t, t, ne[2], 1], 1, &mut self.scratch, &mut self.buf)?;
            let (mut max_sum, mut ent_sum, mut counted) = (0.0, 0.0, 0usize);
            for (r, row) in self.buf.chunks_exact(t as usize).enumerate() {
                // Rows are query positions within a head; query q sees keys 0..=q.
                let keys = &row[..=(r % t as usize)];
                if keys.len() < 4 {
                    continue;
                }
                counted += 1;
                max_sum += keys.iter().fold(0f32, |a, &b| a.max(b)) as f64;
                let h: f64 = keys
                    .iter()
                    .filter(|&&p| p > 0.0)
                    .map(|&p| -(p as f64) * (p as f64).ln())
                    .sum();
                ent_sum += h / (keys.len() as f64).ln();
            }
            let layer = self.layer(l);
            layer.attn_max = max_sum / counted.max(1) as f64;
            layer.attn_entropy = ent_sum / counted.max(1) as f64;
            return Ok(());
        }
        node.copy_to_f32(ne, 1, &mut self.scratch, &mut self.buf)?;
        let sd = std_dev(&self.buf);
        if name == b"inpL" {
            self.layer(0).attn_ln_in_std = sd;
        } else if let Some(l) = layer_of(name, b"l_out") {
            self.layer(l + 1).attn_ln_in_std = sd;
        } else if let Some(l) = layer_of(name, b"ffn_inp") {
            self.layer(l).ffn_ln_in_std = sd;
        } else if let Some(l) = layer_of(name, b"ffn_up_b") {
            let pos = self.buf.iter().filter(|&&x| x > 0.0).count() as f64 / self.buf.len() as f64;
            let (lo, hi) = self
                .buf
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let layer = self.layer(l);
            (layer.gelu_pos, layer.gelu_min, layer.gelu_max) = (pos, lo, hi);
        }
        Ok(())
    }
}

/// Runs [`PROMPT`] through the model and summarises every layer.
pub fn measure(model_path: &Path, threads: i32) -> Result<Vec<Layer>> {
    let model = Model::load(model_path, 0)?;
    let tokens = model.tokenize(PROMPT)?;
    let params = ContextParams {
        n_ctx: 256,
        n_batch: 256,
        n_threads: threads,
        kv_type: KvType::F32,
        flash_attn: FlashAttnMode::Off,
    };
    let collect = Collect {
        n_tokens: tokens.len() as i64,
        ..Collect::default()
    };
    let mut ctx = Context::new(&model, &params, Some(collect))?;
    // All logits: the last layer then keeps every row, so its statistics cover all positions.
    ctx.decode(&tokens, 0, true)?;
    let mut layers = ctx
        .observer_mut()
        .map(|c| c.layers.clone())
        .unwrap_or_default();
    layers.truncate(model.n_layer() as usize);
    Ok(layers)
}

/// One line per layer, for people.
pub fn table(layers: &[Layer]) -> String {
    let mut s = String::from(
        "layer  attn max p  attn entropy (1 = uniform)  LN-in std (attn, ffn)  GELU in > 0   GELU in range\n",
    );
    for (l, x) in layers.iter().enumerate() {
        s += &format!(
            "{l:>5}  {:>10.3}  {:>26.3}  {:>10.3} {:>10.3}  {:>10.1}%   [{:.2}, {:.2}]\n",
            x.attn_max,
            x.attn_entropy,
            x.attn_ln_in_std,
            x.ffn_ln_in_std,
            100.0 * x.gelu_pos,
            x.gelu_min,
            x.gelu_max
        );
    }
    s
}
