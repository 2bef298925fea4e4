//! Graph order: the edges of llama.cpp's graph, the rounds that pair each
//! node within the bounds its paired neighbours set, and what is taken
//! back once all are paired (pairs out of order, near misses a closer node
//! has, steps on the way to a tensor).

use std::collections::HashMap;

use super::pairs::{Pair, Unpaired};
use super::search::{pair_node, Context};
use super::sides::{Node, Tensor};

/// The graph's edges: each node's operand nodes and consumers, by position.
pub(super) struct Edges {
    pub(super) operands: Vec<Vec<usize>>,
    consumers: Vec<Vec<usize>>,
}

impl Edges {
    pub(super) fn new(nodes: &[Node]) -> Edges {
        let position: HashMap<usize, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.index, i))
            .collect();
        // A node that writes into a tensor of no node (SET_ROWS into the KV
        // cache) is what later readers of that tensor read.
        // (Through views of it: V is written into a reshape of its cache.)
        let mut writer: HashMap<String, usize> = HashMap::new();
        let mut root: Vec<Option<String>> = Vec::with_capacity(nodes.len());
        let mut operands: Vec<Vec<usize>> = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let mut ops: Vec<usize> = Vec::new();
            let mut roots: Vec<String> = Vec::new();
            for o in &n.operands {
                match o.node.and_then(|k| position.get(&k).copied()) {
                    Some(j) => {
                        ops.push(j);
                        roots.extend(root[j].clone());
                    }
                    None => {
                        ops.extend(writer.get(&o.name).copied());
                        roots.push(o.name.clone());
                    }
                }
            }
            // A view of one tensor of no node is a view of that tensor.
            root.push(
                match (moves_data(&n.op) && n.op != "SET_ROWS", roots.as_slice()) {
                    (true, [one]) => Some(one.clone()),
                    _ => None,
                },
            );
            if matches!(n.op.as_str(), "SET_ROWS" | "CPY" | "SET") {
                for r in roots {
                    writer.insert(r, i);
                }
            }
            ops.dedup();
            operands.push(ops);
        }
        let mut consumers = vec![Vec::new(); nodes.len()];
        for (i, ops) in operands.iter().enumerate() {
            for &j in ops {
                consumers[j].push(i);
            }
        }
        Edges {
            operands,
            consumers,
        }
    }

    /// Whether node `a` is one of those node `b` is computed from.
    pub(super) fn is_ancestor(&self, a: usize, b: usize) -> bool {
        let mut seen = vec![false; self.operands.len()];
        let mut frontier = vec![b];
        while let Some(i) = frontier.pop() {
            for &j in &self.operands[i] {
                if j == a {
                    return true;
                }
                if !std::mem::replace(&mut seen[j], true) {
                    frontier.push(j);
                }
            }
        }
        false
    }

    /// The order a node's candidates may not come before: the latest tensor
    /// any ancestor paired with (the nearest paired one on each path).
    fn floors(&self, orders: &[Option<usize>]) -> Vec<usize> {
        let mut floor = vec![0usize; orders.len()];
        for i in 0..orders.len() {
            floor[i] = self.operands[i]
                .iter()
                .map(|&j| orders[j].unwrap_or(floor[j]))
                .max()
                .unwrap_or(0);
        }
        floor
    }

    /// The order a node's candidates may not come after: the earliest
    /// tensor any descendant paired with.
    fn ceilings(&self, orders: &[Option<usize>]) -> Vec<usize> {
        let mut ceil = vec![usize::MAX; orders.len()];
        for i in (0..orders.len()).rev() {
            ceil[i] = self.consumers[i]
                .iter()
                .map(|&j| orders[j].unwrap_or(ceil[j]))
                .min()
                .unwrap_or(usize::MAX);
        }
        ceil
    }
}

/// The matcher's state between rounds.
pub(super) struct State {
    pub(super) pairs: Vec<Option<Pair>>,
    pub(super) why: Vec<Option<Unpaired>>,
    /// Per tensor, the node that came closest and its NMSE.
    pub(super) closest: Vec<Option<(usize, f64)>>,
    /// Bounds set from outside graph order's own (floor, ceiling), per node.
    pub(super) bounds: HashMap<usize, (usize, usize)>,
}

/// Round one pairs in graph order, each node bounded below by its
/// operands' pairs as they are made; later rounds add the bounds from
/// below (the pairs of the nodes computed from it) and try again.
pub(super) fn rounds(nodes: &[Node], edges: &Edges, ctx: &Context<'_>, state: &mut State) {
    let tensors = ctx.tensors;
    for round in 0..3 {
        let ceilings = match round {
            0 if state.bounds.is_empty() => vec![usize::MAX; nodes.len()],
            _ => edges.ceilings(&orders(&state.pairs, tensors)),
        };
        let mut floors = vec![0usize; nodes.len()];
        let mut changed = false;
        for i in 0..nodes.len() {
            // A pair with a tensor of no known place passes its own floor on.
            let bound = |j: usize| match state.pairs[j].as_ref().map(|p| &tensors[p.tensor]) {
                Some(t) if !t.late => t.order,
                _ => floors[j],
            };
            floors[i] = edges.operands[i]
                .iter()
                .map(|&j| bound(j))
                .max()
                .unwrap_or(0);
            if state.pairs[i].is_some() {
                continue;
            }
            let (extra_floor, extra_ceiling) =
                state.bounds.get(&i).copied().unwrap_or((0, usize::MAX));
            let bounds = (floors[i].max(extra_floor), ceilings[i].min(extra_ceiling));
            match pair_node(&nodes[i], i, bounds, ctx, &mut state.closest) {
                Ok(p) => {
                    state.pairs[i] = Some(p);
                    state.why[i] = None;
                    changed = true;
                }
                Err(u) => state.why[i] = Some(u),
            }
        }
        if !changed {
            break;
        }
    }
}

/// For each node torn between tensors X and Y, where a node computed from
/// it is torn between Y and X and X comes first: bounds that give the first
/// X and the second Y (Gemma's K before and after rope, nearly equal where
/// a global layer's rope turns little over a short probe). True if any.
pub(super) fn untangle(edges: &Edges, state: &mut State, tensors: &[Tensor]) -> bool {
    let torn: Vec<(usize, usize, usize)> = state
        .why
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match w {
            Some(Unpaired::Ambiguous { best, second }) => Some((i, best.0, second.0)),
            _ => None,
        })
        .collect();
    let mut any = false;
    for &(a, x, y) in &torn {
        for &(b, y2, x2) in &torn {
            let (tx, ty) = (&tensors[x], &tensors[y]);
            let ordered = !tx.late && !ty.late && tx.order < ty.order;
            if (x2, y2) == (x, y) && a != b && ordered && edges.is_ancestor(a, b) {
                state.bounds.insert(a, (0, ty.order - 1));
                state.bounds.insert(b, (tx.order + 1, usize::MAX));
                any = true;
            }
        }
    }
    any
}

/// The order of each node's tensor, where it has one that bounds others.
fn orders(pairs: &[Option<Pair>], tensors: &[Tensor]) -> Vec<Option<usize>> {
    pairs
        .iter()
        .map(|p| {
            p.as_ref()
                .map(|p| &tensors[p.tensor])
                .filter(|t| !t.late)
                .map(|t| t.order)
        })
        .collect()
}

/// A pair whose tensor comes before its ancestors' or after its
/// descendants' is no pair: graph order is what keeps near-identical
/// neighbours (the residual stream before and after a block) apart.
pub(super) fn drop_out_of_order(
    edges: &Edges,
    pairs: &mut [Option<Pair>],
    why: &mut [Option<Unpaired>],
    tensors: &[Tensor],
) {
    let current = orders(pairs, tensors);
    let (floors, ceilings) = (edges.floors(&current), edges.ceilings(&current));
    for i in 0..pairs.len() {
        if let Some(order) = current[i] {
            if !(floors[i]..=ceilings[i]).contains(&order) {
                let tensor = pairs[i].take().map(|p| p.tensor).unwrap_or_default();
                why[i] = Some(Unpaired::OutOfOrder { tensor });
            }
        }
    }
}

/// A near miss stands only where no other node is closer to its tensor: a
/// norm before its weight is near the norm's output, but the node after
/// the weight is the output.
pub(super) fn drop_far_rivals(pairs: &mut [Option<Pair>], why: &mut [Option<Unpaired>]) {
    let mut best: HashMap<usize, f64> = HashMap::new();
    for p in pairs.iter().flatten() {
        let e = best.entry(p.tensor).or_insert(f64::INFINITY);
        *e = e.min(p.fit.nmse);
    }
    for i in 0..pairs.len() {
        let Some(p) = &pairs[i] else { continue };
        if p.near && best[&p.tensor] < p.fit.nmse {
            why[i] = Some(Unpaired::TooFar {
                tensor: p.tensor,
                nmse: p.fit.nmse,
            });
            pairs[i] = None;
        }
    }
}

/// Ops that move or store values without computing new ones.
pub(crate) fn moves_data(op: &str) -> bool {
    matches!(
        op,
        "VIEW"
            | "RESHAPE"
            | "PERMUTE"
            | "TRANSPOSE"
            | "CONT"
            | "CPY"
            | "DUP"
            | "SET_ROWS"
            | "GET_ROWS"
    )
}

/// Where two nodes pair with one tensor, one computed from the other and
/// twice as far (3 dB), the farther is not the tensor: before the closer
/// one, a step on the way to it (a matrix product before its bias, a norm
/// before its weight); after it, a computation that happens to change it
/// little (an RMSNorm of an output whose rows are near unit scale). A copy
/// that stores it (the f16 cache written from K) is the tensor, farther.
pub(super) fn drop_intermediates(
    edges: &Edges,
    ops: &[&str],
    pairs: &mut [Option<Pair>],
    why: &mut [Option<Unpaired>],
) {
    let mut by_tensor: HashMap<usize, Vec<(usize, f64)>> = HashMap::new();
    for p in pairs.iter().flatten() {
        by_tensor
            .entry(p.tensor)
            .or_default()
            .push((p.node, p.fit.nmse));
    }
    for i in 0..pairs.len() {
        let Some(p) = &pairs[i] else { continue };
        let closer = by_tensor[&p.tensor].iter().find(|&&(j, nmse)| {
            j != i
                && p.fit.nmse > 2.0 * nmse
                && (edges.is_ancestor(i, j) || (edges.is_ancestor(j, i) && !moves_data(ops[i])))
        });
        if let Some(&(j, _)) = closer {
            why[i] = Some(Unpaired::Intermediate {
                tensor: p.tensor,
                closer: j,
            });
            pairs[i] = None;
        }
    }
}
