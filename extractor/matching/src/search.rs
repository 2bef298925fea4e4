//! One node's search: the views of it, the tensors (and parts) it may be,
//! closest bound first, every layout of each, and the verdict: a pair, or
//! why there is none.

use llorch_checkpoint_spec::manifest::Symbols;

use super::fit::{self, Fit, Reasoned, Scale};
use super::layout::{self, Layout};
use super::pairs::{Options, Pair, Unpaired};
use super::sides::{Node, Tensor};

pub(super) fn sorted_copy(data: &[f64]) -> Vec<f64> {
    let mut v = data.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// What every node's search reads.
pub(super) struct Context<'a> {
    pub(super) tensors: &'a [Tensor],
    pub(super) sorted: &'a [Vec<f64>],
    pub(super) symbols: &'a Symbols,
    pub(super) reasoned: Vec<Reasoned>,
    pub(super) opts: &'a Options,
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
    if let Some(axis) = node.cells_cut() {
        // The extractor wrote only the filled cells: the node is cropped already.
        out[0].0 = Some((axis, node.shape[axis]));
        return out.into_iter().map(View::new).collect();
    }
    for (axis, &d) in node.shape.iter().enumerate() {
        if d > n_kv && d <= n_ctx && n_kv > 0 {
            let data = layout::slice(&node.shape, &node.data, axis, 0, n_kv);
            let mut shape = node.shape.clone();
            shape[axis] = n_kv;
            out.push((Some((axis, n_kv)), shape, data));
        }
    }
    out.into_iter().map(View::new).collect()
}

impl View {
    fn new((crop, shape, data): (Option<(usize, usize)>, Vec<usize>, Vec<f64>)) -> View {
        View {
            crop,
            spread: fit::spread(&data),
            sorted: sorted_copy(&data),
            shape,
            data,
        }
    }
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

pub(super) fn pair_node(
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
    let (best, runner) = closest_fit(views, sources, position, ctx, closest);
    judge(
        best.ok_or(Unpaired::NoCandidate)?,
        runner,
        views,
        sources,
        position,
        ctx,
    )
}

/// Every source in every layout it may take, fitted to its view, closest
/// bound first until none can beat the best: the best, and the runner-up.
/// `closest` keeps each tensor's closest node.
fn closest_fit(
    views: &[View],
    sources: &[Source],
    position: usize,
    ctx: &Context<'_>,
    closest: &mut [Option<(usize, f64)>],
) -> (Option<Best>, Option<(usize, f64)>) {
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
    (best, runner)
}

/// The pair `best` makes, or why it makes none: too far, as close as
/// another (`runner`), or a free scale with no reason and too little fit.
fn judge(
    best: Best,
    runner: Option<(usize, f64)>,
    views: &[View],
    sources: &[Source],
    position: usize,
    ctx: &Context<'_>,
) -> Result<Pair, Unpaired> {
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
