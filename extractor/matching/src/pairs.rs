//! What the matcher decides and reports: when a pair is accepted, a pair,
//! why a node has none, and everything it found.

use super::fit::{Fit, Scale};
use super::layout::{Layout, Step};
use llorch_checkpoint_spec::manifest::{Dim, Op};

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

    /// The reference tensor (`shape`, `data`) laid out as the node: the
    /// steps, then the scale with a reason (one without is not applied: it
    /// is the error the verdict shows). `single`: the scale multiplied in
    /// f32, as the f32 reference computes it.
    pub fn lay_out(&self, shape: &[usize], data: &[f64], single: bool) -> (Vec<usize>, Vec<f64>) {
        let (shape, mut data) = super::layout::apply(&self.steps(), shape, data);
        let by = self.scale.factor();
        if by != 1.0 {
            match single {
                true => data
                    .iter_mut()
                    .for_each(|v| *v = f64::from(*v as f32 * by as f32)),
                false => data.iter_mut().for_each(|v| *v *= by),
            }
        }
        (shape, data)
    }

    /// What [`Pair::lay_out`] does, as a manifest's ops in numbers.
    pub fn ops(&self) -> Vec<Op> {
        let fixed = |d: usize| Dim::Fixed(d as i64);
        let mut ops: Vec<Op> = self
            .steps()
            .into_iter()
            .map(|step| match step {
                Step::DropBatch => Op::DropBatch,
                Step::Slice { axis, start, len } => Op::Slice {
                    axis: axis as i64,
                    start: fixed(start),
                    len: fixed(len),
                },
                Step::Reshape(dims) => Op::Reshape(dims.into_iter().map(fixed).collect()),
                Step::Permute(axes) => Op::Permute(axes.into_iter().map(|a| a as i64).collect()),
            })
            .collect();
        if let Scale::Reasoned(r) = &self.scale {
            ops.push(Op::Scale(r.value));
        }
        ops
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
