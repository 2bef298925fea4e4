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
