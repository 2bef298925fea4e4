//! What `cargo xtask compare` reads of a checkpoint: the reference tensor, the
//! layout ops that bring it to the checkpoint file's shape, and the tolerance.

use serde::{Deserialize, Serialize};

use super::shape::Dim;

/// `reference:` of a checkpoint: which tensor of the reference model, and the
/// layout ops that turn it into the checkpoint file's row-major shape.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// `h.{layer}.<module>`, `present.{layer}.key|value` or `attentions.{layer}`.
    pub capture: String,
    #[serde(default)]
    pub ops: Vec<Op>,
}

impl Reference {
    /// With `{layer}` of `capture` expanded by `expand`.
    pub fn for_layer(self, expand: &dyn Fn(&str) -> String) -> Reference {
        Reference {
            capture: expand(&self.capture),
            ops: self.ops,
        }
    }
}

/// The layout ops, applied in order to the captured tensor (row-major, batch first).
/// In YAML: `drop_batch`, `{slice: {axis: -1, start: 0, len: n_embd}}`,
/// `{reshape: [n_tokens, n_head, head_dim]}`, `{permute: [0, 2, 1, 3]}`,
/// `{scale: 0.0625}` (llama.cpp computes a multiple of the reference's tensor:
/// Q pre-scaled by 1/sqrt(head_dim)).
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(try_from = "serde_yaml::Value")]
pub enum Op {
    /// Remove the leading batch dimension (must be 1).
    DropBatch,
    Slice {
        axis: i64,
        start: Dim,
        len: Dim,
    },
    Reshape(Vec<Dim>),
    Permute(Vec<i64>),
    /// Multiply by a constant.
    Scale(f64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SliceArgs {
    axis: i64,
    start: Dim,
    len: Dim,
}

impl TryFrom<serde_yaml::Value> for Op {
    type Error = String;

    fn try_from(value: serde_yaml::Value) -> Result<Op, String> {
        const KNOWN: &str =
            "drop_batch, {slice: {axis, start, len}}, {reshape: [dims]}, {permute: [axes]}, {scale: x}";
        if value.as_str() == Some("drop_batch") {
            return Ok(Op::DropBatch);
        }
        let single = value
            .as_mapping()
            .filter(|m| m.len() == 1)
            .and_then(|m| m.iter().next());
        let Some((name, args)) = single.and_then(|(k, v)| Some((k.as_str()?, v.clone()))) else {
            return Err(format!("unknown op {value:?}; known: {KNOWN}"));
        };
        let err = |e: serde_yaml::Error| format!("op `{name}`: {e}");
        Ok(match name {
            "slice" => {
                let a: SliceArgs = serde_yaml::from_value(args).map_err(err)?;
                Op::Slice {
                    axis: a.axis,
                    start: a.start,
                    len: a.len,
                }
            }
            "reshape" => Op::Reshape(serde_yaml::from_value(args).map_err(err)?),
            "permute" => Op::Permute(serde_yaml::from_value(args).map_err(err)?),
            "scale" => match args.as_f64() {
                Some(x) if x.is_finite() && x != 0.0 => Op::Scale(x),
                _ => {
                    return Err(format!(
                        "op `scale` takes a finite, non-zero number, not {args:?}"
                    ))
                }
            },
            other => return Err(format!("unknown op `{other}`; known: {KNOWN}")),
        })
    }
}

/// When a checkpoint agrees with its reference.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Each element: |test - ref| <= atol + atol_of_max * max|ref| + rtol * |ref|
    /// (numpy.isclose, with an absolute part that may follow the tensor's scale).
    #[serde(default = "default_atol")]
    pub atol: f64,
    /// The part of the absolute bound that is a fraction of the reference's
    /// largest |value|: one tolerance for tensors of any scale (a residual
    /// stream with outliers in the thousands, probabilities below 1).
    #[serde(default)]
    pub atol_of_max: f64,
    #[serde(default = "default_rtol")]
    pub rtol: f64,
    /// And over the tensor: NMSE = mean((test-ref)^2) / var(ref) <= nmse.
    #[serde(default = "default_nmse")]
    pub nmse: f64,
}

impl Tolerance {
    /// Used where a checkpoint gives no `tolerance:` (or part of one): f32
    /// arithmetic on O(1) values.
    pub const DEFAULT: Tolerance = Tolerance {
        atol: 1e-4,
        atol_of_max: 0.0,
        rtol: 1e-3,
        nmse: 1e-6,
    };

    /// The absolute bound for a reference whose largest |value| is `max_ref`.
    pub fn atol_for(&self, max_ref: f64) -> f64 {
        self.atol + self.atol_of_max * max_ref
    }

    /// `atol, rtol, nmse` as tables print them (`0.1*max` for a scaled atol).
    pub fn text(&self) -> String {
        let atol = match (self.atol, self.atol_of_max) {
            (a, 0.0) => format!("{a:.0e}"),
            (0.0, m) => format!("{m}*max"),
            (a, m) => format!("{a:.0e}+{m}*max"),
        };
        format!("{atol}, {:.0e}, {:.0e}", self.rtol, self.nmse)
    }
}

fn default_atol() -> f64 {
    Tolerance::DEFAULT.atol
}
fn default_rtol() -> f64 {
    Tolerance::DEFAULT.rtol
}
fn default_nmse() -> f64 {
    Tolerance::DEFAULT.nmse
}

/// `reference:` needs a `capture` string and may have `ops` (a list);
/// `tolerance:` has numbers for atol, rtol and nmse. xtask checks the rest.
pub(super) fn check_compare_keys(
    reference: Option<&serde_yaml::Value>,
    tolerance: Option<&serde_yaml::Value>,
) -> Result<(), String> {
    if let Some(r) = reference {
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
    if let Some(t) = tolerance {
        let map = t
            .as_mapping()
            .ok_or("`tolerance` must be a mapping {atol, rtol, nmse}")?;
        for (k, v) in map {
            let known = matches!(k.as_str(), Some("atol" | "atol_of_max" | "rtol" | "nmse"));
            if !known || !v.as_f64().is_some_and(|x| x >= 0.0) {
                return Err(format!("`tolerance` takes atol, atol_of_max, rtol and nmse as non-negative numbers, not {k:?}: {v:?}"));
            }
        }
    }
    Ok(())
}
