//! What the capture hands to the writer: one checkpoint, copied to f32, with
//! everything its record needs. Shared by `capture`, `handoff` and `output`.

use crate::record::{Layout, Operand};

/// One captured checkpoint on its way to the writer.
pub struct Captured {
    pub id: String,
    pub layer: Option<u32>,
    /// The ggml node name.
    pub tensor: String,
    /// The file name without extension.
    pub file_stem: String,
    pub step: usize,
    pub ggml_ne: [i64; 4],
    /// Row-major file shape (kept ne reversed).
    pub shape: Vec<i64>,
    pub source_dtype: &'static str,
    pub op: &'static str,
    pub buffer: String,
    /// Bytes fetched from the backend (0 when read in host memory).
    pub fetched: usize,
    pub data: Vec<f32>,
    /// `--tensors`: where the node sits in the graph.
    pub place: Place,
}

/// A `--tensors` node's place in the graph: its index and operands (name,
/// and the graph index of those this pass captured); with `--operands`, all
/// a replay of its op needs, or which node's operand this copy is.
#[derive(Default)]
pub struct Place {
    pub graph_index: Option<usize>,
    pub operands: Vec<Operand>,
    pub op_params: Vec<i32>,
    pub layout: Option<Layout>,
    pub flags: Option<i32>,
    pub operand_of: Option<usize>,
}
