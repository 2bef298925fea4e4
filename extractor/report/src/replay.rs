//! What a replay found (each node's own error: its op replayed in f64 from
//! llama.cpp's own operands) and how it reads: the terminal's table per op
//! type, `replay.json` and `replay.html` (per layer and op type).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::text::{layer_text, xml};

/// One node, judged.
#[derive(Debug, Clone, Serialize)]
pub struct NodeError {
    pub index: usize,
    pub name: String,
    pub layer: Option<u32>,
    pub op: String,
    /// `replayed`, `unknown` (the reference does not define the op),
    /// `unavailable` (an operand was not kept) or `not computed` (ggml
    /// skipped the node).
    pub status: String,
    /// What explains its error, or why it was not replayed.
    pub explanation: String,
    pub nmse: f64,
    pub max_abs: f64,
    /// Where the largest |difference| is (row-major, ggml's ne reversed).
    pub max_abs_at: Vec<usize>,
    /// The largest |difference| / allowance: above 1, the kernel computed
    /// something its explanation does not allow.
    pub worst_ratio: f64,
    pub n_outside: usize,
    pub flagged: bool,
}

/// All nodes of one op type.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub op: String,
    pub nodes: usize,
    pub replayed: usize,
    pub median_nmse: f64,
    pub worst_nmse: f64,
    /// The largest share of its allowance a node used, and which node.
    pub worst_ratio: f64,
    pub worst_node: String,
    pub flagged: usize,
    pub explanations: Vec<String>,
}

/// A whole replay.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub nodes: Vec<NodeError>,
    pub ops: Vec<OpSummary>,
    /// What the f64 replay took (seconds).
    pub replay_seconds: f64,
}

impl Replay {
    pub fn flagged(&self) -> impl Iterator<Item = &NodeError> {
        self.nodes.iter().filter(|n| n.flagged)
    }

    /// Nodes not replayed, by status and reason: an op the reference does
    /// not define is named, never left out.
    pub fn not_replayed(&self) -> BTreeMap<(String, String), Vec<&NodeError>> {
        let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.status != "replayed") {
            out.entry((n.status.clone(), n.explanation.clone()))
                .or_default()
                .push(n);
        }
        out
    }

    /// The terminal's text: one line per op type, then what was flagged
    /// and what was not replayed.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<15} {:>5} {:>12} {:>12} {:>10}  {:<7}  explanation",
            "op", "nodes", "median NMSE", "worst NMSE", "allowance", "flagged"
        );
        for op in self.ops.iter().filter(|op| op.replayed > 0) {
            let _ = writeln!(
                s,
                "{:<15} {:>5} {:>12.2e} {:>12.2e} {:>10}  {:<7}  {}",
                op.op,
                op.replayed,
                op.median_nmse,
                op.worst_nmse,
                share(op.worst_ratio),
                op.flagged,
                op.explanations.join("; ")
            );
        }
        s + &self.exceptions()
    }

    /// The flagged nodes, one a line, then the nodes not replayed by reason.
    fn exceptions(&self) -> String {
        let mut s = String::new();
        for n in self.flagged() {
            let _ = writeln!(
                s,
                "FLAGGED {} #{} ({}, {}): NMSE {:.2e}, max |diff| {:.3e} at {:?}, {:.0}x its allowance on {} elements; \
                 allowed: {}",
                n.op,
                n.index,
                n.name,
                layer_text(n.layer),
                n.nmse,
                n.max_abs,
                n.max_abs_at,
                n.worst_ratio,
                n.n_outside,
                n.explanation
            );
        }
        for ((status, why), nodes) in self.not_replayed() {
            let names: Vec<String> = nodes
                .iter()
                .take(4)
                .map(|n| format!("{} #{}", n.name, n.index))
                .collect();
            let more = nodes.len().saturating_sub(4);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "{status}: {} node(s) ({}{more}): {why}",
                nodes.len(),
                names.join(", ")
            );
        }
        s
    }

    /// `replay.html`: the op types' table, then per layer and op type the
    /// largest share of its allowance a node used (red above 100%).
    pub fn html(&self, title: &str) -> String {
        let mut s = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
             body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;\
             padding:2px 6px;text-align:right}} td.l{{text-align:left}} .bad{{background:#f88}}</style></head>\
             <body><h1>{t}</h1><h2>By op type</h2>{}<h2>By layer: the largest share of its allowance a node \
             used</h2>{}<h2>Flagged, and not replayed</h2><pre>{}</pre></body></html>",
            self.ops_table(),
            self.layer_grid(),
            xml(&self.exceptions()),
            t = xml(title)
        );
        s.push('\n');
        s
    }

    fn ops_table(&self) -> String {
        let mut s = String::from(
            "<table><tr><th>op</th><th>nodes</th><th>median NMSE</th><th>worst NMSE</th>\
             <th>allowance used</th><th>worst node</th><th>flagged</th><th>explanation</th></tr>",
        );
        for op in self.ops.iter().filter(|op| op.replayed > 0) {
            let class = if op.flagged > 0 { " class=\"bad\"" } else { "" };
            let _ = write!(
                s,
                "<tr{class}><td class=l>{}</td><td>{}</td><td>{:.2e}</td><td>{:.2e}</td><td>{}</td>\
                 <td class=l>{}</td><td>{}</td><td class=l>{}</td></tr>",
                xml(&op.op),
                op.replayed,
                op.median_nmse,
                op.worst_nmse,
                share(op.worst_ratio),
                xml(&op.worst_node),
                op.flagged,
                xml(&op.explanations.join("; "))
            );
        }
        s + "</table>"
    }

    fn layer_grid(&self) -> String {
        let ops: Vec<&str> = self.ops.iter().map(|o| o.op.as_str()).collect();
        let mut cells: BTreeMap<(Option<u32>, &str), f64> = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.status == "replayed") {
            let cell = cells.entry((n.layer, n.op.as_str())).or_insert(0.0);
            *cell = cell.max(n.worst_ratio);
        }
        let mut layers: Vec<Option<u32>> = cells.keys().map(|k| k.0).collect();
        layers.dedup();
        let mut s = String::from("<table><tr><th>layer</th>");
        for op in &ops {
            let _ = write!(s, "<th>{}</th>", xml(op));
        }
        s.push_str("</tr>");
        for layer in layers {
            let _ = write!(s, "<tr><td class=l>{}</td>", xml(&layer_text(layer)));
            for op in &ops {
                match cells.get(&(layer, *op)) {
                    Some(r) if *r > 1.0 => {
                        let _ = write!(s, "<td class=bad>{:.0}x</td>", r);
                    }
                    Some(r) => {
                        let _ = write!(s, "<td>{:.1}%</td>", 100.0 * r);
                    }
                    None => s.push_str("<td></td>"),
                }
            }
            s.push_str("</tr>");
        }
        s + "</table>"
    }
}

/// A share of an allowance: a percentage up to it, a multiple beyond.
fn share(ratio: f64) -> String {
    match ratio {
        r if r.is_nan() => "-".into(),
        r if r > 1.0 => format!("{r:.0}x"),
        r => format!("{:.1}%", 100.0 * r),
    }
}
