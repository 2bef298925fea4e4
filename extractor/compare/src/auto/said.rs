//! What an automatic comparison says: its figures in one line, the
//! matching's summary, the first diverging node and its unpaired ancestors,
//! and `matching.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::compare::Outcome;
use llorch_checkpoint_matching::draft::{self, Skipped};
use llorch_checkpoint_matching::{Matching, Unpaired};

use super::matched::Matched;

/// The comparison in one line: both sides' sizes, the pairs, the verdict,
/// the logits' NMSE and the first diverging checkpoint.
pub fn figures(p: &Matched, outcome: &Outcome) -> String {
    let n_vocab = p.record.symbols.n_vocab as usize;
    let logits = outcome
        .rows
        .iter()
        .find(|r| r.layer.is_none() && r.shape.last() == Some(&n_vocab))
        .map(|r| {
            let m = r.verdict();
            format!(
                "logits NMSE {:.2e} ({:.1} dB) against {}",
                m.nmse, m.nmse_db, r.truth
            )
        })
        .unwrap_or_else(|| "no logits node paired".into());
    let first = outcome
        .rows
        .iter()
        .find(|r| !r.pass)
        .map_or("none".to_string(), |r| {
            format!(
                "{}{}",
                r.id,
                r.layer.map(|l| format!(" layer {l}")).unwrap_or_default()
            )
        });
    format!(
        "{} llama.cpp nodes, {} reference tensors; {} pairs; {} nodes and {} tensors without a counterpart; {}; {logits}; first divergence: {first}",
        p.nodes.len(),
        p.tensors.len(),
        p.matching.pairs.len(),
        p.matching.unpaired.len(),
        p.matching.unpaired_tensors.len(),
        outcome.summary,
    )
}

/// Counts per reason.
fn reasons(m: &Matching) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for (_, why) in &m.unpaired {
        *counts.entry(reason_name(why)).or_insert(0) += 1;
    }
    counts
}

fn reason_name(why: &Unpaired) -> &'static str {
    match why {
        Unpaired::NonFinite => "non-finite (masks)",
        Unpaired::Constant => "constant",
        Unpaired::NoCandidate => "no tensor of its size",
        Unpaired::TooFar { .. } => "too far from any",
        Unpaired::Ambiguous { .. } => "ambiguous",
        Unpaired::OutOfOrder { .. } => "out of graph order",
        Unpaired::Intermediate { .. } => "a step before its tensor",
    }
}

/// What the matcher found, in a few lines.
pub(super) fn summary(p: &Matched) -> String {
    let m = &p.matching;
    let views = p
        .skipped
        .iter()
        .filter(|(_, s)| matches!(s, Skipped::ViewOfPaired { .. }))
        .count();
    let unselectable = p.skipped.len() - views;
    let near = m.pairs.iter().filter(|p| p.near).count();
    let mut s = format!(
        "\nmatching ({}-token prompt, reference {} in {}): {} llama.cpp nodes, {} reference tensors; {} pairs{}, \
         drafted as {} checkpoints in {} entries ({} ggml views of paired nodes left out{})\n",
        p.record.tokens.len(),
        p.info.model,
        p.variant,
        p.nodes.len(),
        p.tensors.len(),
        m.pairs.len(),
        match near {
            0 => String::new(),
            n => format!(" ({n} of them near misses, beyond the match limit of {:.0e}: nodes that diverge)", p.precision.accept()),
        },
        p.drafted.len(),
        p.roles.len(),
        views,
        match unselectable {
            0 => String::new(),
            n => format!(", {n} that no name or operand finds alone"),
        }
    );
    let counts: Vec<String> = reasons(m).iter().map(|(r, n)| format!("{n} {r}")).collect();
    let _ = writeln!(
        s,
        "  llama.cpp nodes without a counterpart: {} ({})",
        m.unpaired.len(),
        counts.join(", ")
    );
    let lonely: Vec<String> = m
        .unpaired_tensors
        .iter()
        .map(|(t, _)| p.tensors[*t].name.clone())
        .collect();
    let _ = writeln!(
        s,
        "  reference tensors without a counterpart: {}{}",
        lonely.len(),
        match lonely.is_empty() {
            true => String::new(),
            false => format!(" ({})", shortened_list(&lonely, 8)),
        }
    );
    s.push_str(&scaled_lines(p));
    s
}

/// One line per kind of scaled pair, over the layers (ggml's views of them left out).
fn scaled_lines(p: &Matched) -> String {
    let (m, mut s) = (&p.matching, String::new());
    let mut scaled: BTreeMap<(String, String, String), (String, usize)> = BTreeMap::new();
    for d in &p.drafted {
        let Some(pair) = m.pair_of(d.node) else {
            continue;
        };
        if let llorch_checkpoint_matching::fit::Scale::Reasoned(r) = &pair.scale {
            let plain = |s: &str| {
                d.layer
                    .and_then(|l| draft::templated(s, l))
                    .unwrap_or_else(|| s.to_string())
            };
            let n = &p.nodes[d.node];
            let key = (
                n.op.clone(),
                plain(&p.tensors[pair.tensor].name),
                r.why.clone(),
            );
            scaled.entry(key).or_insert((n.name.clone(), 0)).1 += 1;
        }
    }
    for ((op, tensor, why), (first, count)) in scaled {
        let _ = writeln!(
            s,
            "  scaled: {op} {first} is {tensor} times {why}{}",
            match count {
                1 => String::new(),
                n => format!(" ({n} layers)"),
            }
        );
    }
    s
}

fn shortened_list(names: &[String], n: usize) -> String {
    let mut out = names.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > n {
        out += &format!(", and {} more", names.len() - n);
    }
    out
}

/// The first failing checkpoint as a node of the graph: which node,
/// which tensor, and the nodes just before it that have no counterpart.
pub fn node_divergence(p: &Matched, outcome: &Outcome) -> Option<String> {
    let row = outcome.rows.iter().find(|r| !r.pass)?;
    let role = p.roles.iter().find(|r| r.id == row.id)?;
    let member = role
        .members
        .iter()
        .copied()
        .find(|&i| p.drafted[i].layer == row.layer)
        .unwrap_or(role.members[0]);
    let at = p.drafted[member].node;
    let node = &p.nodes[at];
    let before: Vec<String> = unpaired_ancestors(p, at)
        .into_iter()
        .take(16)
        .map(|j| {
            let why = &p
                .matching
                .unpaired
                .iter()
                .find(|(k, _)| *k == j)
                .expect("unpaired")
                .1;
            format!(
                "{} `{}` ({})",
                p.nodes[j].op,
                p.nodes[j].name,
                reason_name(why)
            )
        })
        .collect();
    let mut line = format!(
        "FIRST DIVERGING NODE: llama.cpp node {} `{}` ({}), whose counterpart is the reference's `{}` (checkpoint {}{}{})",
        node.index,
        node.name,
        node.op,
        p.drafted[member].capture,
        row.id,
        row.layer.map(|l| format!(" layer {l}")).unwrap_or_default(),
        match p.drafted[member].near {
            true => ", paired as a near miss",
            false => "",
        }
    );
    match before.is_empty() {
        true => line += "; the nodes it is computed from have counterparts",
        false => line += &format!(
            "; computed from these nodes without a counterpart (graph order; an op on one side only is often the answer): {}",
            before.join(", ")
        ),
    }
    Some(line)
}

/// The nodes node `at` is computed from, up to the nearest paired ones on
/// each path, that have no counterpart themselves, in graph order.
fn unpaired_ancestors(p: &Matched, at: usize) -> Vec<usize> {
    let position: BTreeMap<usize, usize> = p
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.index, i))
        .collect();
    let mut found = std::collections::BTreeSet::new();
    let mut frontier = vec![at];
    while let Some(i) = frontier.pop() {
        for o in &p.nodes[i].operands {
            let Some(&j) = o.node.and_then(|n| position.get(&n)) else {
                continue;
            };
            if p.matching.pair_of(j).is_none() && found.insert(j) {
                frontier.push(j);
            }
        }
    }
    found
        .into_iter()
        .filter(|j| p.matching.unpaired.iter().any(|(k, _)| k == j))
        .collect()
}

fn closest(p: &Matched, why: &Unpaired) -> String {
    match why {
        Unpaired::TooFar { tensor, nmse } => {
            format!("closest {} at NMSE {nmse:.1e}", p.tensors[*tensor].name)
        }
        Unpaired::Ambiguous { best, second } => format!(
            "{} at {:.1e} and {} at {:.1e}",
            p.tensors[best.0].name, best.1, p.tensors[second.0].name, second.1
        ),
        Unpaired::OutOfOrder { tensor } => format!("{} out of order", p.tensors[*tensor].name),
        Unpaired::Intermediate { tensor, closer } => format!(
            "{} is node {} `{}`, twice as close",
            p.tensors[*tensor].name, p.nodes[*closer].index, p.nodes[*closer].name
        ),
        _ => "no candidate".into(),
    }
}

/// Every node, its counterpart or the reason it has none; every unpaired tensor.
pub(super) fn matching_json(p: &Matched) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = p
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut v = serde_json::json!({"index": n.index, "name": n.name, "op": n.op, "segment": n.segment.to_string()});
            if let Some(pair) = p.matching.pair_of(i) {
                v["tensor"] = p.tensors[pair.tensor].name.clone().into();
                v["nmse"] = pair.fit.nmse.into();
                v["margin_db"] = pair.margin_db().min(999.0).into();
                v["scale"] = format!("{:?}", pair.scale).into();
                v["steps"] = format!("{:?}", pair.steps()).into();
                v["crop"] = serde_json::json!(pair.crop);
                v["near_miss"] = pair.near.into();
            } else if let Some((_, why)) = p.matching.unpaired.iter().find(|(k, _)| *k == i) {
                v["unpaired"] = reason_name(why).into();
                v["detail"] = closest(p, why).into();
            }
            v
        })
        .collect();
    let tensors: Vec<serde_json::Value> = p
        .matching
        .unpaired_tensors
        .iter()
        .map(|(t, c)| {
            serde_json::json!({"name": p.tensors[*t].name, "closest": c.map(|(n, e)| serde_json::json!({"node": p.nodes[n].name, "nmse": e}))})
        })
        .collect();
    serde_json::json!({
        "tokens": p.record.tokens, "variant": p.variant, "precision": p.precision.name(),
        "nodes": nodes, "unpaired_tensors": tensors,
        "entries": p.roles.iter().map(|r| &r.id).collect::<Vec<_>>(),
    })
}
