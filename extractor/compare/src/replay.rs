//! Each node's own error: llama.cpp's value of every replayed node against
//! the f64 op of llama.cpp's own operands (`xtask/python/replay.py`), held
//! to the allowance the kernel's documented roundings give each element.
//! A node beyond it computed something other than its op: the kernel is
//! named. The error a node inherits from its operands is not in this
//! number, which is the point: the comparison against transformers sees the
//! sum of both.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

pub use llorch_checkpoint_report::replay::{NodeError, OpSummary, Replay};
use llorch_checkpoint_spec::format::read_f64;
use llorch_checkpoint_spec::manifest::Tolerance;
use llorch_checkpoint_spec::metric::{self, unravel};
use llorch_checkpoint_spec::record::RunRecord;

/// `replay.json`, as `replay.py` writes it: one entry per node.
#[derive(Debug, Deserialize)]
struct Replayed {
    nodes: Vec<ReplayedNode>,
    seconds: f64,
}

#[derive(Debug, Deserialize)]
struct ReplayedNode {
    index: usize,
    name: String,
    op: String,
    /// llama.cpp's value: the run's file.
    file: String,
    /// `replayed`, `unknown` (the reference does not define the op),
    /// `unavailable` (an operand was not kept) or `not computed`.
    status: String,
    reason: Option<String>,
    explanation: Option<String>,
    /// The op in f64, and the allowance per element (files in the replay's directory).
    reference: Option<String>,
    allowance: Option<String>,
}

/// Judges every node of `replayed`'s replay.json against the run in `run`.
pub fn judge(run: &Path, replayed: &Path) -> Result<Replay> {
    let record = RunRecord::read(run)?;
    let path = replayed.join("replay.json");
    let bytes = std::fs::read(&path).with_context(|| format!("no replay at {}", path.display()))?;
    let replay: Replayed = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a replay", path.display()))?;
    let mut nodes = Vec::with_capacity(replay.nodes.len());
    for node in &replay.nodes {
        let layer = record.checkpoint(&node.file).and_then(|c| c.layer);
        nodes.push(judge_node(node, layer, run, replayed)?);
    }
    Ok(Replay {
        ops: summarise(&nodes),
        nodes,
        replay_seconds: replay.seconds,
    })
}

fn judge_node(
    node: &ReplayedNode,
    layer: Option<u32>,
    run: &Path,
    dir: &Path,
) -> Result<NodeError> {
    let mut out = NodeError {
        index: node.index,
        name: node.name.clone(),
        layer,
        op: node.op.clone(),
        status: node.status.clone(),
        explanation: node
            .explanation
            .clone()
            .or(node.reason.clone())
            .unwrap_or_default(),
        nmse: f64::NAN,
        max_abs: f64::NAN,
        max_abs_at: Vec::new(),
        worst_ratio: f64::NAN,
        n_outside: 0,
        flagged: false,
    };
    let (Some(reference), Some(allowance)) = (&node.reference, &node.allowance) else {
        return Ok(out);
    };
    let (shape, test) = read_f64(&run.join(&node.file))?;
    let (_, exact) = read_f64(&dir.join(reference))?;
    let (_, allow) = read_f64(&dir.join(allowance))?;
    anyhow::ensure!(
        test.len() == exact.len() && exact.len() == allow.len(),
        "node {} ({}): {} values in the run, {} replayed, {} allowances",
        node.index,
        node.name,
        test.len(),
        exact.len(),
        allow.len()
    );
    let m = metric::metrics(
        &test,
        &exact,
        &Tolerance {
            atol: 0.0,
            atol_of_max: 0.0,
            rtol: 0.0,
            nmse: 0.0,
        },
    );
    let allowed = metric::within(&test, &exact, &allow);
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    out.nmse = m.nmse;
    out.max_abs = m.max_abs;
    out.max_abs_at = unravel(m.max_abs_at, &shape);
    out.worst_ratio = allowed.worst_ratio;
    out.n_outside = allowed.n_outside;
    out.flagged = allowed.n_outside > 0;
    Ok(out)
}

fn summarise(nodes: &[NodeError]) -> Vec<OpSummary> {
    let mut by_op: BTreeMap<&str, Vec<&NodeError>> = BTreeMap::new();
    for n in nodes {
        by_op.entry(&n.op).or_default().push(n);
    }
    by_op
        .into_iter()
        .map(|(op, nodes)| {
            let replayed: Vec<&NodeError> = nodes
                .iter()
                .copied()
                .filter(|n| n.status == "replayed")
                .collect();
            let nmse: Vec<f64> = replayed.iter().map(|n| n.nmse).collect();
            let worst = replayed
                .iter()
                .max_by(|a, b| a.worst_ratio.total_cmp(&b.worst_ratio));
            let mut explanations: Vec<String> =
                replayed.iter().map(|n| n.explanation.clone()).collect();
            explanations.sort();
            explanations.dedup();
            OpSummary {
                op: op.to_string(),
                nodes: nodes.len(),
                replayed: replayed.len(),
                median_nmse: llorch_checkpoint_spec::record::median(&nmse),
                worst_nmse: nmse.iter().copied().fold(f64::NAN, f64::max),
                worst_ratio: worst.map_or(f64::NAN, |n| n.worst_ratio),
                worst_node: worst.map_or(String::new(), |n| format!("{} (#{})", n.name, n.index)),
                flagged: replayed.iter().filter(|n| n.flagged).count(),
                explanations,
            }
        })
        .collect()
}

/// The comparison's first divergence, as the comparison saw it.
pub struct Divergence<'a> {
    /// `06_attn_out layer 3`.
    pub checkpoint: String,
    /// The graph node and its op.
    pub node: &'a str,
    pub op: &'a str,
    /// Its graph index, where the run knew it (a run without a manifest).
    pub graph_index: Option<usize>,
    /// What the reference computes there, and the checkpoints just before
    /// it with their NMSE against f64 (the nearest reference tensors).
    pub reference: &'a str,
    pub before: Vec<(String, f64)>,
    /// The node's operands by name (an input such as the attention mask
    /// is where a graph often differs).
    pub operands: Vec<String>,
}

/// Whose the first divergence is: the kernel's (its node beyond what its
/// roundings allow, from llama.cpp's own operands) or the graph's (the
/// node within them: llama.cpp computes something other than the
/// reference there). `None` when the replay has no such node.
pub fn explain(replay: &Replay, d: &Divergence<'_>, params: &[i32]) -> Option<String> {
    let params = describe_params(d.op, params);
    let node = replay
        .nodes
        .iter()
        .filter(|n| n.name == d.node && n.op == d.op)
        .find(|n| d.graph_index.is_none_or(|i| i == n.index))?;
    let at = format!(
        "{} ({} #{}, {})",
        d.checkpoint, node.op, node.index, node.name
    );
    if node.status != "replayed" {
        return Some(format!("{at} could not be replayed: {}", node.explanation));
    }
    if node.flagged {
        return Some(format!(
            "the first divergence, {at}, is the kernel's: replayed from llama.cpp's own operands, {} computes beyond \
             what its roundings allow ({:.0}x its allowance on {} elements, NMSE {:.2e} against the op in f64; allowed: {})",
            node.op, node.worst_ratio, node.n_outside, node.nmse, node.explanation
        ));
    }
    let before: Vec<String> = d
        .before
        .iter()
        .map(|(id, nmse)| format!("{id} NMSE {nmse:.2e}"))
        .collect();
    Some(format!(
        "the first divergence, {at}, is not its kernel's: replayed from llama.cpp's own operands, {} does what the op \
         says ({:.1}% of its allowance; {}). The graph differs from the reference there: another op, an extra op or \
         another parameter than the reference's `{}` (or an op that amplifies what its inputs inherited: they were within \
         tolerance). The node: {} {} ({}) of {}. The nearest reference tensors before it: {}",
        node.op,
        100.0 * node.worst_ratio,
        node.explanation,
        d.reference,
        node.name,
        node.op,
        params,
        d.operands.join(", "),
        if before.is_empty() { "none".into() } else { before.join(", ") }
    ))
}

/// An op's parameters by name where the op is known (floats are stored as
/// their bits), else as ggml's integers.
pub fn describe_params(op: &str, params: &[i32]) -> String {
    let f = |i: usize| f32::from_bits(params.get(i).copied().unwrap_or(0) as u32);
    let n = |i: usize| params.get(i).copied().unwrap_or(0);
    match op {
        "RMS_NORM" | "NORM" => format!("eps {:e}", f(0)),
        "SCALE" => format!("scale {}, bias {}", f(0), f(1)),
        "SOFT_MAX" => format!("scale {}, max_bias {}", f(0), f(1)),
        "FLASH_ATTN_EXT" => format!("scale {}, max_bias {}, softcap {}", f(0), f(1), f(2)),
        "ROPE" => format!(
            "n_dims {}, mode {}, n_ctx_orig {}, freq_base {}, freq_scale {}, ext_factor {}, attn_factor {}, \
             beta_fast {}, beta_slow {}",
            n(1), n(2), n(4), f(5), f(6), f(7), f(8), f(9), f(10)
        ),
        _ => format!("op_params {params:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llorch_checkpoint_spec::format::{write_file, write_npy_f64};
    use llorch_checkpoint_spec::record::{example, CheckpointRecord};

    /// A run of two nodes and a replay of three (the third an op the
    /// reference does not define): the first within its allowance, the
    /// second 1e-6 off where 1e-7 is allowed.
    fn replayed(dir: &Path) -> Result<Replay> {
        let (run, out) = (dir.join("run"), dir.join("replayed"));
        std::fs::create_dir_all(&run)?;
        std::fs::create_dir_all(&out)?;
        let mut record = example();
        let template = record.checkpoints[0].clone();
        record.checkpoints = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, name)| CheckpointRecord {
                id: name.to_string(),
                file: format!("{name}.bin"),
                layer: Some(i as u32),
                graph_index: Some(i),
                ..template.clone()
            })
            .collect();
        std::fs::write(run.join("run.json"), record.to_json())?;
        for name in ["a", "b", "c"] {
            write_file(&run.join(format!("{name}.bin")), &[2], &[1.0, 2.0])?;
        }
        write_npy_f64(&out.join("a.npy"), &[2], &[1.0, 2.0 + 1e-7])?;
        write_npy_f64(&out.join("b.npy"), &[2], &[1.0, 2.0 + 1e-6])?;
        for name in ["a", "b"] {
            write_npy_f64(
                &out.join(format!("{name}.allow.npy")),
                &[2],
                &[0.0, 1e-6 / 10.0 * 2.0],
            )?;
        }
        let node = |i: usize, op: &str, status: &str| {
            serde_json::json!({"index": i, "name": format!("n{i}"), "op": op, "file": format!("{}.bin", ["a", "b", "c"][i]),
                "status": status, "explanation": "f32", "reason": "the reference does not define CONV_2D",
                "reference": format!("{}.npy", ["a", "b", "c"][i]), "allowance": format!("{}.allow.npy", ["a", "b", "c"][i])})
        };
        let mut unknown = node(2, "CONV_2D", "unknown");
        unknown.as_object_mut().unwrap().remove("reference");
        unknown.as_object_mut().unwrap().remove("allowance");
        unknown.as_object_mut().unwrap().remove("explanation");
        let json = serde_json::json!({"nodes": [node(0, "ADD", "replayed"), node(1, "MUL_MAT", "replayed"), unknown], "seconds": 1.5});
        std::fs::write(out.join("replay.json"), serde_json::to_vec(&json)?)?;
        judge(&run, &out)
    }

    #[test]
    fn a_node_beyond_its_allowance_is_flagged_and_an_unknown_op_named() {
        let dir = tempfile::tempdir().unwrap();
        let judged = replayed(dir.path()).unwrap();
        let [a, b, c] = &judged.nodes[..] else {
            panic!("three nodes")
        };
        assert!(
            !a.flagged && a.worst_ratio > 0.4 && a.worst_ratio < 0.6,
            "{a:?}"
        );
        assert!(
            b.flagged && b.n_outside == 1 && b.max_abs_at == vec![1],
            "{b:?}"
        );
        assert_eq!(
            (c.status.as_str(), c.explanation.as_str()),
            ("unknown", "the reference does not define CONV_2D")
        );
        assert_eq!(judged.flagged().count(), 1);
        assert_eq!(judged.not_replayed().len(), 1);
        let table = judged.table();
        assert!(table.contains("FLAGGED MUL_MAT #1 (n1, 1)"), "{table}");
        assert!(
            table.contains("unknown: 1 node(s) (n2 #2): the reference does not define CONV_2D"),
            "{table}"
        );
    }

    #[test]
    fn a_divergence_is_the_kernels_only_where_its_node_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let judged = replayed(dir.path()).unwrap();
        let at = |node: &'static str, op: &'static str| Divergence {
            checkpoint: "02_q layer 0".into(),
            node,
            op,
            graph_index: None,
            reference: "model.layers.0.self_attn.q_proj",
            before: vec![("01_attn_norm@0".into(), 1e-15)],
            operands: vec!["x".into(), "attn_inp_kq_mask".into()],
        };
        let kernel = explain(&judged, &at("n1", "MUL_MAT"), &[]).unwrap();
        assert!(
            kernel.contains("is the kernel's") && kernel.contains("MUL_MAT computes beyond"),
            "{kernel}"
        );
        let graph = explain(&judged, &at("n0", "ADD"), &[]).unwrap();
        assert!(
            graph.contains("is not its kernel's")
                && graph.contains("model.layers.0.self_attn.q_proj"),
            "{graph}"
        );
        assert!(explain(&judged, &at("n0", "MUL"), &[]).is_none());
        let eps = 1e-5f32.to_bits() as i32;
        assert_eq!(describe_params("RMS_NORM", &[eps]), "eps 1e-5");
    }
}
