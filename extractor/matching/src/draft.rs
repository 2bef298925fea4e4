//! A manifest written from the pairs: for each paired node, how the
//! extractor finds it (its name and op, or an operand's name), its shape in
//! symbols, the reference tensor and the layout ops that bring it to the
//! node's, and a tolerance. A node found in every layer the same way becomes
//! one entry with `{layer}`; one found in some layers only, an entry per
//! layer. It is the manifest a person would write, for a person to review.

use std::collections::HashMap;

use llorch_checkpoint_spec::manifest::Symbols;

use super::fit::Scale;
use super::layout::Step;
use super::sides::{is_derived_name, layer_mark};
use super::{Matching, Node, Pair, Segment, Tensor};

/// One drafted checkpoint (of one layer, before templating).
#[derive(Clone, Debug, PartialEq)]
pub struct Drafted {
    pub node: usize,
    pub layer: Option<u32>,
    pub selector: Selector,
    /// ggml ne order, innermost first.
    pub shape: Vec<String>,
    pub capture: String,
    /// Each op as the manifest's YAML writes it.
    pub ops: Vec<String>,
    pub what: String,
    /// The node's name (in its layer).
    pub name: String,
    /// A short name for its id and file.
    pub slug: String,
    /// Drafted from a near miss (a node that diverges).
    pub near: bool,
}

/// How the extractor finds a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    pub tensor: Option<String>,
    pub op: String,
    pub operand: Option<String>,
    pub depth: u8,
}

/// Why a pair could not be drafted.
#[derive(Clone, Debug, PartialEq)]
pub enum Skipped {
    /// A view ggml made of a node paired with the same tensor: it adds nothing.
    ViewOfPaired { of: usize },
    /// Neither its name nor any operand's finds this node alone.
    NoSelector,
}

/// The symbols' values and how dimensions are written in them.
pub struct Words<'a> {
    pub symbols: &'a Symbols,
}

/// The symbols a dimension is written in, in the order equal values are
/// taken: the spec's, but the pass's `n_tokens` and `n_kv`, which [`Words::dim`]
/// gives where they belong.
fn named() -> impl Iterator<Item = &'static str> {
    llorch_checkpoint_spec::manifest::SYMBOLS
        .iter()
        .copied()
        .filter(|s| !matches!(*s, "n_tokens" | "n_kv"))
}

impl Words<'_> {
    /// `v` as the simplest expression of the symbols: n_tokens (or n_kv on
    /// a KV axis), one symbol, k*symbol, symbol*symbol, symbol/k, n_tokens*symbol,
    /// else the number. Symbols equal in value are taken in [`named`]'s order.
    pub fn dim(&self, v: usize, kv: bool) -> String {
        let s = self.symbols;
        let v = v as i64;
        if v == 1 {
            return "1".into();
        }
        if v == s.n_tokens {
            return if kv { "n_kv" } else { "n_tokens" }.into();
        }
        let named: Vec<(&str, i64)> = named()
            .map(|n| (n, s.get(n).unwrap_or(0)))
            .filter(|(_, x)| *x > 1)
            .collect();
        if let Some((n, _)) = named.iter().find(|(_, x)| *x == v) {
            return n.to_string();
        }
        for k in 2..=8 {
            if let Some((n, _)) = named.iter().find(|(_, x)| x * k == v) {
                return format!("{k}*{n}");
            }
        }
        for (a, x) in &named {
            if let Some((b, _)) = named.iter().find(|(_, y)| x * y == v) {
                return format!("{a}*{b}");
            }
        }
        for k in 2..=8 {
            if let Some((n, _)) = named.iter().find(|(_, x)| x % k == 0 && x / k == v) {
                return format!("{n}/{k}");
            }
        }
        if let Some((n, _)) = named.iter().find(|(_, x)| s.n_tokens * x == v) {
            return format!("n_tokens*{n}");
        }
        v.to_string()
    }
}

/// `name` with layer `l` written `{layer}` where it marks the layer
/// (`-3`, `_l3`, `blk.3.`, a path's `.3.`); None where no mark is there.
pub fn templated(name: &str, l: u32) -> Option<String> {
    let n = l.to_string();
    let (base, rest) = match name.find(" (") {
        Some(i) => name.split_at(i),
        None => (name, ""),
    };
    for (mark, with) in [
        (format!("-{n}"), "-{layer}"),
        (format!("_l{n}"), "_l{layer}"),
    ] {
        if base.ends_with(&mark) {
            return Some(format!("{}{with}{rest}", &base[..base.len() - mark.len()]));
        }
    }
    let parts: Vec<&str> = name.split('.').collect();
    let at = parts
        .iter()
        .position(|p| *p == n.as_str() || p.split(':').next() == Some(n.as_str()))?;
    let mut out: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
    out[at] = out[at].replacen(&n, "{layer}", 1);
    Some(out.join("."))
}

/// The drafted checkpoint of each pair, in graph order, and the pairs left
/// out with the reason.
pub fn draft(
    m: &Matching,
    nodes: &[Node],
    tensors: &[Tensor],
    words: &Words<'_>,
) -> (Vec<Drafted>, Vec<(usize, Skipped)>) {
    let by_index: HashMap<usize, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.index, i))
        .collect();
    let mut drafted = Vec::new();
    let mut skipped = Vec::new();
    let mut pairs: Vec<&Pair> = m.pairs.iter().collect();
    pairs.sort_by_key(|p| p.node);
    for p in pairs {
        let node = &nodes[p.node];
        if is_derived_name(&node.name) && super::moves_data(&node.op) {
            let same = node.operands.iter().find_map(|o| {
                let j = *by_index.get(&o.node?)?;
                m.pair_of(j).filter(|q| q.tensor == p.tensor).map(|_| j)
            });
            if let Some(of) = same {
                skipped.push((p.node, Skipped::ViewOfPaired { of }));
                continue;
            }
        }
        let layer = match node.segment {
            Segment::Layer(l) => Some(l),
            _ => None,
        };
        let Some(selector) = select(p.node, nodes, &by_index, layer) else {
            skipped.push((p.node, Skipped::NoSelector));
            continue;
        };
        drafted.push(Drafted {
            node: p.node,
            layer,
            selector,
            shape: shape(node, p, words),
            capture: tensors[p.tensor].name.clone(),
            ops: ops(p, tensors, node, words),
            what: what(node, p, tensors),
            name: node.name.clone(),
            slug: String::new(),
            near: p.near,
        });
    }
    // The op joins the name where another node of the layer has the same one.
    let bases: Vec<(Option<u32>, String)> =
        drafted.iter().map(|d| (d.layer, base_name(d))).collect();
    for (i, d) in drafted.iter_mut().enumerate() {
        let shared = bases.iter().filter(|b| **b == bases[i]).count() > 1;
        d.slug = slug(&bases[i].1, shared.then_some(d.selector.op.as_str()));
    }
    (drafted, skipped)
}

/// A line for the entry's `what:`, without layer numbers.
fn what(node: &Node, p: &Pair, tensors: &[Tensor]) -> String {
    let layer = match node.segment {
        Segment::Layer(l) => Some(l),
        _ => None,
    };
    let plain = |s: &str| {
        layer
            .and_then(|l| templated(s, l))
            .unwrap_or_else(|| s.to_string())
    };
    let mut text = format!(
        "{} {}, the reference's {}",
        node.op,
        plain(&node.name),
        plain(&tensors[p.tensor].name)
    );
    if p.layout.rope != super::layout::Rope::None {
        text += " (Q/K rows in llama.cpp's rope order)";
    }
    if p.near {
        text += &format!(" (a near miss: NMSE {:.1e} on the probe)", p.fit.nmse);
    }
    match &p.scale {
        Scale::Reasoned(r) => text += &format!(" times {}", r.why),
        Scale::Unexplained(s) => {
            text += &format!(" (fitted scale {s:.6}, which no dimension explains)")
        }
        Scale::One => {}
    }
    text
}

/// The node's ne in symbols, its padded KV axis (if cropped) as `n_kv`.
fn shape(node: &Node, p: &Pair, words: &Words<'_>) -> Vec<String> {
    let n = node.shape.len();
    let kv = p.crop.map(|(axis, _)| n - 1 - axis);
    node.shape
        .iter()
        .rev()
        .enumerate()
        .map(|(d, &v)| match Some(d) == kv {
            true => "n_kv".into(),
            false => words.dim(v, false),
        })
        .collect()
}

/// The steps as manifest ops, in symbols; the scale last.
fn ops(p: &Pair, tensors: &[Tensor], node: &Node, words: &Words<'_>) -> Vec<String> {
    let t = &tensors[p.tensor];
    let mut shape = t.shape.clone();
    let mut out = Vec::new();
    let n_file = node.shape.len();
    let kv_axis = p.crop.map(|(axis, _)| axis);
    for step in p.steps() {
        match &step {
            Step::DropBatch => {
                shape.remove(0);
                out.push("drop_batch".into());
            }
            Step::Slice { axis, start, len } => {
                let len_text = words.dim(*len, false);
                let start_text = match (start / len.max(&1), start % len.max(&1)) {
                    (0, 0) => "0".to_string(),
                    (1, 0) => len_text.clone(),
                    (k, 0) if !len_text.contains(['*', '/']) => format!("{k}*{len_text}"),
                    _ => words.dim(*start, false),
                };
                shape[*axis] = *len;
                out.push(format!(
                    "{{slice: {{axis: {axis}, start: {start_text}, len: {len_text}}}}}"
                ));
            }
            Step::Reshape(dims) => {
                // The final reshape is the node's file shape: its KV axis is n_kv.
                let last = dims == &node_file_shape(node, p) && dims.len() == n_file;
                let rope = rope_parts(dims, p);
                let text: Vec<String> = dims
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| match rope.contains(&i) {
                        true if d == 2 => "2".to_string(),
                        true => "head_dim/2".to_string(),
                        false => words.dim(d, last && Some(i) == kv_axis),
                    })
                    .collect();
                shape = dims.clone();
                out.push(format!("{{reshape: [{}]}}", text.join(", ")));
            }
            Step::Permute(axes) => {
                shape = axes.iter().map(|&a| shape[a]).collect();
                let text: Vec<String> = axes.iter().map(|a| a.to_string()).collect();
                out.push(format!("{{permute: [{}]}}", text.join(", ")));
            }
        }
    }
    if let Scale::Reasoned(r) = &p.scale {
        out.push(format!("{{scale: {}}}", r.value));
    }
    out
}

/// The positions of a rope split's two parts in a reshape's dims: in the
/// first reshape of a layout that has one.
fn rope_parts(dims: &[usize], p: &Pair) -> Vec<usize> {
    let first = p.layout.steps.iter().find_map(|s| match s {
        Step::Reshape(d) => Some(d),
        _ => None,
    });
    match (p.layout.rope_at, first) {
        (Some(at), Some(first)) if first == dims => vec![at, at + 1],
        _ => Vec::new(),
    }
}

/// The node's row-major shape as compared (padded KV cells dropped).
fn node_file_shape(node: &Node, p: &Pair) -> Vec<usize> {
    let mut shape = node.shape.clone();
    if let Some((axis, keep)) = p.crop {
        shape[axis] = keep;
    }
    shape
}

/// A name that stays the same between graphs: a weight's, a cache's or a
/// named node's (not `node_31`, not `Qcur-0 (view)`).
pub(super) fn stable(name: &str) -> bool {
    !is_derived_name(name)
}

/// How the extractor will find node `i` alone: its name and op where that
/// pair is unique, else its op and an operand's name (one, two, up to four
/// steps up the graph), each written with `{layer}` for a node of a layer.
fn select(
    i: usize,
    nodes: &[Node],
    by_index: &HashMap<usize, usize>,
    layer: Option<u32>,
) -> Option<Selector> {
    let node = &nodes[i];
    let fill = |name: &str| -> Option<String> {
        match layer {
            Some(l) => templated(name, l),
            None => (layer_mark(name).is_none()).then(|| name.to_string()),
        }
    };
    // A GGUF weight's or a cache's name first: they stay the same between
    // llama.cpp versions, node names do not (`node_<n>` counts the graph).
    let lasting =
        |name: &str| !name.contains(" (") && (name.contains('.') || name.starts_with("cache_"));
    for o in node.operands.iter().filter(|o| lasting(&o.name)) {
        let alone = nodes
            .iter()
            .filter(|n| n.op == node.op && n.operands.iter().any(|p| p.name == o.name))
            .count()
            == 1;
        if let (true, Some(operand)) = (alone, fill(&o.name)) {
            return Some(Selector {
                tensor: None,
                op: node.op.clone(),
                operand: Some(operand),
                depth: 1,
            });
        }
    }
    if stable(&node.name)
        && nodes
            .iter()
            .filter(|n| n.name == node.name && n.op == node.op)
            .count()
            == 1
    {
        if let Some(tensor) = fill(&node.name) {
            return Some(Selector {
                tensor: Some(tensor),
                op: node.op.clone(),
                operand: None,
                depth: 1,
            });
        }
    }
    for depth in 1..=4u8 {
        let reach = |j: usize| reachable(j, nodes, by_index, depth);
        let mine = reach(i);
        for name in mine.iter().filter(|n| stable(n)) {
            let alone = nodes
                .iter()
                .enumerate()
                .filter(|(j, n)| n.op == node.op && (*j == i || reach(*j).contains(name)))
                .count()
                == 1;
            if let (true, Some(operand)) = (alone, fill(name)) {
                return Some(Selector {
                    tensor: None,
                    op: node.op.clone(),
                    operand: Some(operand),
                    depth,
                });
            }
        }
    }
    None
}

/// The names of the tensors at most `depth` steps up from node `j`.
fn reachable(j: usize, nodes: &[Node], by_index: &HashMap<usize, usize>, depth: u8) -> Vec<String> {
    let mut out = Vec::new();
    let mut frontier = vec![j];
    for _ in 0..depth {
        let mut next = Vec::new();
        for &k in &frontier {
            for o in &nodes[k].operands {
                if !out.contains(&o.name) {
                    out.push(o.name.clone());
                }
                if let Some(&p) = o.node.and_then(|n| by_index.get(&n)) {
                    next.push(p);
                }
            }
        }
        frontier = next;
    }
    out
}

/// What a drafted checkpoint is called: the node's name without its layer
/// mark, or (found by an operand) the op and the operand's.
pub(super) fn base_name(d: &Drafted) -> String {
    let t = |s: &str| {
        d.layer
            .and_then(|l| templated(s, l))
            .unwrap_or_else(|| s.to_string())
    };
    let base = match (&d.selector.tensor, &d.selector.operand) {
        (Some(tensor), _) => t(tensor),
        _ if stable(&d.name) => t(&d.name),
        (None, Some(operand)) => format!("{}_{}", d.selector.op.to_lowercase(), t(operand)),
        (None, None) => d.selector.op.to_lowercase(),
    };
    base.replace("{layer}", "")
        .replace("blk.", "")
        .replace(".weight", "")
        .replace(".bias", "_bias")
}

/// A name fit for ids and files: letters, digits and single underscores.
pub(super) fn slug(base: &str, op: Option<&str>) -> String {
    let text = match op {
        Some(op) => format!("{base}_{}", op.to_lowercase()),
        None => base.to_string(),
    };
    let mut out: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    out.trim_matches('_').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_templated_where_names_mark_them() {
        assert_eq!(
            templated("attn_norm-3", 3).as_deref(),
            Some("attn_norm-{layer}")
        );
        assert_eq!(
            templated("cache_k_l3 (view)", 3).as_deref(),
            Some("cache_k_l{layer} (view)")
        );
        assert_eq!(
            templated("blk.3.attn_q.weight", 3).as_deref(),
            Some("blk.{layer}.attn_q.weight")
        );
        assert_eq!(
            templated("model.layers.3.self_attn.o_proj:input", 3).as_deref(),
            Some("model.layers.{layer}.self_attn.o_proj:input")
        );
        assert_eq!(
            templated("attn.3.query", 3).as_deref(),
            Some("attn.{layer}.query")
        );
        assert_eq!(templated("norm", 3), None);
        assert_eq!(templated("attn_norm-13", 3), None);
    }

    #[test]
    fn dimensions_are_written_in_the_simplest_symbols() {
        let symbols = Symbols {
            n_embd: 576,
            n_head: 9,
            n_head_kv: 3,
            head_dim: 64,
            n_embd_gqa: 192,
            n_ff: 1536,
            n_vocab: 49152,
            n_ctx: 512,
            n_tokens: 23,
            n_kv: 23,
        };
        let w = Words { symbols: &symbols };
        assert_eq!(w.dim(23, false), "n_tokens");
        assert_eq!(w.dim(23, true), "n_kv");
        assert_eq!(w.dim(576, false), "n_embd");
        assert_eq!(w.dim(32, false), "head_dim/2");
        assert_eq!(w.dim(1728, false), "3*n_embd");
        assert_eq!(w.dim(23 * 192, false), "n_tokens*n_embd_gqa");
        assert_eq!(w.dim(7, false), "7");
    }
}
