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
//!
//! - [`sides`]: the two sides read from disk; [`layout`] and [`fit`]: how a
//!   tensor's values become a node's; [`precision`]: the tolerance a pair is
//!   held to, from the weights' type.
//! - [`draft`] and [`manifest_text`]: the pairs written as a manifest a person
//!   reviews; [`against`]: a hand-written manifest checked against the pairs.
//!
//! It depends on the spec crate alone; the comparison crate runs it.

use std::collections::HashMap;

use llorch_checkpoint_spec::manifest::Symbols;

pub mod against;
pub mod draft;
pub mod fit;
pub mod layout;
pub mod manifest_text;
mod order;
mod pairs;
pub mod precision;
mod search;
pub mod sides;
#[cfg(test)]
mod tests;

pub(crate) use order::moves_data;
use order::{
    drop_far_rivals, drop_intermediates, drop_out_of_order, rounds, untangle, Edges, State,
};
pub use pairs::{Matching, Options, Pair, Unpaired};
use search::{sorted_copy, Context};
pub use sides::{read_nodes, read_tensors, Node, Segment, Tensor};

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
