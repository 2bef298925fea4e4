//! A GPT-2 in GGUF that every machine can make: GPT-2 small's shapes and real
//! tokenizer, seeded pseudo-random weights.
//!
//! - Determinism: every tensor draws from its own ChaCha8 stream, seeded with
//!   sha256(seed, tensor name), from uniform distributions (no `exp`/`ln`, whose
//!   last bit may differ between C libraries), and is converted to f16/q8_0 by
//!   ggml itself. The same seed gives the same bytes everywhere, and a model with
//!   fewer layers has exactly the first layers of a larger one.
//! - Interesting activations: scales chosen (and measured by [`stats`]) so
//!   that attention rows are far from uniform, the residual stream grows from
//!   layer to layer (LayerNorm inputs of varied scale) and the GELU sees inputs
//!   on both sides of zero.
//! - [`check_gpt2`] is the gate for a GGUF someone else made: a `gpt2` model
//!   with every tensor llama.cpp's GPT-2 graph (and the manifests) use.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context as _, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Uniform};
use sha2::{Digest, Sha256};

use crate::ffi::gguf::{Dtype, GgufFile, GgufWriter};

/// GPT-2 small's hyper-parameters (`n_layer` may be lowered for small test models).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hparams {
    pub n_vocab: i64,
    pub n_ctx: i64,
    pub n_embd: i64,
    pub n_head: i64,
    pub n_layer: i64,
    pub n_ff: i64,
    pub norm_eps: f32,
}

impl Hparams {
    pub const GPT2_SMALL: Hparams = Hparams {
        n_vocab: 50257,
        n_ctx: 1024,
        n_embd: 768,
        n_head: 12,
        n_layer: 12,
        n_ff: 3072,
        norm_eps: 1e-5,
    };

    /// Every tensor llama.cpp's GPT-2 graph reads, with its shape (ggml order).
    /// `output.weight` is absent: GPT-2 ties it to `token_embd.weight`.
    pub fn tensors(&self) -> Vec<(String, Vec<i64>)> {
        let (e, v, c, f) = (self.n_embd, self.n_vocab, self.n_ctx, self.n_ff);
        let mut out = vec![
            ("token_embd.weight".to_string(), vec![e, v]),
            ("position_embd.weight".to_string(), vec![e, c]),
        ];
        for l in 0..self.n_layer {
            for (name, ne) in [
                ("attn_norm.weight", vec![e]),
                ("attn_norm.bias", vec![e]),
                ("attn_qkv.weight", vec![e, 3 * e]),
                ("attn_qkv.bias", vec![3 * e]),
                ("attn_output.weight", vec![e, e]),
                ("attn_output.bias", vec![e]),
                ("ffn_norm.weight", vec![e]),
                ("ffn_norm.bias", vec![e]),
                ("ffn_up.weight", vec![e, f]),
                ("ffn_up.bias", vec![f]),
                ("ffn_down.weight", vec![f, e]),
                ("ffn_down.bias", vec![e]),
            ] {
                out.push((format!("blk.{l}.{name}"), ne));
            }
        }
        out.push(("output_norm.weight".to_string(), vec![e]));
        out.push(("output_norm.bias".to_string(), vec![e]));
        out
    }
}

/// GPT-2's BPE vocabulary: tokens in its byte-to-unicode form, ordered merges.
pub struct Tokenizer {
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
}

/// `<|endoftext|>`: GPT-2's only special token, its BOS and EOS.
pub const EOT: u32 = 50256;

impl Tokenizer {
    /// Reads OpenAI's `encoder.json` (token -> id) and `vocab.bpe` (`#version` line, then merges).
    pub fn load(encoder_json: &Path, vocab_bpe: &Path) -> Result<Tokenizer> {
        let text = std::fs::read_to_string(encoder_json)
            .with_context(|| format!("cannot read {}", encoder_json.display()))?;
        let map: HashMap<String, u32> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a token -> id JSON object",
                encoder_json.display()
            )
        })?;
        let mut tokens = vec![None; map.len()];
        for (token, id) in map {
            let slot = tokens.get_mut(id as usize).with_context(|| {
                format!(
                    "{}: id {id} of {token:?} is out of range (ids must be 0..{})",
                    encoder_json.display(),
                    text.len()
                )
            })?;
            ensure!(
                slot.is_none(),
                "{}: id {id} is used twice",
                encoder_json.display()
            );
            *slot = Some(token);
        }
        let tokens: Vec<String> = tokens
            .into_iter()
            .map(|t| t.expect("ids are a permutation"))
            .collect();

        let text = std::fs::read_to_string(vocab_bpe)
            .with_context(|| format!("cannot read {}", vocab_bpe.display()))?;
        let merges: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        for m in &merges {
            ensure!(
                m.split(' ').count() == 2,
                "{}: merge {m:?} is not two tokens",
                vocab_bpe.display()
            );
        }
        ensure!(
            tokens.len() == Hparams::GPT2_SMALL.n_vocab as usize && merges.len() == 50000,
            "expected GPT-2's 50257 tokens and 50000 merges, found {} and {} in {} / {}",
            tokens.len(),
            merges.len(),
            encoder_json.display(),
            vocab_bpe.display()
        );
        ensure!(
            tokens[EOT as usize] == "<|endoftext|>",
            "token {EOT} is {:?}, not <|endoftext|>",
            tokens[EOT as usize]
        );
        Ok(Tokenizer { tokens, merges })
    }

    /// llama.cpp's token types: normal, except `<|endoftext|>`, a control token
    /// (as convert_hf_to_gguf.py marks HF's special added tokens).
    pub fn token_types(&self) -> Vec<i32> {
        const NORMAL: i32 = 1;
        const CONTROL: i32 = 3;
        (0..self.tokens.len())
            .map(|i| if i as u32 == EOT { CONTROL } else { NORMAL })
            .collect()
    }
}

/// How one tensor's values are drawn: `center + U(-spread, spread)`.
fn init_of(name: &str, layer: Option<i64>) -> (f32, f32) {
    // Uniform(-a, a) has std a/sqrt(3): the spreads below are std * 1.732.
    let layer_gain = layer.map_or(1.0, |l| 0.8 + 0.05 * l as f32);
    match name {
        "token_embd.weight" => (0.0, 0.17),
        "position_embd.weight" => (0.0, 0.09),
        "attn_norm.weight" | "ffn_norm.weight" => (layer_gain, 0.4),
        "attn_norm.bias" | "ffn_norm.bias" => (0.0, 0.17),
        "attn_qkv.weight" => (0.0, 0.09),
        "attn_qkv.bias" => (0.0, 0.17),
        "attn_output.weight" => (0.0, 0.05),
        "attn_output.bias" => (0.0, 0.09),
        "ffn_up.weight" => (0.0, 0.07),
        "ffn_up.bias" => (0.0, 0.5),
        "ffn_down.weight" => (0.0, 0.05),
        "ffn_down.bias" => (0.0, 0.09),
        "output_norm.weight" => (1.0, 0.2),
        "output_norm.bias" => (0.0, 0.09),
        other => unreachable!("no initialisation for {other}"),
    }
}

/// The values of tensor `name` (`n` of them) for `seed`.
pub fn tensor_values(seed: u64, name: &str, n: usize) -> Vec<f32> {
    let (layer, base) = match name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
        Some((l, base)) => (l.parse::<i64>().ok(), base),
        None => (None, name),
    };
    let (center, spread) = init_of(base, layer);
    let mut key = Sha256::new();
    key.update(b"llorch gpt2-synthetic v1\0");
    key.update(seed.to_le_bytes());
    key.update(name.as_bytes());
    let mut rng = ChaCha8Rng::from_seed(key.finalize().into());
    let dist = Uniform::new_inclusive(center - spread, center + spread).expect("finite bounds");
    dist.sample_iter(&mut rng).take(n).collect()
}

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub hparams: Hparams,
    pub seed: u64,
    pub dtype: Dtype,
}

impl Spec {
    pub fn name(&self) -> String {
        let dtype = match self.dtype {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Q8_0 => "q8_0",
        };
        format!(
            "gpt2-synthetic-{}-{}l-{dtype}",
            self.seed, self.hparams.n_layer
        )
    }
}

/// Generates the model and writes it to `out` through ggml's gguf writer.
pub fn write(spec: &Spec, tokenizer: &Tokenizer, out: &Path) -> Result<()> {
    let hp = spec.hparams;
    ensure!(hp.n_layer >= 1, "a model needs at least one layer");
    let tensors = hp.tensors();
    let mut w = GgufWriter::new(tensors.len())?;
    w.set_str("general.architecture", "gpt2")?;
    w.set_str("general.name", &spec.name())?;
    w.set_str(
        "general.description",
        &format!("GPT-2 small shapes, real GPT-2 tokenizer, seeded pseudo-random weights (seed {}); not a trained model", spec.seed),
    )?;
    w.set_u32("general.file_type", spec.dtype.llama_ftype())?;
    if spec.dtype == Dtype::Q8_0 {
        w.set_u32("general.quantization_version", 2)?;
    }
    w.set_u32("gpt2.context_length", hp.n_ctx as u32)?;
    w.set_u32("gpt2.embedding_length", hp.n_embd as u32)?;
    w.set_u32("gpt2.feed_forward_length", hp.n_ff as u32)?;
    w.set_u32("gpt2.block_count", hp.n_layer as u32)?;
    w.set_u32("gpt2.attention.head_count", hp.n_head as u32)?;
    w.set_f32("gpt2.attention.layer_norm_epsilon", hp.norm_eps)?;
    w.set_str("tokenizer.ggml.model", "gpt2")?;
    w.set_str("tokenizer.ggml.pre", "gpt-2")?;
    w.set_arr_str("tokenizer.ggml.tokens", &tokenizer.tokens)?;
    w.set_arr_i32("tokenizer.ggml.token_type", &tokenizer.token_types())?;
    w.set_arr_str("tokenizer.ggml.merges", &tokenizer.merges)?;
    w.set_u32("tokenizer.ggml.bos_token_id", EOT)?;
    w.set_u32("tokenizer.ggml.eos_token_id", EOT)?;
    w.set_u32("tokenizer.ggml.unknown_token_id", EOT)?;
    w.set_bool("tokenizer.ggml.add_bos_token", false)?;

    // Tensors are independent: generate and convert them on every core.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    // One slot per tensor: its dtype and bytes once a thread made it.
    type Made = Option<Result<(Dtype, Vec<u8>)>>;
    let mut made: Vec<Made> = Vec::new();
    made.resize_with(tensors.len(), || None);
    let slots = std::sync::Mutex::new(&mut made);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, ne)) = tensors.get(i) else {
                    break;
                };
                let n: i64 = ne.iter().product();
                let values = tensor_values(spec.seed, name, n as usize);
                // Like llama.cpp's converters: 1-D tensors (norms, biases) stay f32.
                let ty = if ne.len() == 1 {
                    Dtype::F32
                } else {
                    spec.dtype
                };
                let bytes = ty.convert(&values, ne[0]).map(|b| (ty, b));
                slots.lock().unwrap()[i] = Some(bytes);
            });
        }
    });
    for ((name, ne), bytes) in tensors.iter().zip(made) {
        let (ty, bytes) = bytes.expect("every tensor generated")?;
        w.add_tensor(name, ne, ty, bytes)?;
    }
    w.write(out)
}

/// What [`check_gpt2`] found: enough to describe the model in one line.
#[derive(Debug)]
pub struct Checked {
    pub hparams: Hparams,
    /// Tensor type name -> how many tensors have it.
    pub types: Vec<(String, usize)>,
    pub n_tensors: usize,
}

/// Checks that `path` is a GGUF llama.cpp loads as `gpt2`, with every tensor
/// its GPT-2 graph and the checkpoint manifests use, in the right shapes.
pub fn check_gpt2(path: &Path) -> Result<Checked> {
    let f = GgufFile::open(path)?;
    let p = path.display();
    let arch = f
        .get_str("general.architecture")
        .with_context(|| format!("{p} has no general.architecture: not a model GGUF"))?;
    ensure!(
        arch == "gpt2",
        "{p} is a `{arch}` model, not `gpt2`: llorch-checkpoint's manifests describe GPT-2's graph"
    );
    let need = |key: &str| {
        f.get_uint(key)
            .with_context(|| format!("{p}: gpt2 model without the integer key {key}"))
    };
    let n_vocab = match f.get("tokenizer.ggml.tokens") {
        Some(crate::ffi::gguf::Value::Array("str", n)) => n as i64,
        _ => bail!("{p}: no tokenizer.ggml.tokens string array (the vocabulary is missing)"),
    };
    let hparams = Hparams {
        n_vocab,
        n_ctx: need("gpt2.context_length")? as i64,
        n_embd: need("gpt2.embedding_length")? as i64,
        n_head: need("gpt2.attention.head_count")? as i64,
        n_layer: need("gpt2.block_count")? as i64,
        n_ff: need("gpt2.feed_forward_length")? as i64,
        norm_eps: f
            .get_float("gpt2.attention.layer_norm_epsilon")
            .with_context(|| format!("{p}: no gpt2.attention.layer_norm_epsilon"))?
            as f32,
    };
    ensure!(
        hparams.n_head > 0 && hparams.n_embd % hparams.n_head == 0,
        "{p}: n_embd {} is not a multiple of n_head {}",
        hparams.n_embd,
        hparams.n_head
    );
    let tensors = f.tensors();
    let by_name: HashMap<&str, &crate::ffi::gguf::TensorInfo> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut missing = Vec::new();
    for (name, ne) in hparams.tensors() {
        match by_name.get(name.as_str()) {
            None => missing.push(name),
            Some(t) if t.ne != ne => bail!(
                "{p}: tensor {name} has shape {:?}, expected {ne:?} for these hyper-parameters",
                t.ne
            ),
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        let shown: Vec<_> = missing.iter().take(8).cloned().collect();
        bail!(
            "{p}: gpt2 model without {} of the tensors llama.cpp's GPT-2 graph needs: {}{}",
            missing.len(),
            shown.join(", "),
            if missing.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    let mut types: Vec<(String, usize)> = Vec::new();
    for t in &tensors {
        match types.iter_mut().find(|(n, _)| n == t.type_name()) {
            Some((_, c)) => *c += 1,
            None => types.push((t.type_name().to_string(), 1)),
        }
    }
    Ok(Checked {
        hparams,
        types,
        n_tensors: tensors.len(),
    })
}

pub mod stats;
