//! GPT-2's embeddings and first layer, in plain Rust from a GGUF's f32
//! weights: the engine of the worked example. Each step's output is kept
//! under the id of the llama.cpp checkpoint it corresponds to
//! (`manifests/gpt2.yaml`), in that checkpoint's row-major layout.

use std::collections::BTreeMap;
use std::path::Path;

use gguf_rs_lib::format::GGUFTensorType;
use gguf_rs_lib::reader::{open_gguf_file, GGUFFileReader};

/// What to compute: GPT-2 as it is, or with a mistake planted for the tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// GPT-2.
    Correct,
    /// Attention scores without the 1/sqrt(head_dim) scale.
    UnscaledScores,
}

/// Layer 0's weights and the model's sizes.
pub struct Gpt2Layer0 {
    n_embd: usize,
    n_head: usize,
    eps: f32,
    weights: BTreeMap<&'static str, Vec<f32>>,
}

/// Each checkpoint's data by id, e.g. `02_q` -> [n_tokens, n_head, head_dim].
pub type Checkpoints = BTreeMap<&'static str, Vec<f32>>;

const TENSORS: [&str; 14] = [
    "token_embd.weight",
    "position_embd.weight",
    "blk.0.attn_norm.weight",
    "blk.0.attn_norm.bias",
    "blk.0.attn_qkv.weight",
    "blk.0.attn_qkv.bias",
    "blk.0.attn_output.weight",
    "blk.0.attn_output.bias",
    "blk.0.ffn_norm.weight",
    "blk.0.ffn_norm.bias",
    "blk.0.ffn_up.weight",
    "blk.0.ffn_up.bias",
    "blk.0.ffn_down.weight",
    "blk.0.ffn_down.bias",
];

impl Gpt2Layer0 {
    /// Reads layer 0 of the GPT-2 GGUF `path` (f32 weights).
    pub fn load(path: &Path) -> Result<Self, String> {
        let mut gguf = open_gguf_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let number = |key: &str| {
            let value = gguf.metadata().get(key);
            let n = value.and_then(|v| v.as_f64().or(v.as_u64().map(|n| n as f64)));
            n.ok_or(format!("{}: no number {key}", path.display()))
        };
        let n_embd = number("gpt2.embedding_length")? as usize;
        let n_head = number("gpt2.attention.head_count")? as usize;
        let eps = number("gpt2.attention.layer_norm_epsilon")? as f32;
        let mut weights = BTreeMap::new();
        for name in TENSORS {
            weights.insert(name, f32_tensor(&mut gguf, name)?);
        }
        Ok(Gpt2Layer0 {
            n_embd,
            n_head,
            eps,
            weights,
        })
    }

    fn w(&self, name: &str) -> &[f32] {
        &self.weights[name]
    }

    /// The prompt `tokens` through the embeddings and layer 0.
    pub fn forward(&self, tokens: &[i32], variant: Variant) -> Checkpoints {
        let (d, t, h) = (self.n_embd, tokens.len(), self.n_head);
        let hd = d / h;
        let x = self.embed(tokens);
        let ln1 = self.layer_norm(&x, "blk.0.attn_norm");
        let qkv = linear(
            &ln1,
            self.w("blk.0.attn_qkv.weight"),
            self.w("blk.0.attn_qkv.bias"),
            d,
            3 * d,
        );
        let part = |k: usize| -> Vec<f32> {
            (0..t)
                .flat_map(|p| qkv[p * 3 * d + k * d..][..d].to_vec())
                .collect()
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scale = match variant {
            Variant::Correct => 1.0 / (hd as f32).sqrt(),
            Variant::UnscaledScores => 1.0,
        };
        let scores = self.scores(&q, &k, t, scale);
        let attn_out = linear(
            &self.attend(&scores, &v, t),
            self.w("blk.0.attn_output.weight"),
            self.w("blk.0.attn_output.bias"),
            d,
            d,
        );
        let resid: Vec<f32> = x.iter().zip(&attn_out).map(|(a, b)| a + b).collect();
        let ffn = self.mlp(&self.layer_norm(&resid, "blk.0.ffn_norm"));
        // The V cache is stored transposed: [1, head_dim, n_head, n_kv].
        let cache_v: Vec<f32> = (0..hd)
            .flat_map(|c| (0..h).flat_map(move |head| (0..t).map(move |j| (c, head, j))))
            .map(|(c, head, j)| v[j * d + head * hd + c])
            .collect();
        let mut out = Checkpoints::new();
        out.insert("01_ln1_output", ln1);
        out.insert("02_q", q);
        out.insert("02_k", k.clone());
        out.insert("03_cache_k", k);
        out.insert("02_v", v);
        out.insert("03_cache_v", cache_v);
        out.insert("04_scores", scores);
        out.insert("05_output", attn_out);
        out.insert("06_ffn", ffn);
        out
    }

    /// Token plus position embeddings, [token][n_embd].
    fn embed(&self, tokens: &[i32]) -> Vec<f32> {
        let d = self.n_embd;
        let mut x = vec![0f32; tokens.len() * d];
        for (p, &tok) in tokens.iter().enumerate() {
            let (e, pos) = (
                &self.w("token_embd.weight")[tok as usize * d..][..d],
                &self.w("position_embd.weight")[p * d..][..d],
            );
            for i in 0..d {
                x[p * d + i] = e[i] + pos[i];
            }
        }
        x
    }

    /// Scores [head][query][cell] after softmax, causal, over `t` tokens.
    fn scores(&self, q: &[f32], k: &[f32], t: usize, scale: f32) -> Vec<f32> {
        let (d, h) = (self.n_embd, self.n_head);
        let hd = d / h;
        let mut scores = vec![0f32; h * t * t];
        for head in 0..h {
            for i in 0..t {
                let row = &mut scores[(head * t + i) * t..][..t];
                for j in 0..=i {
                    let dot: f32 = (0..hd)
                        .map(|c| q[i * d + head * hd + c] * k[j * d + head * hd + c])
                        .sum();
                    row[j] = dot * scale;
                }
                softmax(&mut row[..=i]);
            }
        }
        scores
    }

    /// The scores applied to V: each head's output, [token][n_embd].
    fn attend(&self, scores: &[f32], v: &[f32], t: usize) -> Vec<f32> {
        let (d, h) = (self.n_embd, self.n_head);
        let hd = d / h;
        let mut attn = vec![0f32; t * d];
        for head in 0..h {
            for i in 0..t {
                for j in 0..=i {
                    let p = scores[(head * t + i) * t + j];
                    for c in 0..hd {
                        attn[i * d + head * hd + c] += p * v[j * d + head * hd + c];
                    }
                }
            }
        }
        attn
    }

    /// The feed-forward block on the normed residual: up, GELU, down.
    fn mlp(&self, x: &[f32]) -> Vec<f32> {
        let d = self.n_embd;
        let mut up = linear(
            x,
            self.w("blk.0.ffn_up.weight"),
            self.w("blk.0.ffn_up.bias"),
            d,
            4 * d,
        );
        up.iter_mut().for_each(|u| *u = gelu(*u));
        linear(
            &up,
            self.w("blk.0.ffn_down.weight"),
            self.w("blk.0.ffn_down.bias"),
            4 * d,
            d,
        )
    }

    fn layer_norm(&self, x: &[f32], prefix: &str) -> Vec<f32> {
        let d = self.n_embd;
        let (g, b) = (
            self.w(&format!("{prefix}.weight")),
            self.w(&format!("{prefix}.bias")),
        );
        x.chunks(d)
            .flat_map(|row| {
                let mean = row.iter().sum::<f32>() / d as f32;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                let inv = 1.0 / (var + self.eps).sqrt();
                row.iter()
                    .enumerate()
                    .map(move |(i, v)| (v - mean) * inv * g[i] + b[i])
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// `x` [rows, n_in] times the GGUF matrix `w` (ggml ne [n_in, n_out]: row-major
/// [n_out, n_in]) plus `b`.
fn linear(x: &[f32], w: &[f32], b: &[f32], n_in: usize, n_out: usize) -> Vec<f32> {
    x.chunks(n_in)
        .flat_map(|row| {
            (0..n_out).map(move |o| {
                b[o] + w[o * n_in..][..n_in]
                    .iter()
                    .zip(row)
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
            })
        })
        .collect()
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|v| *v = (*v - max).exp());
    let sum: f32 = row.iter().sum();
    row.iter_mut().for_each(|v| *v /= sum);
}

/// GPT-2's GELU, the tanh approximation.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

fn f32_tensor(
    gguf: &mut GGUFFileReader<std::io::BufReader<std::fs::File>>,
    name: &str,
) -> Result<Vec<f32>, String> {
    let info = gguf
        .get_tensor_info(name)
        .ok_or(format!("no tensor {name}"))?;
    if info.tensor_type() != GGUFTensorType::F32 {
        return Err(format!(
            "{name} is {:?}: this example reads f32 weights (cargo xtask model makes them)",
            info.tensor_type()
        ));
    }
    let data = gguf
        .load_tensor_data(name)
        .map_err(|e| format!("{name}: {e}"))?
        .ok_or(format!("{name}: no data"))?;
    Ok(data
        .as_slice()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}
