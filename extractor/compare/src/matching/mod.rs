//! Pairing llama.cpp's nodes with a reference implementation's tensors by
//! value, with no manifest: what a person porting a model does by eye,
//! layer 0 first, done for every node.
//!
//! Both sides come whole: every node of one llama.cpp pass (an extractor run
//! of `--tensors '*'`, with each node's operands) and every tensor the
//! reference's pass made on the same tokens. A node and a tensor pair when
//! they are in the same segment (before the layers, layer L, after), have
//! the same number of elements (the node's padded KV cells dropped, or one
//! part of a fused tensor taken), and one of a few layouts ([`layout`])
//! times one scalar makes the tensor's values the node's: NMSE at most
//! [`Options::accept`], and at least [`Options::margin`] times better than
//! any other candidate whose values differ. Pairs keep graph order: a
//! node's candidates are made no earlier than those its operands paired
//! with, and, once later nodes are paired, no later than theirs (a second
//! round tries the nodes the first left ambiguous within those bounds).
//! What stays unpaired on either side is listed with the reason.

use std::collections::HashMap;

use llorch_checkpoint_spec::manifest::Symbols;

pub mod against;
pub mod draft;
pub mod fit;
pub mod layout;
pub mod sides;
#[cfg(test)]
mod tests;

use fit::{Fit, Reasoned, Scale};
use layout::{Layout, Step};
pub use sides::{read_nodes, read_tensors, Node, Segment, Tensor};

/// When a pair is accepted.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The largest NMSE (at the fitted scale) a pair may have
    /// ([`crate::precision::Precision::accept`]: from 1e-3 for f32 weights
    /// to 5e-2 for quantized ones).
    pub accept: f64,
    /// Beyond `accept` and up to this (-10 dB), a node still pairs, as a near
    /// miss, where its tensor is clear of every other by the margin, its
    /// scale has a reason and no closer node has that tensor: a diverging
    /// node (llama.cpp computing something else than the reference) is
    /// still the reference's tensor's counterpart, and its verdict shows
    /// the divergence instead of hiding it among the unpaired.
    pub near: f64,
    /// How much closer the pair must be than the next candidate whose values
    /// differ: 10 (10 dB).
    pub margin: f64,
}

impl Options {
    pub fn new(precision: crate::precision::Precision) -> Options {
        Options {
            accept: precision.accept(),
            near: 0.1,
            margin: 10.0,
        }
    }
}

/// A node paired with a reference tensor.
#[derive(Clone, Debug)]
pub struct Pair {
    /// Positions in the node and tensor lists.
    pub node: usize,
    pub tensor: usize,
    /// llama.cpp's padded KV cells dropped: (file axis, cells kept).
    pub crop: Option<(usize, usize)>,
    /// One part of a fused tensor taken first: (axis, start, len), on the tensor's own axes.
    pub part: Option<(usize, usize, usize)>,
    /// The steps that lay the tensor out as the node (after `part`).
    pub layout: Layout,
    pub fit: Fit,
    pub scale: Scale,
    /// The closest candidate whose values differ, and its NMSE (a lower bound where not computed).
    pub runner_up: Option<(usize, f64)>,
    /// Other tensors with the very same values in this layout.
    pub aliases: Vec<usize>,
    /// Beyond [`Options::accept`]: a near miss, a node that diverges.
    pub near: bool,
}

impl Pair {
    /// Every step on the reference tensor: the part taken, then the layout.
    pub fn steps(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = self
            .part
            .map(|(axis, start, len)| Step::Slice { axis, start, len })
            .into_iter()
            .collect();
        steps.extend(self.layout.steps.iter().cloned());
        steps
    }

    /// The margin over the runner-up, in dB.
    pub fn margin_db(&self) -> f64 {
        match self.runner_up {
            Some((_, nmse)) => 10.0 * (nmse / self.fit.nmse.max(f64::MIN_POSITIVE)).log10(),
            None => f64::INFINITY,
        }
    }
}

/// Why a node has no counterpart.
#[derive(Clone, Debug, PartialEq)]
pub enum Unpaired {
    /// It holds NaN or infinities (an attention mask).
    NonFinite,
    /// All its values are equal: they tell no tensor from another.
    Constant,
    /// No tensor of its segment has its number of elements (or a multiple, for a part).
    NoCandidate,
    /// The closest tensor is beyond [`Options::accept`].
    TooFar { tensor: usize, nmse: f64 },
    /// Two tensors of different values are about as close.
    Ambiguous {
        best: (usize, f64),
        second: (usize, f64),
    },
    /// Its best tensor comes before what its operands paired with, or after
    /// what the nodes computed from it paired with.
    OutOfOrder { tensor: usize },
    /// A node computed from it, or it from (position `closer`), is its
    /// tensor, twice as close: this one is a step on the way (a product
    /// before its bias) or a computation after it.
    Intermediate { tensor: usize, closer: usize },
}

/// Everything the matcher found.
pub struct Matching {
    pub pairs: Vec<Pair>,
    /// Nodes without a counterpart, by position, with the reason.
    pub unpaired: Vec<(usize, Unpaired)>,
    /// Tensors no node paired with (nor is an alias of a paired one), with
    /// the node that came closest and its NMSE, where one was compared.
    pub unpaired_tensors: Vec<(usize, Option<(usize, f64)>)>,
}

impl Matching {
    /// The pair of node position `node`, if any.
    pub fn pair_of(&self, node: usize) -> Option<&Pair> {
        self.pairs.iter().find(|p| p.node == node)
    }
}

/// The graph's edges: each node's operand nodes and consumers, by position.
struct Edges {
    operands: Vec<Vec<usize>>,
    consumers: Vec<Vec<usize>>,
}

impl Edges {
    fn new(nodes: &[Node]) -> Edges {
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
    fn is_ancestor(&self, a: usize, b: usize) -> bool {
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

/// Pairs `nodes` (graph order) with `tensors` (the reference's order).
pub fn pair_all(nodes: &[Node], tensors: &[Tensor], symbols: &Symbols, opts: &Options) -> Matching {
    let edges = Edges::new(nodes);
    let sorted: Vec<Vec<f64>> = tensors.iter().map(|t| sorted_copy(&t.data)).collect();
    let ctx = Context {
        tensors,
        sorted: &sorted,
        symbols,
        reasoned: fit::reasoned_scales(symbols),
        opts,
    };
    let mut state = State {
        pairs: vec![None; nodes.len()],
        why: vec![None; nodes.len()],
        closest: vec![None; tensors.len()],
        bounds: HashMap::new(),
    };
    rounds(nodes, &edges, &ctx, &mut state);
    // Two nodes, one computed from the other, each torn between the same
    // two tensors: only one assignment keeps graph order. Bounded by it,
    // both pair, and what follows from them.
    if untangle(&edges, &mut state, tensors) {
        rounds(nodes, &edges, &ctx, &mut state);
    }
    let State {
        mut pairs,
        mut why,
        closest,
        ..
    } = state;
    drop_out_of_order(&edges, &mut pairs, &mut why, tensors);
    drop_far_rivals(&mut pairs, &mut why);
    let ops: Vec<&str> = nodes.iter().map(|n| n.op.as_str()).collect();
    drop_intermediates(&edges, &ops, &mut pairs, &mut why);
    finish(pairs, why, closest, tensors)
}

/// The matcher's state between rounds.
struct State {
    pairs: Vec<Option<Pair>>,
    why: Vec<Option<Unpaired>>,
    /// Per tensor, the node that came closest and its NMSE.
    closest: Vec<Option<(usize, f64)>>,
    /// Bounds set from outside graph order's own (floor, ceiling), per node.
    bounds: HashMap<usize, (usize, usize)>,
}

/// Round one pairs in graph order, each node bounded below by its
/// operands' pairs as they are made; later rounds add the bounds from
/// below (the pairs of the nodes computed from it) and try again.
fn rounds(nodes: &[Node], edges: &Edges, ctx: &Context<'_>, state: &mut State) {
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
fn untangle(edges: &Edges, state: &mut State, tensors: &[Tensor]) -> bool {
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
fn drop_out_of_order(
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
fn drop_far_rivals(pairs: &mut [Option<Pair>], why: &mut [Option<Unpaired>]) {
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
fn drop_intermediates(
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

fn finish(
    pairs: Vec<Option<Pair>>,
    why: Vec<Option<Unpaired>>,
    closest: Vec<Option<(usize, f64)>>,
    tensors: &[Tensor],
) -> Matching {
    let pairs: Vec<Pair> = pairs.into_iter().flatten().collect();
    let mut used = vec![false; tensors.len()];
    for p in &pairs {
        used[p.tensor] = true;
        for &a in &p.aliases {
            used[a] = true;
        }
    }
    let unpaired = why
        .into_iter()
        .enumerate()
        .filter_map(|(i, w)| Some((i, w?)))
        .filter(|(i, _)| !pairs.iter().any(|p| p.node == *i))
        .collect();
    let unpaired_tensors = (0..tensors.len())
        .filter(|&t| !used[t])
        .map(|t| (t, closest[t]))
        .collect();
    Matching {
        pairs,
        unpaired,
        unpaired_tensors,
    }
}

fn sorted_copy(data: &[f64]) -> Vec<f64> {
    let mut v = data.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// What every node's search reads.
struct Context<'a> {
    tensors: &'a [Tensor],
    sorted: &'a [Vec<f64>],
    symbols: &'a Symbols,
    reasoned: Vec<Reasoned>,
    opts: &'a Options,
}

/// The node's values as a candidate is compared with them: as captured, or
/// with its padded KV cells dropped along one axis.
struct View {
    crop: Option<(usize, usize)>,
    shape: Vec<usize>,
    data: Vec<f64>,
    sorted: Vec<f64>,
    spread: f64,
}

fn views(node: &Node, symbols: &Symbols) -> Vec<View> {
    let mut out = vec![(None, node.shape.clone(), node.data.clone())];
    let (n_kv, n_ctx) = (symbols.n_kv as usize, symbols.n_ctx as usize);
    for (axis, &d) in node.shape.iter().enumerate() {
        if d > n_kv && d <= n_ctx && n_kv > 0 {
            let data = layout::slice(&node.shape, &node.data, axis, 0, n_kv);
            let mut shape = node.shape.clone();
            shape[axis] = n_kv;
            out.push((Some((axis, n_kv)), shape, data));
        }
    }
    out.into_iter()
        .map(|(crop, shape, data)| View {
            crop,
            spread: fit::spread(&data),
            sorted: sorted_copy(&data),
            shape,
            data,
        })
        .collect()
}

/// One tensor (or one part of it) a view of the node may be.
struct Source {
    view: usize,
    tensor: usize,
    part: Option<(usize, usize, usize)>,
    bound: f64,
}

/// A fused tensor's parts: along its last axis, in at most 8 equal pieces.
fn parts(shape: &[usize], want: usize) -> Vec<(usize, usize, usize)> {
    let n: usize = shape.iter().product();
    let Some(&last) = shape.last() else {
        return Vec::new();
    };
    if n <= want || !n.is_multiple_of(want) || !(last * want).is_multiple_of(n) {
        return Vec::new();
    }
    let len = last * want / n;
    if len < 2 || last % len != 0 || last / len > 8 {
        return Vec::new();
    }
    let axis = shape.len() - 1;
    (0..last / len).map(|k| (axis, k * len, len)).collect()
}

/// The best evaluated (tensor, layout) of a node, and the best whose values differ.
struct Best {
    source: usize,
    tensor: usize,
    layout: Layout,
    fit: Fit,
    values: Vec<f64>,
    aliases: Vec<usize>,
}

fn pair_node(
    node: &Node,
    position: usize,
    (floor, ceiling): (usize, usize),
    ctx: &Context<'_>,
    closest: &mut [Option<(usize, f64)>],
) -> Result<Pair, Unpaired> {
    if node.data.iter().any(|x| !x.is_finite()) {
        return Err(Unpaired::NonFinite);
    }
    if node.data.len() < 2 || fit::spread(&node.data) == 0.0 {
        return Err(Unpaired::Constant);
    }
    let views = views(node, ctx.symbols);
    // The node as it is against whole tensors first, then against parts of
    // fused ones, then with its padded KV cells dropped: a part of a
    // tensor matching a part of the node is no rival to the whole matching the whole.
    let mut outcome = Err(Unpaired::NoCandidate);
    for stage in [Stage::Whole, Stage::Parts, Stage::Cropped] {
        let sources = sources(node, &views, stage, (floor, ceiling), ctx);
        if sources.is_empty() {
            continue;
        }
        let found = search(&views, &sources, position, ctx, closest);
        if found.is_ok() {
            return found;
        }
        // The first stage that had candidates says why none fits.
        if matches!(outcome, Err(Unpaired::NoCandidate)) {
            outcome = found;
        }
    }
    outcome
}

/// Which hypotheses a round of the search weighs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Whole,
    Parts,
    Cropped,
}

/// The best (tensor, layout) among `sources`, if it is close enough and
/// clearly closer than any other whose values differ.
fn search(
    views: &[View],
    sources: &[Source],
    position: usize,
    ctx: &Context<'_>,
    closest: &mut [Option<(usize, f64)>],
) -> Result<Pair, Unpaired> {
    let head_dim = ctx.symbols.head_dim as usize;
    let mut best: Option<Best> = None;
    let mut runner: Option<(usize, f64)> = None;
    for (s, src) in sources.iter().enumerate() {
        let limit = best
            .as_ref()
            .map_or(f64::INFINITY, |b| b.fit.nmse * ctx.opts.margin);
        if src.bound > limit.max(ctx.opts.near) {
            // Sorted by bound: no later source is closer than this one can be.
            runner = min_candidate(runner, Some((src.tensor, src.bound)));
            break;
        }
        let view = &views[src.view];
        let t = &ctx.tensors[src.tensor];
        let (from_shape, from_data) = match src.part {
            Some((axis, start, len)) => {
                let mut shape = t.shape.clone();
                shape[axis] = len;
                (shape, layout::slice(&t.shape, &t.data, axis, start, len))
            }
            None => (t.shape.clone(), t.data.clone()),
        };
        for candidate in layout::candidates(&from_shape, &view.shape, head_dim) {
            let (_, values) = layout::apply(&candidate.steps, &from_shape, &from_data);
            let f = fit::fit(&view.data, &values, view.spread);
            let entry = &mut closest[src.tensor];
            if entry.is_none_or(|(_, e)| f.nmse < e) {
                *entry = Some((position, f.nmse));
            }
            weigh(&mut best, &mut runner, s, src, candidate, f, values);
        }
    }
    let best = best.ok_or(Unpaired::NoCandidate)?;
    let src = &sources[best.source];
    let tensor = best.tensor;
    let too_far = Unpaired::TooFar {
        tensor,
        nmse: best.fit.nmse,
    };
    if best.fit.nmse > ctx.opts.near {
        return Err(too_far);
    }
    if let Some(second) = runner.filter(|&(_, e)| e < ctx.opts.margin * best.fit.nmse) {
        return Err(Unpaired::Ambiguous {
            best: (tensor, best.fit.nmse),
            second,
        });
    }
    let view = &views[src.view];
    let scale = fit::read_scale(
        &best.fit,
        &view.data,
        &best.values,
        view.spread,
        &ctx.reasoned,
    );
    // A free factor explains more than a fixed one: a pair that needs one
    // without a reason must fit 20 dB closer (RMSNorm's output is nearly a
    // multiple of its input over a short prompt; a factor of 1.01 is a bug
    // to show). A reason is exact to 0.1%, which chance rarely is.
    let (limit, near_limit) = match scale {
        Scale::One | Scale::Reasoned(_) => (ctx.opts.accept, ctx.opts.near),
        Scale::Unexplained(_) => (ctx.opts.accept / 100.0, 0.0),
    };
    if best.fit.nmse > limit.max(near_limit) {
        return Err(Unpaired::TooFar {
            tensor,
            nmse: best.fit.nmse_unit,
        });
    }
    let near = best.fit.nmse > limit;
    Ok(Pair {
        near,
        node: position,
        tensor,
        crop: view.crop,
        part: src.part,
        layout: best.layout,
        fit: best.fit,
        scale,
        runner_up: runner,
        aliases: best.aliases,
    })
}

/// The tensors (and parts) each view of the node may be, closest bound first.
fn sources(
    node: &Node,
    views: &[View],
    stage: Stage,
    (floor, ceiling): (usize, usize),
    ctx: &Context<'_>,
) -> Vec<Source> {
    let mut out = Vec::new();
    for (v, view) in views.iter().enumerate() {
        if (stage == Stage::Cropped) != view.crop.is_some() {
            continue;
        }
        let want = view.data.len();
        for (i, t) in ctx.tensors.iter().enumerate() {
            let in_order = t.late || (floor..=ceiling).contains(&t.order);
            if t.segment != node.segment || !in_order {
                continue;
            }
            if t.data.len() == want && stage != Stage::Parts {
                let bound = fit::lower_bound(&view.sorted, &ctx.sorted[i], view.spread);
                out.push(Source {
                    view: v,
                    tensor: i,
                    part: None,
                    bound,
                });
                continue;
            }
            if stage == Stage::Whole {
                continue;
            }
            for part in parts(&t.shape, want) {
                let (axis, start, len) = part;
                let sorted = sorted_copy(&layout::slice(&t.shape, &t.data, axis, start, len));
                let bound = fit::lower_bound(&view.sorted, &sorted, view.spread);
                out.push(Source {
                    view: v,
                    tensor: i,
                    part: Some(part),
                    bound,
                });
            }
        }
    }
    // Closest first; among equals (aliases), whole tensors before parts, then the one made first.
    out.sort_by(|a, b| {
        a.bound
            .total_cmp(&b.bound)
            .then(a.part.is_some().cmp(&b.part.is_some()))
            .then(
                ctx.tensors[a.tensor]
                    .order
                    .cmp(&ctx.tensors[b.tensor].order),
            )
    });
    out
}

fn min_candidate(a: Option<(usize, f64)>, b: Option<(usize, f64)>) -> Option<(usize, f64)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.1 < x.1 { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Whether two layouts' values are the same tensor: equal to rounding.
fn same_values(a: &[f64], b: &[f64]) -> bool {
    let s = fit::spread(a);
    a.len() == b.len() && s > 0.0 && fit::nmse_at(a, b, 1.0, s) < 1e-20
}

/// Keeps the best evaluated candidate, and the runner-up among those whose values differ from it.
#[allow(clippy::too_many_arguments)]
fn weigh(
    best: &mut Option<Best>,
    runner: &mut Option<(usize, f64)>,
    s: usize,
    src: &Source,
    layout: Layout,
    f: Fit,
    values: Vec<f64>,
) {
    let found = |layout, values| Best {
        source: s,
        tensor: src.tensor,
        layout,
        fit: f,
        values,
        aliases: Vec::new(),
    };
    let Some(b) = best.as_mut() else {
        *best = Some(found(layout, values));
        return;
    };
    if same_values(&b.values, &values) {
        if src.tensor != b.tensor && !b.aliases.contains(&src.tensor) {
            b.aliases.push(src.tensor);
        }
        return;
    }
    if f.nmse < b.fit.nmse {
        *runner = min_candidate(*runner, Some((b.tensor, b.fit.nmse)));
        *b = found(layout, values);
    } else {
        *runner = min_candidate(*runner, Some((src.tensor, f.nmse)));
    }
}
