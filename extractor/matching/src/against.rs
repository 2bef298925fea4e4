//! The matcher's pairs against a manifest written by hand: for each of its
//! checkpoints, the node it names in the matched graph, and whether the
//! matcher paired that node with the same reference tensor in the same
//! layout (the same values, element for element, after both sides' ops),
//! with the same values under another name, with something else, or not at all.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use llorch_checkpoint_spec::manifest::{Checkpoint, Manifest, Op, Symbols};

use super::layout::{apply, Step};
use super::{fit, Matching, Node, Tensor, Unpaired};

/// How one hand-written checkpoint fared.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Paired with the manifest's tensor, and both layouts give the same values.
    Same,
    /// Paired with a tensor of the same values under another name.
    Alias { name: String },
    /// Paired with something else: its name, and the NMSE between the two.
    Different { name: String, nmse: f64 },
    /// The node is not paired.
    Unpaired(String),
    /// The manifest's node is not in the graph, or its tensor not in the reference.
    NotFound(String),
}

/// One hand-written checkpoint and its verdict.
pub struct Row {
    pub key: String,
    /// The node it names, as `index name (op)`.
    pub node: Option<String>,
    pub verdict: Verdict,
}

/// Each checkpoint of `manifest` (expanded to the layers wanted) against the pairs.
pub fn against(
    manifest: &Manifest,
    nodes: &[Node],
    tensors: &[Tensor],
    m: &Matching,
    symbols: &Symbols,
) -> Vec<Row> {
    manifest
        .graph_order()
        .into_iter()
        .map(|cp| {
            let found = find_node(cp, nodes);
            let node =
                found.map(|i| format!("{} `{}` ({})", nodes[i].index, nodes[i].name, nodes[i].op));
            let verdict = match found {
                None => Verdict::NotFound(format!("no node of the graph is {}", cp.node())),
                Some(i) => judge(cp, i, tensors, m, symbols),
            };
            Row {
                key: cp.key(),
                node,
                verdict,
            }
        })
        .collect()
}

fn judge(
    cp: &Checkpoint,
    node: usize,
    tensors: &[Tensor],
    m: &Matching,
    symbols: &Symbols,
) -> Verdict {
    let Some(pair) = m.pair_of(node) else {
        let why = m
            .unpaired
            .iter()
            .find(|(k, _)| *k == node)
            .map_or("not compared".to_string(), |(_, w)| {
                unpaired_text(w, tensors)
            });
        return Verdict::Unpaired(why);
    };
    let Some(reference) = &cp.reference else {
        return Verdict::NotFound("the manifest names no reference".into());
    };
    let Some(theirs) = tensors
        .iter()
        .position(|t| t.name == reference.capture || t.aliases.contains(&reference.capture))
    else {
        return Verdict::NotFound(format!(
            "the reference made no tensor `{}`",
            reference.capture
        ));
    };
    let ours = &tensors[pair.tensor];
    let (_, mine) = apply(&pair.steps(), &ours.shape, &ours.data);
    let mine: Vec<f64> = mine.iter().map(|v| v * pair.scale.factor()).collect();
    let hand = match hand_values(&reference.ops, &tensors[theirs], symbols) {
        Ok(v) => v,
        Err(e) => return Verdict::NotFound(format!("its ops do not apply: {e:#}")),
    };
    let spread = fit::spread(&hand);
    let nmse = match mine.len() == hand.len() && spread > 0.0 {
        true => fit::nmse_at(&hand, &mine, 1.0, spread),
        false => f64::INFINITY,
    };
    // The same tensor: the manifest's name is ours, or one the reference gave the same values.
    let same_tensor = ours.name == reference.capture || ours.aliases.contains(&reference.capture);
    match (nmse < 1e-20, same_tensor) {
        (true, true) => Verdict::Same,
        (true, false) => Verdict::Alias {
            name: ours.name.clone(),
        },
        (false, _) => Verdict::Different {
            name: ours.name.clone(),
            nmse,
        },
    }
}

fn unpaired_text(w: &Unpaired, tensors: &[Tensor]) -> String {
    match w {
        Unpaired::TooFar { tensor, nmse } => format!(
            "too far: closest {} at NMSE {nmse:.1e}",
            tensors[*tensor].name
        ),
        Unpaired::Ambiguous { best, second } => format!(
            "ambiguous: {} at {:.1e}, {} at {:.1e}",
            tensors[best.0].name, best.1, tensors[second.0].name, second.1
        ),
        other => format!("{other:?}"),
    }
}

/// The manifest's tensor after its ops, as f64 values.
fn hand_values(ops: &[Op], t: &Tensor, symbols: &Symbols) -> Result<Vec<f64>> {
    let mut shape = t.shape.clone();
    let mut data = t.data.clone();
    for op in ops {
        let step = match op {
            Op::DropBatch => Step::DropBatch,
            Op::Slice { axis, start, len } => {
                let axis = if *axis < 0 {
                    shape.len() as i64 + axis
                } else {
                    *axis
                };
                let axis = usize::try_from(axis)
                    .ok()
                    .filter(|&a| a < shape.len())
                    .context("slice axis outside the shape")?;
                Step::Slice {
                    axis,
                    start: start.resolve(symbols)? as usize,
                    len: len.resolve(symbols)? as usize,
                }
            }
            Op::Reshape(dims) => Step::Reshape(
                dims.iter()
                    .map(|d| Ok(d.resolve(symbols)? as usize))
                    .collect::<Result<Vec<_>>>()?,
            ),
            Op::Permute(axes) => Step::Permute(axes.iter().map(|&a| a as usize).collect()),
            Op::Scale(by) => {
                data.iter_mut().for_each(|v| *v *= by);
                continue;
            }
        };
        check(&step, &shape)?;
        let (s, d) = apply(std::slice::from_ref(&step), &shape, &data);
        shape = s;
        data = d;
    }
    Ok(data)
}

/// Refuses a step that does not fit the shape it is applied to.
fn check(step: &Step, shape: &[usize]) -> Result<()> {
    let fits = match step {
        Step::DropBatch => shape.first() == Some(&1),
        Step::Slice { axis, start, len } => shape.get(*axis).is_some_and(|&d| start + len <= d),
        Step::Reshape(to) => to.iter().product::<usize>() == shape.iter().product::<usize>(),
        Step::Permute(axes) => {
            let mut sorted = axes.clone();
            sorted.sort_unstable();
            sorted == (0..shape.len()).collect::<Vec<_>>()
        }
    };
    if !fits {
        bail!("{step:?} does not apply to shape {shape:?}");
    }
    Ok(())
}

/// The node a manifest's checkpoint names, found as the extractor finds it:
/// by name (with op and operand where given), else by op and an operand's
/// name, up to `operand_depth` steps up.
pub fn find_node(cp: &Checkpoint, nodes: &[Node]) -> Option<usize> {
    let position = |index: usize| nodes.iter().position(|n| n.index == index);
    let reaches = |i: usize, name: &str, depth: u8| -> bool {
        let mut frontier = vec![i];
        for _ in 0..depth {
            let mut next = Vec::new();
            for &k in &frontier {
                for o in &nodes[k].operands {
                    if o.name == name {
                        return true;
                    }
                    next.extend(o.node.and_then(position));
                }
            }
            frontier = next;
        }
        false
    };
    nodes.iter().enumerate().position(|(i, n)| {
        (cp.tensor.is_empty() || n.name == cp.tensor)
            && cp.op.as_ref().is_none_or(|op| *op == n.op)
            && cp
                .operand
                .as_ref()
                .is_none_or(|o| reaches(i, o, cp.operand_depth))
    })
}

/// The rows as text: a line each, then the counts.
pub fn text(rows: &[Row], manifest: &str) -> String {
    let mut s = format!("\nthe pairs against {manifest}, checkpoint by checkpoint:\n");
    let mut counts = [0usize; 5];
    for r in rows {
        let (k, what) = match &r.verdict {
            Verdict::Same => (0, "same tensor, same layout".to_string()),
            Verdict::Alias { name } => (1, format!("same values, named {name}")),
            Verdict::Different { name, nmse } => (
                2,
                format!("DIFFERENT: paired with {name} (NMSE {nmse:.1e} between them)"),
            ),
            Verdict::Unpaired(why) => (3, format!("MISSING: the node is unpaired ({why})")),
            Verdict::NotFound(why) => (4, format!("MISSING: {why}")),
        };
        counts[k] += 1;
        let _ = writeln!(
            s,
            "  {:<22} {:<40} {what}",
            r.key,
            r.node.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(
        s,
        "{} checkpoints: {} same, {} same values under another name, {} different, {} missing",
        rows.len(),
        counts[0],
        counts[1],
        counts[2],
        counts[3] + counts[4]
    );
    s
}
