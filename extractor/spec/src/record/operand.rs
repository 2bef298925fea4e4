//! A captured node's operands and layout, as `run.json` records them.

use serde::{Deserialize, Serialize};

/// One operand of a captured node. With `--operands`, also its type,
/// extent and layout, and where its values are: a captured node
/// (`node`), a weight of the GGUF (`weight`), a copy (`file`), or
/// `unavailable` with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operand {
    /// The tensor's name (a weight `blk.0.attn_q.weight`, a cache `cache_k_l0`, a node).
    pub name: String,
    /// The graph index of the captured node it is, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ggml_ne: Option<[i64; 4]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// The operand is the GGUF tensor `name`: read from the model, not copied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub weight: bool,
    /// The `id` of the checkpoint record holding its copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// Where a tensor's bytes lie: its byte strides (innermost first) and, for
/// a view, the tensor whose bytes it reads and from which byte.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub nb: [u64; 4],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_of: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
