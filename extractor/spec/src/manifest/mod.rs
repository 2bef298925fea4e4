//! The checkpoint manifest: which graph nodes to capture, their expected shapes
//! and their file names, and for `cargo xtask compare` the reference tensor and
//! tolerance of each. Parsed and validated before any inference, so a typo
//! costs milliseconds, not a model load. The extractor, the validator, diff and
//! xtask all read manifests through this module.
//!
//! ```yaml
//! architecture: gpt2                     # general.architecture of the models it fits
//! layers: [0]
//! checkpoints:
//!   - id: "01_ln1_output"
//!     what: LayerNorm (ln_1) output
//!     tensor: "attn_norm-{layer}"
//!     shape: [n_embd, n_tokens]          # ggml ne order, innermost first
//!   - id: "05_output"                    # a node llama.cpp leaves unnamed:
//!     op: ADD                            # found by its op and an operand's
//!     operand: "blk.{layer}.attn_output.bias"   # name (a GGUF weight, a cache)
//!     file: "checkpoint_01_ln1_output"   # extension added by --format
//!     reference: { capture: "h.{layer}.ln_1", ops: [drop_batch] }
//!     tolerance: { atol: 5.0e-3, rtol: 1.0e-3, nmse: 1.0e-5 }
//! ```

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

mod flash_attn;
mod reference;
mod shape;
#[cfg(test)]
mod tests;
mod with_flash_attn;

pub use flash_attn::UnderFlashAttn;
use flash_attn::{under_flash_attn, RawUnderFlashAttn};
pub use reference::{Op, Reference, Tolerance};
pub use shape::{fmt_ne, Dim, Resolved, Symbols, SYMBOLS};

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
    /// The node's name; may be left out when `operand` finds the node.
    #[serde(default)]
    tensor: Option<String>,
    /// Disambiguates a name ggml gives to several nodes (e.g. `norm-0`).
    #[serde(default)]
    op: Option<String>,
    /// The name of one of the node's operands (a weight such as
    /// `blk.{layer}.attn_output.weight`, a cache such as `cache_k_l{layer}`):
    /// finds nodes llama.cpp leaves unnamed, in any version of its graph.
    #[serde(default)]
    operand: Option<String>,
    /// How far up the node's operands `operand` may be: 1 (a direct
    /// operand, the default) to 8. For nodes neither they nor their operands
    /// are named in some llama.cpp versions (the softmax over K read from
    /// `cache_k_l{layer}` four steps up); needs `op`.
    #[serde(default)]
    operand_depth: Option<u8>,
    shape: Vec<Dim>,
    file: String,
    /// Layers for this checkpoint, overriding the manifest's.
    #[serde(default)]
    layers: Option<Vec<u32>>,
    /// For `cargo xtask compare`: the PyTorch tensor this checkpoint corresponds
    /// to and its layout ops (`{capture: ..., ops: [...]}`). Read as YAML first,
    /// so that a wrong key gets a message naming the checkpoint.
    #[serde(default)]
    reference: Option<serde_yaml::Value>,
    /// For `cargo xtask compare`: `{atol, rtol, nmse}`.
    #[serde(default)]
    tolerance: Option<serde_yaml::Value>,
    /// What flash attention changes: `{absent: why}` (the graph has no such
    /// node then) or `{shape: [...], reference: {...}}` (its layout then).
    #[serde(default)]
    flash_attn: Option<RawUnderFlashAttn>,
}

/// One checkpoint of one layer, names expanded.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub id: String,
    pub what: String,
    pub layer: Option<u32>,
    /// The ggml node name, e.g. `attn_norm-0`; empty when `operand` alone finds the node.
    pub tensor: String,
    pub op: Option<String>,
    /// An operand's name the node must have, e.g. `blk.0.attn_output.weight`.
    pub operand: Option<String>,
    /// Up to how many steps up the operands `operand` is (1: a direct operand).
    pub operand_depth: u8,
    /// Expected ne, innermost first.
    pub shape: Vec<Dim>,
    /// File name without extension.
    pub file_stem: String,
    /// The PyTorch tensor to compare with, `{layer}` expanded.
    pub reference: Option<Reference>,
    /// The comparison's tolerance ([`Tolerance::DEFAULT`] where none is given).
    pub tolerance: Tolerance,
    /// The position of its entry in the manifest (graph order within a layer).
    pub index: usize,
    /// What it is with flash attention on, where that differs.
    pub flash_attn: Option<UnderFlashAttn>,
}

#[derive(Debug)]
pub struct Manifest {
    pub architecture: String,
    pub description: Option<String>,
    pub checkpoints: Vec<Checkpoint>,
}

impl Checkpoint {
    /// How the manifest names the node, for messages: "tensor `attn_norm-0`",
    /// or "the ADD node with operand `blk.0.attn_output.bias`".
    pub fn node(&self) -> String {
        let op = self
            .op
            .as_deref()
            .map(|o| format!("{o} "))
            .unwrap_or_default();
        match (&self.operand, self.tensor.is_empty()) {
            (None, _) => format!("tensor `{}`", self.tensor),
            (Some(operand), true) => format!("the {op}node with operand `{operand}`"),
            (Some(operand), false) => {
                format!("tensor `{}` ({op}with operand `{operand}`)", self.tensor)
            }
        }
    }

    /// The expected ne for one pass (an error only for a quotient that does
    /// not divide exactly with this model's symbols).
    pub fn resolve(&self, symbols: &Symbols) -> Result<Resolved> {
        let mut ne = [1i64; 4];
        let mut kv_dims = [false; 4];
        for (i, dim) in self.shape.iter().enumerate() {
            ne[i] = dim
                .resolve(symbols)
                .with_context(|| format!("checkpoint {}: shape {}", self.id, self.shape_text()))?;
            kv_dims[i] = dim.is_kv_cells();
        }
        Ok(Resolved {
            ne,
            n_dims: self.shape.len(),
            kv_dims,
        })
    }

    /// `id@layer` (or `id`): unique within a manifest.
    pub fn key(&self) -> String {
        match self.layer {
            Some(l) => format!("{}@{l}", self.id),
            None => self.id.clone(),
        }
    }

    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// `--layers`: the layers that `{layer}` expands to, instead of the manifest's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layers {
    /// Every layer of the model.
    All,
    /// These; a negative number counts from the end (`-1` is the last layer).
    Only(Vec<i64>),
}

impl std::str::FromStr for Layers {
    type Err = String;

    /// `all`, or layer numbers separated by commas (`0,5,29`, `0,-1`).
    fn from_str(text: &str) -> Result<Layers, String> {
        if text == "all" {
            return Ok(Layers::All);
        }
        let layers = text
            .split(',')
            .map(|l| l.trim().parse::<i64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                format!("`{text}` is neither `all` nor layer numbers like 0,5,29 (or 0,-1: first and last)")
            })?;
        Ok(Layers::Only(layers))
    }
}

impl Layers {
    /// The layer numbers for a model of `n_layer` layers; each must exist.
    pub fn resolve(&self, n_layer: u32) -> Result<Vec<u32>> {
        let n = i64::from(n_layer);
        match self {
            Layers::All => Ok((0..n_layer).collect()),
            Layers::Only(layers) => layers
                .iter()
                .map(|&l| {
                    let index = if l < 0 { n + l } else { l };
                    if !(0..n).contains(&index) {
                        bail!(
                            "--layers names layer {l}, but the model has {n_layer} (0 to {}, or -1 to -{n_layer})",
                            n_layer.saturating_sub(1)
                        );
                    }
                    Ok(index as u32)
                })
                .collect(),
        }
    }
}

/// Limits far above any real manifest (the biggest here is 12 entries; every
/// layer of a 128-layer model is ~1,500 checkpoints), so a hostile or broken
/// one is refused at once, in bounded memory. Whole graphs are `--tensors`'s job.
pub const MAX_BYTES: u64 = 1 << 20;
pub const MAX_ENTRIES: usize = 1000;
pub const MAX_CHECKPOINTS: usize = 16_384;
/// ggml's GGML_MAX_NAME (64) less the NUL: no node has a longer name.
pub const MAX_TENSOR_NAME: usize = 63;
const MAX_FIELD: usize = 200;
const MAX_FLOW_DEPTH: usize = 64;

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        Manifest::load_with_layers(path, None)
    }

    /// The manifest with `{layer}` expanded to `layers` (for every templated
    /// checkpoint) where given, else to the manifest's own layers.
    pub fn load_with_layers(path: &Path, layers: Option<&[u32]>) -> Result<Manifest> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?
            .len();
        if size > MAX_BYTES {
            bail!(
                "manifest {} is {size} bytes; a manifest is a few kB (the limit is {MAX_BYTES}): is this the right file?",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        Manifest::parse_with_layers(&text, layers)
            .with_context(|| format!("invalid manifest {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse_with_layers(text, None)
    }

    pub fn parse_with_layers(text: &str, override_layers: Option<&[u32]>) -> Result<Manifest> {
        let (raw, architecture) = parse_raw(text)?;
        let mut files = HashSet::new();
        let mut checkpoints = Vec::new();
        for (index, cp) in raw.checkpoints.iter().enumerate() {
            let at = |msg: String| {
                anyhow::anyhow!(
                    "line {}: checkpoint `{}`: {msg}",
                    line_of(text, &cp.id),
                    shortened(&cp.id)
                )
            };
            let (reference, tolerance) = check_entry(cp).map_err(&at)?;
            let flash_attn = cp
                .flash_attn
                .as_ref()
                .map(under_flash_attn)
                .transpose()
                .map_err(&at)?;
            let layers = cp.layers_of(override_layers, &raw.layers);
            // Empty is fine where `--layers` asks for none of the entry's own.
            if layers.is_empty() && (override_layers.is_none() || cp.layers.is_none()) {
                return Err(at("`tensor` uses {layer} but no layers are listed".into()));
            }
            if checkpoints.len() + layers.len() > MAX_CHECKPOINTS {
                return Err(at(format!(
                    "the manifest expands to more than {MAX_CHECKPOINTS} checkpoints; capture fewer layers per run"
                )));
            }
            let suffix = layers.len() > 1 && !cp.file.contains("{layer}");
            for layer in layers {
                let expanded = cp
                    .expand(layer, suffix, index, (&reference, &flash_attn), tolerance)
                    .map_err(&at)?;
                if !files.insert(expanded.file_stem.clone()) {
                    return Err(at(format!(
                        "file `{}` is written by another checkpoint too (add {{layer}} to the file name?)",
                        expanded.file_stem
                    )));
                }
                checkpoints.push(expanded);
            }
        }
        check_nodes_unique(text, &checkpoints)?;
        Ok(Manifest {
            architecture,
            description: raw.description,
            checkpoints,
        })
    }

    /// The checkpoints in the order the graph computes them: layer by layer,
    /// manifest order within a layer (the first divergence is the first here).
    /// Entries outside the layers (no `{layer}`) come before the layers when
    /// the manifest lists them before its first layer entry, after otherwise.
    pub fn graph_order(&self) -> Vec<&Checkpoint> {
        let first_layered = self
            .checkpoints
            .iter()
            .filter(|c| c.layer.is_some())
            .map(|c| c.index)
            .min()
            .unwrap_or(usize::MAX);
        let mut order: Vec<&Checkpoint> = self.checkpoints.iter().collect();
        order.sort_by_key(|c| match c.layer {
            Some(l) => (1, l, c.index),
            None if c.index < first_layered => (0, 0, c.index),
            None => (2, 0, c.index),
        });
        order
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

/// The YAML parsed and checked as a whole: size, nesting, architecture,
/// number of entries, ids unique.
fn parse_raw(text: &str) -> Result<(RawManifest, String)> {
    if text.len() as u64 > MAX_BYTES {
        bail!(
            "{} bytes; a manifest is a few kB (the limit is {MAX_BYTES})",
            text.len()
        );
    }
    check_flow_depth(text)?;
    let raw: RawManifest = serde_yaml::from_str(text).map_err(|e| match e.location() {
        Some(loc) => anyhow::anyhow!("line {}, column {}: {e}", loc.line(), loc.column()),
        None => anyhow::anyhow!("{e}"),
    })?;
    let Some(architecture) = raw.architecture.clone().filter(|a| !a.trim().is_empty()) else {
        bail!("no `architecture:`: name the model architecture whose graph this manifest describes (GGUF general.architecture, e.g. `architecture: gpt2`)");
    };
    if raw.checkpoints.is_empty() {
        bail!("no checkpoints: the manifest must list at least one under `checkpoints:`");
    }
    if raw.checkpoints.len() > MAX_ENTRIES {
        bail!(
            "{} checkpoints listed; the limit is {MAX_ENTRIES} (use {{layer}} and `layers:` for repeated blocks, \
             or the extractor's --tensors GLOB for whole graphs)",
            raw.checkpoints.len()
        );
    }
    let mut ids = HashSet::new();
    if let Some(cp) = raw
        .checkpoints
        .iter()
        .find(|cp| !ids.insert(cp.id.as_str()))
    {
        bail!(
            "line {}: checkpoint `{}`: duplicate id",
            line_of(text, &cp.id),
            shortened(&cp.id)
        );
    }
    Ok((raw, architecture))
}

/// One entry's own fields checked; its reference and tolerance read.
fn check_entry(cp: &RawCheckpoint) -> Result<(Option<Reference>, Tolerance), String> {
    if cp.id.len() > MAX_FIELD || cp.file.len() > MAX_FIELD {
        return Err(format!("id and file may have at most {MAX_FIELD} bytes"));
    }
    if cp.tensor.as_deref().is_none_or(str::is_empty) && cp.operand.is_none() {
        return Err(
            "name the node: `tensor` (its name), or `op` and `operand` (an operand's name)".into(),
        );
    }
    if cp.shape.is_empty() || cp.shape.len() > 4 {
        return Err(format!(
            "shape must have 1 to 4 dimensions (ggml ne order), not {}",
            cp.shape.len()
        ));
    }
    for dim in &cp.shape {
        dim.check().map_err(|e| format!("{e} in shape"))?;
    }
    check_file_name(&cp.file)?;
    reference::check_compare_keys(cp.reference.as_ref(), cp.tolerance.as_ref())?;
    match (cp.operand_depth, &cp.operand, &cp.op) {
        (None | Some(1), _, _) => {}
        (Some(0) | Some(9..), _, _) => return Err("`operand_depth` is 1 to 8".into()),
        (Some(_), Some(_), Some(_)) => {}
        (Some(_), _, _) => return Err("`operand_depth` needs `operand` and `op`".into()),
    }
    let reference = cp
        .reference
        .clone()
        .map(serde_yaml::from_value)
        .transpose()
        .map_err(|e| format!("`reference`: {e}"))?;
    let tolerance = match &cp.tolerance {
        Some(t) => serde_yaml::from_value(t.clone()).map_err(|e| format!("`tolerance`: {e}"))?,
        None => Tolerance::DEFAULT,
    };
    Ok((reference, tolerance))
}

impl RawCheckpoint {
    /// The layers `{layer}` expands to: `--layers`, else the entry's, else
    /// the manifest's; `[None]` for a node outside the layers.
    fn layers_of(&self, overridden: Option<&[u32]>, manifest: &[u32]) -> Vec<Option<u32>> {
        if !self.templated() {
            return vec![None];
        }
        let layers: Vec<u32> = match (overridden, &self.layers) {
            // An entry's own layers are where its node exists: `--layers` picks among them.
            (Some(asked), Some(own)) => asked.iter().copied().filter(|l| own.contains(l)).collect(),
            (Some(asked), None) => asked.to_vec(),
            (None, own) => own.as_deref().unwrap_or(manifest).to_vec(),
        };
        layers.into_iter().map(Some).collect()
    }

    /// Whether `{layer}` is in its node's name or operand.
    fn templated(&self) -> bool {
        let has = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains("{layer}"));
        has(&self.tensor) || has(&self.operand)
    }

    /// The entry for one layer: `{layer}` filled in; with `suffix`, the file
    /// name (which has no `{layer}`) gets `_l<layer>`, so that one manifest
    /// serves one layer and many.
    fn expand(
        &self,
        layer: Option<u32>,
        suffix: bool,
        index: usize,
        (reference, flash_attn): (&Option<Reference>, &Option<UnderFlashAttn>),
        tolerance: Tolerance,
    ) -> Result<Checkpoint, String> {
        let expand = |s: &str| match layer {
            Some(l) => s.replace("{layer}", &l.to_string()),
            None => s.to_string(),
        };
        let tensor = expand(self.tensor.as_deref().unwrap_or_default());
        let operand = self.operand.as_deref().map(expand);
        for name in std::iter::once(&tensor).chain(operand.as_ref()) {
            if name.len() > MAX_TENSOR_NAME {
                return Err(format!(
                    "tensor name of {} bytes: ggml names have at most {MAX_TENSOR_NAME}, so no node can match it",
                    name.len()
                ));
            }
        }
        let mut file_stem = expand(&self.file);
        if file_stem.contains('{') || file_stem.contains('}') {
            return Err(format!(
                "unknown placeholder in file `{}`: only {{layer}} exists",
                self.file
            ));
        }
        if let (true, Some(l)) = (suffix, layer) {
            file_stem = format!("{file_stem}_l{l}");
        }
        Ok(Checkpoint {
            id: self.id.clone(),
            what: self.what.clone().unwrap_or_default(),
            layer,
            tensor,
            op: self.op.clone(),
            operand,
            operand_depth: self.operand_depth.unwrap_or(1),
            shape: self.shape.clone(),
            file_stem,
            reference: reference.clone().map(|r| r.for_layer(&expand)),
            tolerance,
            index,
            flash_attn: flash_attn.clone().map(|f| match f {
                UnderFlashAttn::Layout { shape, reference } => UnderFlashAttn::Layout {
                    shape,
                    reference: reference.map(|r| r.for_layer(&expand)),
                },
                absent => absent,
            }),
        })
    }
}

/// No node (name, op and operand) is captured twice.
fn check_nodes_unique(text: &str, checkpoints: &[Checkpoint]) -> Result<()> {
    let mut nodes = HashSet::new();
    for cp in checkpoints {
        if !nodes.insert((cp.tensor.as_str(), cp.op.as_deref(), cp.operand.as_deref())) {
            bail!(
                "line {}: {} is listed twice",
                line_of(text, cp.operand.as_deref().unwrap_or(&cp.tensor)),
                cp.node()
            );
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

/// Refuses `[`/`{` nested deeper than [`MAX_FLOW_DEPTH`] before YAML's
/// parser sees them: its time grows with the square of that depth (a 1 MB
/// manifest of brackets would take hours). Brackets in quotes or comments
/// are text; a manifest needs three levels.
fn check_flow_depth(text: &str) -> Result<()> {
    let (mut depth, mut line, mut quote) = (0usize, 1usize, None);
    let mut comment = false;
    for c in text.chars() {
        match (c, quote) {
            ('\n', _) => {
                line += 1;
                comment = false;
                quote = quote.filter(|_| depth > 0);
            }
            _ if comment => {}
            (q @ ('\'' | '"'), None) => quote = Some(q),
            (q, Some(open)) if q == open => quote = None,
            (_, Some(_)) => {}
            ('#', None) => comment = true,
            ('[' | '{', None) => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    bail!("line {line}: `[`/`{{` nested deeper than {MAX_FLOW_DEPTH} levels");
                }
            }
            (']' | '}', None) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// At most 60 characters of `text`, for messages about hostile input.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// The 1-based line where `needle` first appears, for error messages.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map_or(0, |i| i + 1)
}
