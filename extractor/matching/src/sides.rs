//! The two sides the matcher pairs, read from disk: llama.cpp's nodes (an
//! extractor run of `--tensors '*'`: every node, its graph index, op and
//! operands) and the reference's tensors (the reference's `everything` job:
//! every tensor its pass made, in order, by name).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_spec::record::{Operand, RunRecord};

use llorch_checkpoint_spec::format::read_values;

/// Where in the model a tensor is: before the layers (embeddings), in one
/// layer, or after them (final norm, logits). A pair never crosses segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    Before,
    Layer(u32),
    After,
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Segment::Before => write!(f, "before the layers"),
            Segment::Layer(l) => write!(f, "layer {l}"),
            Segment::After => write!(f, "after the layers"),
        }
    }
}

/// One node of llama.cpp's graph, as the run captured it.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its index in the pass's graph.
    pub index: usize,
    pub name: String,
    pub op: String,
    pub segment: Segment,
    /// ggml's ne, innermost first.
    pub ne: [i64; 4],
    /// The file's row-major shape.
    pub shape: Vec<usize>,
    pub operands: Vec<Operand>,
    pub data: Vec<f64>,
}

impl Node {
    /// The file axis along which the extractor kept only a KV cache's
    /// filled cells (its `shape` shorter there than its `ne`), if any.
    pub fn cells_cut(&self) -> Option<usize> {
        let n = self.shape.len();
        (0..n).find(|&axis| self.shape[axis] < self.ne[n - 1 - axis] as usize)
    }
}

/// One tensor of the reference's pass.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Its place in the pass: tensors are numbered as they are made.
    pub order: usize,
    /// What a manifest's `capture:` calls it (`model.layers.0.mlp`, `attn.0.query`).
    pub name: String,
    pub segment: Segment,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
    /// Other names of the same values (`present.0.key` of `attn.0.key`).
    pub aliases: Vec<String>,
    /// Taken after the pass (the cache, probabilities from `output_attentions`):
    /// made in its layer, but at no known place in its order, so it neither
    /// bounds nor is bounded by graph order there.
    pub late: bool,
}

/// The nodes of a `--tensors '*'` run's prompt pass, in graph order.
pub fn read_nodes(run: &Path) -> Result<(RunRecord, Vec<Node>)> {
    let record = RunRecord::read(run)?;
    ensure!(
        record.tensors.is_some(),
        "{}: matching needs every node of the pass, a run of the extractor's --tensors '*', not a manifest's",
        run.display()
    );
    let mut nodes = Vec::new();
    for c in record.checkpoints.iter().filter(|c| c.step == 0) {
        let index = c.graph_index.with_context(|| {
            format!(
                "{}: {} has no graph index (a run of an extractor older than run.json schema 3?)",
                run.display(),
                c.file
            )
        })?;
        let t = read_values(&run.join(&c.file))?;
        nodes.push(Node {
            index,
            name: c.tensor.clone(),
            op: c.op.clone(),
            segment: Segment::Before,
            ne: c.ggml_ne,
            shape: t.shape,
            operands: c.operands.clone(),
            data: t.data,
        });
    }
    nodes.sort_by_key(|n| n.index);
    assign_segments(&mut nodes);
    Ok((record, nodes))
}

/// The layer a name marks: `attn_norm-3`, `Qcur-3 (view)`, `cache_k_l3`, `blk.3.attn_q.weight`.
pub fn layer_mark(name: &str) -> Option<u32> {
    let base = name.split(" (").next().unwrap_or(name);
    if let Some(rest) = base.strip_prefix("blk.") {
        return rest.split('.').next()?.parse().ok();
    }
    let number = |s: &str| match !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        true => s.parse().ok(),
        false => None,
    };
    if let Some(n) = base.rsplit_once('-').and_then(|(_, n)| number(n)) {
        return Some(n);
    }
    number(base.rsplit_once("_l")?.1)
}

/// A name ggml or llama.cpp gave without meaning: `node_31`, `` or one made
/// from another's (`Qcur-0 (view)`).
pub fn is_derived_name(name: &str) -> bool {
    name.is_empty()
        || name.contains(" (")
        || name
            .strip_prefix("node_")
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
}

/// Each node's segment: the layer its name marks; else, for a node without
/// a mark of its own, the latest layer among its operands' (weights, caches,
/// nodes) while a later node still marks that layer or a later one (Gemma's
/// unsuffixed post-FFN `norm`); else before or after the layers, by position.
pub(crate) fn assign_segments(nodes: &mut [Node]) {
    let position: HashMap<usize, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.index, i))
        .collect();
    let marks: Vec<Option<u32>> = nodes.iter().map(|n| layer_mark(&n.name)).collect();
    // The latest mark from each node on.
    let mut latest_from = vec![None; nodes.len() + 1];
    for i in (0..nodes.len()).rev() {
        latest_from[i] = marks[i].max(latest_from[i + 1]);
    }
    let mut seen_layer = false;
    for i in 0..nodes.len() {
        let from_operands = nodes[i]
            .operands
            .iter()
            .filter_map(|o| match o.node.and_then(|n| position.get(&n)) {
                Some(&j) => match nodes[j].segment {
                    Segment::Layer(l) => Some(l),
                    _ => None,
                },
                None => layer_mark(&o.name),
            })
            .max();
        let segment = match (marks[i], from_operands) {
            (Some(l), _) => Segment::Layer(l),
            (None, Some(l)) if latest_from[i + 1] >= Some(l) => Segment::Layer(l),
            _ if !seen_layer => Segment::Before,
            _ => Segment::After,
        };
        seen_layer |= matches!(segment, Segment::Layer(_));
        nodes[i].segment = segment;
    }
}

#[derive(serde::Deserialize)]
struct Listed {
    name: String,
    layer: Option<u32>,
    order: usize,
    file: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    late: bool,
}

/// Where each tensor of one variant of the reference is, by every name it
/// has (its own and its aliases): what is read of a variant the matcher
/// did not read whole.
pub fn tensor_files(dir: &Path) -> Result<HashMap<String, std::path::PathBuf>> {
    let mut files = HashMap::new();
    for t in listed(dir)? {
        let file = dir.join(&t.file);
        for alias in t.aliases {
            files.insert(alias, file.clone());
        }
        files.insert(t.name, file);
    }
    Ok(files)
}

fn listed(dir: &Path) -> Result<Vec<Listed>> {
    let index = dir.join("tensors.json");
    serde_json::from_slice(
        &std::fs::read(&index).with_context(|| format!("no tensor list at {}", index.display()))?,
    )
    .with_context(|| format!("{} is not the reference's tensor list", index.display()))
}

/// The reference's tensors of one variant (`dir/tensors.json` and its files), in order.
pub fn read_tensors(dir: &Path) -> Result<Vec<Tensor>> {
    let listed = listed(dir)?;
    let first_layer = listed.iter().position(|t| t.layer.is_some());
    let mut tensors = Vec::with_capacity(listed.len());
    for (i, t) in listed.into_iter().enumerate() {
        let data = read_values(&dir.join(&t.file))?;
        let segment = match (t.layer, first_layer) {
            (Some(l), _) => Segment::Layer(l),
            (None, Some(first)) if i > first => Segment::After,
            _ => Segment::Before,
        };
        tensors.push(Tensor {
            order: t.order,
            name: t.name,
            segment,
            shape: data.shape,
            data: data.data,
            aliases: t.aliases,
            late: t.late,
        });
    }
    tensors.sort_by_key(|t| t.order);
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_read_from_names_and_derived_names_are_told_apart() {
        for (name, layer) in [
            ("attn_norm-3", Some(3)),
            ("Qcur-12 (view) (permuted)", Some(12)),
            ("cache_k_l7 (view)", Some(7)),
            ("blk.5.attn_q.weight", Some(5)),
            ("result_norm", None),
            ("node_31", None),
            ("inp_embd", None),
        ] {
            assert_eq!(layer_mark(name), layer, "{name}");
        }
        assert!(
            is_derived_name("node_31") && is_derived_name("Qcur-0 (view)") && is_derived_name("")
        );
        assert!(!is_derived_name("attn_norm-0") && !is_derived_name("node_x"));
    }

    fn node(index: usize, name: &str, operands: &[(&str, Option<usize>)]) -> Node {
        Node {
            index,
            name: name.into(),
            op: "ADD".into(),
            segment: Segment::Before,
            ne: [1, 1, 1, 1],
            shape: vec![1],
            operands: operands
                .iter()
                .map(|(n, i)| Operand {
                    name: n.to_string(),
                    node: *i,
                    ..Operand::default()
                })
                .collect(),
            data: vec![0.0],
        }
    }

    #[test]
    fn unmarked_nodes_take_their_operands_layer_until_the_layers_end() {
        let mut nodes = vec![
            node(1, "inp_embd", &[("token_embd.weight", None)]),
            node(2, "l_out-0", &[("inp_embd", Some(1))]),
            // Gemma's post-FFN norm without a suffix: still layer 1.
            node(3, "norm", &[("ffn_out-1", None)]),
            node(4, "node_9", &[("norm", Some(3))]),
            node(5, "l_out-1", &[("node_9", Some(4))]),
            node(6, "result_norm", &[("l_out-1", Some(5))]),
            node(7, "result_output", &[("result_norm", Some(6))]),
        ];
        assign_segments(&mut nodes);
        let segments: Vec<Segment> = nodes.iter().map(|n| n.segment).collect();
        use Segment::*;
        assert_eq!(
            segments,
            [Before, Layer(0), Layer(1), Layer(1), Layer(1), After, After]
        );
    }
}
