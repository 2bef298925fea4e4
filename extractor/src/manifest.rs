//! The checkpoint manifest: which graph nodes to capture, their expected shapes
//! and their file names. Parsed and validated before any inference, so a typo
//! costs milliseconds, not a model load.
//!
//! ```yaml
//! architecture: gpt2                     # general.architecture of the models it fits
//! layers: [0]
//! checkpoints:
//!   - id: "01_ln1_output"
//!     what: LayerNorm (ln_1) output
//!     tensor: "attn_norm-{layer}"
//!     shape: [n_embd, n_tokens]          # ggml ne order, innermost first
//!     file: "checkpoint_01_ln1_output"   # extension added by --format
//! ```

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Symbols a shape may use; resolved from the model and the pass at run time.
pub const SYMBOLS: &[&str] = &[
    "n_embd", "n_head", "head_dim", "n_ff", "n_vocab", "n_ctx", "n_tokens", "n_kv",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    /// The model architecture (GGUF `general.architecture`) whose graph the
    /// node names come from: a manifest fits one architecture.
    architecture: Option<String>,
    #[serde(default)]
    description: Option<String>,
    /// The layers that `{layer}` in tensor and file names expands to.
    #[serde(default)]
    layers: Vec<u32>,
    checkpoints: Vec<RawCheckpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    id: String,
    #[serde(default)]
    what: Option<String>,
    tensor: String,
    /// Disambiguates a name ggml gives to several nodes (e.g. `norm-0`).
    #[serde(default)]
    op: Option<String>,
    shape: Vec<DimSpec>,
    file: String,
    /// Layers for this checkpoint, overriding the manifest's.
    #[serde(default)]
    layers: Option<Vec<u32>>,
    /// For `cargo xtask compare`: the PyTorch tensor this checkpoint corresponds
    /// to and its layout ops (`{capture: ..., ops: [...]}`). Kept as YAML: the
    /// extractor only checks its form, xtask interprets it.
    #[serde(default)]
    reference: Option<serde_yaml::Value>,
    /// For `cargo xtask compare`: `{atol, rtol, nmse}`.
    #[serde(default)]
    tolerance: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum DimSpec {
    Fixed(i64),
    Symbol(String),
}

/// One checkpoint of one layer, names expanded.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub id: String,
    pub what: String,
    pub layer: Option<u32>,
    /// The ggml node name, e.g. `attn_norm-0`.
    pub tensor: String,
    pub op: Option<String>,
    /// Expected ne, innermost first.
    pub shape: Vec<DimSpec>,
    /// File name without extension.
    pub file_stem: String,
}

#[derive(Debug)]
pub struct Manifest {
    pub architecture: String,
    pub description: Option<String>,
    pub checkpoints: Vec<Checkpoint>,
}

/// The values of the shape symbols for one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Symbols {
    pub n_embd: i64,
    pub n_head: i64,
    pub head_dim: i64,
    pub n_ff: i64,
    pub n_vocab: i64,
    pub n_ctx: i64,
    pub n_tokens: i64,
    /// KV-cache cells holding tokens (history included).
    pub n_kv: i64,
}

impl Symbols {
    fn get(&self, name: &str) -> Option<i64> {
        Some(match name {
            "n_embd" => self.n_embd,
            "n_head" => self.n_head,
            "head_dim" => self.head_dim,
            "n_ff" => self.n_ff,
            "n_vocab" => self.n_vocab,
            "n_ctx" => self.n_ctx,
            "n_tokens" => self.n_tokens,
            "n_kv" => self.n_kv,
            _ => return None,
        })
    }
}

/// An expected shape resolved for one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub ne: [i64; 4],
    pub n_dims: usize,
    /// Dimensions written `n_kv`: the node holds the padded cache there, and
    /// only the first `n_kv` (filled) cells are kept.
    pub kv_dims: [bool; 4],
}

impl Checkpoint {
    pub fn resolve(&self, symbols: &Symbols) -> Resolved {
        let mut ne = [1i64; 4];
        let mut kv_dims = [false; 4];
        for (i, dim) in self.shape.iter().enumerate() {
            ne[i] = match dim {
                DimSpec::Fixed(n) => *n,
                DimSpec::Symbol(s) => {
                    kv_dims[i] = s == "n_kv";
                    symbols
                        .get(s)
                        .expect("symbols are validated when the manifest is loaded")
                }
            };
        }
        Resolved {
            ne,
            n_dims: self.shape.len(),
            kv_dims,
        }
    }

    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| match d {
                DimSpec::Fixed(n) => n.to_string(),
                DimSpec::Symbol(s) => s.clone(),
            })
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

impl Resolved {
    /// Checks a node's ne against this shape; returns the ne to keep (padded
    /// KV cells dropped), or a description of the mismatch.
    pub fn keep(&self, actual: [i64; 4]) -> Result<[i64; 4], String> {
        let mut keep = actual;
        for d in 0..4 {
            let ok = if self.kv_dims[d] {
                actual[d] >= self.ne[d]
            } else {
                actual[d] == self.ne[d]
            };
            if !ok {
                return Err(format!(
                    "expected ne {}, got {}",
                    fmt_ne(&self.ne[..self.n_dims.max(1)]),
                    fmt_ne(&trim(actual))
                ));
            }
            keep[d] = self.ne[d];
        }
        Ok(keep)
    }

    /// The file's shape: row-major, outermost first (ggml ne reversed).
    pub fn file_shape(&self) -> Vec<i64> {
        self.ne[..self.n_dims].iter().rev().copied().collect()
    }
}

fn trim(ne: [i64; 4]) -> Vec<i64> {
    let n = ne.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
    ne[..n].to_vec()
}

pub fn fmt_ne(ne: &[i64]) -> String {
    let dims: Vec<String> = ne.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        Manifest::parse(&text).with_context(|| format!("invalid manifest {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Manifest> {
        let raw: RawManifest = serde_yaml::from_str(text).map_err(|e| match e.location() {
            Some(loc) => anyhow::anyhow!("line {}, column {}: {e}", loc.line(), loc.column()),
            None => anyhow::anyhow!("{e}"),
        })?;
        let Some(architecture) = raw.architecture.filter(|a| !a.trim().is_empty()) else {
            bail!("no `architecture:`: name the model architecture whose graph this manifest describes (GGUF general.architecture, e.g. `architecture: gpt2`)");
        };
        if raw.checkpoints.is_empty() {
            bail!("no checkpoints: the manifest must list at least one under `checkpoints:`");
        }
        let mut ids = HashSet::new();
        let mut files = HashSet::new();
        let mut checkpoints = Vec::new();
        for cp in &raw.checkpoints {
            let at = |msg: String| {
                anyhow::anyhow!(
                    "line {}: checkpoint `{}`: {msg}",
                    line_of(text, &cp.id),
                    cp.id
                )
            };
            if !ids.insert(cp.id.as_str()) {
                return Err(at("duplicate id".into()));
            }
            if cp.shape.is_empty() || cp.shape.len() > 4 {
                return Err(at(format!(
                    "shape must have 1 to 4 dimensions (ggml ne order), not {}",
                    cp.shape.len()
                )));
            }
            for dim in &cp.shape {
                match dim {
                    DimSpec::Fixed(n) if *n < 1 => {
                        return Err(at(format!("dimension {n} must be positive")))
                    }
                    DimSpec::Symbol(s) if !SYMBOLS.contains(&s.as_str()) => {
                        return Err(at(format!(
                            "unknown symbol `{s}` in shape; known: {}",
                            SYMBOLS.join(", ")
                        )))
                    }
                    _ => {}
                }
            }
            check_file_name(&cp.file).map_err(&at)?;
            check_compare_keys(cp).map_err(&at)?;
            let templated = cp.tensor.contains("{layer}");
            let layers: Vec<Option<u32>> = match (&cp.layers, templated) {
                (_, false) => vec![None],
                (Some(layers), true) => layers.iter().copied().map(Some).collect(),
                (None, true) => raw.layers.iter().copied().map(Some).collect(),
            };
            if layers.is_empty() {
                return Err(at("`tensor` uses {layer} but no layers are listed".into()));
            }
            for layer in layers {
                let expand = |s: &str| match layer {
                    Some(l) => s.replace("{layer}", &l.to_string()),
                    None => s.to_string(),
                };
                let file_stem = expand(&cp.file);
                if file_stem.contains('{') || file_stem.contains('}') {
                    return Err(at(format!(
                        "unknown placeholder in file `{}`: only {{layer}} exists",
                        cp.file
                    )));
                }
                if !files.insert(file_stem.clone()) {
                    return Err(at(format!(
                        "file `{file_stem}` is written by another checkpoint too (add {{layer}} to the file name?)"
                    )));
                }
                checkpoints.push(Checkpoint {
                    id: cp.id.clone(),
                    what: cp.what.clone().unwrap_or_default(),
                    layer,
                    tensor: expand(&cp.tensor),
                    op: cp.op.clone(),
                    shape: cp.shape.clone(),
                    file_stem,
                });
            }
        }
        let mut nodes = HashSet::new();
        for cp in &checkpoints {
            if !nodes.insert((cp.tensor.as_str(), cp.op.as_deref())) {
                bail!(
                    "line {}: tensor `{}` is listed twice",
                    line_of(text, &cp.tensor),
                    cp.tensor
                );
            }
        }
        Ok(Manifest {
            architecture,
            description: raw.description,
            checkpoints,
        })
    }

    /// Attention scores only exist with flash attention off.
    pub fn needs_attention_scores(&self) -> bool {
        self.checkpoints
            .iter()
            .any(|c| c.tensor.starts_with("kq_soft_max"))
    }
}

/// The manifests in `dir` written for `architecture` (unreadable ones are skipped).
pub fn for_architecture(dir: &Path, architecture: &str) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter(|p| Manifest::load(p).is_ok_and(|m| m.architecture == architecture))
        .collect();
    found.sort();
    found
}

/// `reference:` needs a `capture` string and may have `ops` (a list);
/// `tolerance:` has numbers for atol, rtol and nmse. xtask checks the rest.
fn check_compare_keys(cp: &RawCheckpoint) -> Result<(), String> {
    if let Some(r) = &cp.reference {
        let map = r
            .as_mapping()
            .ok_or("`reference` must be a mapping {capture, ops}")?;
        if map.get("capture").and_then(|c| c.as_str()).is_none() {
            return Err(
                "`reference` needs `capture`, the PyTorch tensor (e.g. h.{layer}.ln_1)".into(),
            );
        }
        if let Some(key) = map
            .keys()
            .find(|k| !matches!(k.as_str(), Some("capture" | "ops")))
        {
            return Err(format!("unknown key {key:?} in `reference` (capture, ops)"));
        }
        if map.get("ops").is_some_and(|o| !o.is_sequence()) {
            return Err("`reference.ops` must be a list".into());
        }
    }
    if let Some(t) = &cp.tolerance {
        let map = t
            .as_mapping()
            .ok_or("`tolerance` must be a mapping {atol, rtol, nmse}")?;
        for (k, v) in map {
            let known = matches!(k.as_str(), Some("atol" | "rtol" | "nmse"));
            if !known || !v.as_f64().is_some_and(|x| x >= 0.0) {
                return Err(format!("`tolerance` takes atol, rtol and nmse as non-negative numbers, not {k:?}: {v:?}"));
            }
        }
    }
    Ok(())
}

/// A plain file name inside the output directory: no separators, no `..`, no hidden files.
fn check_file_name(name: &str) -> Result<(), String> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.{}".contains(c));
    if name.is_empty() || name.starts_with('.') || name.contains("..") || !plain {
        return Err(format!(
            "file `{name}` must be a plain name inside the output directory (letters, digits, `_-.`, {{layer}}; no `/`, `..` or leading `.`)"
        ));
    }
    Ok(())
}

/// The 1-based line where `needle` first appears, for error messages.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "architecture: gpt2\nlayers: [0, 1]\ncheckpoints:\n  - id: ln1\n    tensor: attn_norm-{layer}\n    shape: [n_embd, n_tokens]\n    file: ln1_l{layer}\n";

    /// `text` made a whole manifest (the architecture goes last, so line numbers stay).
    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse(&format!("{text}architecture: gpt2\n"))
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn expands_layers_and_resolves_shapes() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.architecture, "gpt2");
        let names: Vec<_> = m
            .checkpoints
            .iter()
            .map(|c| (c.tensor.as_str(), c.file_stem.as_str()))
            .collect();
        assert_eq!(
            names,
            [("attn_norm-0", "ln1_l0"), ("attn_norm-1", "ln1_l1")]
        );
        let s = Symbols {
            n_embd: 768,
            n_head: 12,
            head_dim: 64,
            n_ff: 3072,
            n_vocab: 50257,
            n_ctx: 512,
            n_tokens: 2,
            n_kv: 2,
        };
        let r = m.checkpoints[0].resolve(&s);
        assert_eq!(r.file_shape(), [2, 768]);
        assert_eq!(r.keep([768, 2, 1, 1]), Ok([768, 2, 1, 1]));
        assert_eq!(
            r.keep([768, 3, 1, 1]),
            Err("expected ne [768, 2], got [768, 3]".to_string())
        );
    }

    #[test]
    fn n_kv_dims_keep_only_the_filled_cells() {
        let m = parse("checkpoints:\n  - {id: k, tensor: cache_k-0, shape: [head_dim, n_head, n_kv, 1], file: k}\n").unwrap();
        let s = Symbols {
            n_embd: 768,
            n_head: 12,
            head_dim: 64,
            n_ff: 3072,
            n_vocab: 50257,
            n_ctx: 512,
            n_tokens: 2,
            n_kv: 2,
        };
        let r = m.checkpoints[0].resolve(&s);
        assert_eq!(
            r.keep([64, 12, 256, 1]),
            Ok([64, 12, 2, 1]),
            "padded cells are dropped"
        );
        assert!(
            r.keep([64, 12, 1, 1]).is_err(),
            "fewer cells than tokens is a mismatch"
        );
        assert_eq!(r.file_shape(), [1, 2, 12, 64]);
    }

    #[test]
    fn malformed_yaml_reports_its_line() {
        let msg = format!(
            "{:#}",
            Manifest::parse("checkpoints:\n  - id: a\n    shape: [n_embd\n    file: x\n")
                .unwrap_err()
        );
        assert!(msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let msg = err("checkpoints:\n  - {id: a, tensor: t, shape: [1], file: f, colour: red}\n");
        assert!(
            msg.contains("unknown field `colour`") && msg.contains("line 2"),
            "{msg}"
        );
    }

    #[test]
    fn compare_keys_are_accepted_and_checked() {
        let ok = "checkpoints:\n  - {id: a, tensor: t, shape: [1], file: f, reference: {capture: 'h.{layer}.ln_1', ops: [drop_batch]}, tolerance: {atol: 1.0e-5, rtol: 0, nmse: 1.0e-9}}\n";
        assert_eq!(parse(ok).unwrap().checkpoints.len(), 1);
        let msg = err(
            "checkpoints:\n  - {id: a, tensor: t, shape: [1], file: f, reference: {ops: []}}\n",
        );
        assert!(
            msg.contains("checkpoint `a`: `reference` needs `capture`"),
            "{msg}"
        );
        let msg = err(
            "checkpoints:\n  - {id: a, tensor: t, shape: [1], file: f, tolerance: {atol: -1}}\n",
        );
        assert!(
            msg.contains("`tolerance` takes atol, rtol and nmse"),
            "{msg}"
        );
        let msg = err("checkpoints:\n  - {id: a, tensor: t, shape: [1], file: f, reference: {capture: x, op: []}}\n");
        assert!(msg.contains("unknown key"), "{msg}");
    }

    #[test]
    fn unknown_symbols_are_refused_with_their_checkpoint() {
        let msg = err("checkpoints:\n  - id: q\n    tensor: Qcur-0\n    shape: [head_dim, n_heads]\n    file: q\n");
        assert!(
            msg.contains("line 2: checkpoint `q`: unknown symbol `n_heads`"),
            "{msg}"
        );
    }

    #[test]
    fn duplicate_files_are_refused() {
        let msg = err("layers: [0, 1]\ncheckpoints:\n  - {id: a, tensor: 'x-{layer}', shape: [1], file: same}\n");
        assert!(
            msg.contains("file `same` is written by another checkpoint"),
            "{msg}"
        );
    }

    #[test]
    fn file_names_cannot_escape_the_output_directory() {
        for bad in ["../evil", "sub/dir", "/abs", ".hidden", "a..b"] {
            let msg = err(&format!(
                "checkpoints:\n  - {{id: a, tensor: t, shape: [1], file: '{bad}'}}\n"
            ));
            assert!(
                msg.contains("plain name inside the output directory"),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn a_manifest_names_its_architecture() {
        let msg = format!(
            "{:#}",
            Manifest::parse("checkpoints:\n  - {id: a, tensor: t, shape: [1], file: f}\n")
                .unwrap_err()
        );
        assert!(
            msg.contains("no `architecture:`") && msg.contains("architecture: gpt2"),
            "{msg}"
        );
    }
}
