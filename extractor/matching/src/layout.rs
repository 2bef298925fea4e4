//! Layouts: the ways a reference tensor's elements can be laid out as a
//! node's. Two implementations of one model hold the same values in other
//! orders: heads split or merged, axes transposed, a leading batch of 1,
//! one part of a fused QKV product, and llama.cpp's converter's permutation
//! of the Q and K rows (so that ggml's rope rotates adjacent pairs, where
//! transformers rotates halves). A layout is a short list of [`Step`]s on
//! the reference tensor, the same ops a manifest's `reference:` writes.

use std::collections::BTreeSet;

/// One step on a row-major tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// Remove a leading dimension of 1.
    DropBatch,
    /// Keep `len` indices of `axis` from `start`.
    Slice {
        axis: usize,
        start: usize,
        len: usize,
    },
    Reshape(Vec<usize>),
    Permute(Vec<usize>),
}

/// What rope permutation a layout applies to a head_dim-sized part of an axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rope {
    None,
    /// Halves to pairs: llama.cpp's Q/K rows from transformers' (the converter's permutation).
    Pairs,
    /// Pairs to halves: its inverse.
    Halves,
}

/// A candidate layout: the steps, and what the steps mean for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub steps: Vec<Step>,
    pub rope: Rope,
    /// Where the rope's two parts (2 and head_dim/2) start in the first reshape's dims.
    pub rope_at: Option<usize>,
}

/// Applies `steps` to a row-major tensor.
pub fn apply(steps: &[Step], shape: &[usize], data: &[f64]) -> (Vec<usize>, Vec<f64>) {
    let mut shape = shape.to_vec();
    let mut data = data.to_vec();
    for step in steps {
        match step {
            Step::DropBatch => {
                assert_eq!(shape.first(), Some(&1));
                shape.remove(0);
            }
            Step::Reshape(to) => {
                assert_eq!(
                    to.iter().product::<usize>(),
                    shape.iter().product::<usize>()
                );
                shape = to.clone();
            }
            Step::Slice { axis, start, len } => {
                data = slice(&shape, &data, *axis, *start, *len);
                shape[*axis] = *len;
            }
            Step::Permute(axes) => {
                data = permute(&shape, &data, axes);
                shape = axes.iter().map(|&a| shape[a]).collect();
            }
        }
    }
    (shape, data)
}

/// `data` (row-major, `shape`) with only `len` indices of `axis` from `start`.
pub fn slice(shape: &[usize], data: &[f64], axis: usize, start: usize, len: usize) -> Vec<f64> {
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let base = (o * shape[axis] + start) * inner;
        out.extend_from_slice(&data[base..base + len * inner]);
    }
    out
}

/// `data` with its axes in the order `axes` (out axis i is in axis `axes[i]`).
pub fn permute(shape: &[usize], data: &[f64], axes: &[usize]) -> Vec<f64> {
    let n = shape.len();
    let mut strides = vec![1usize; n];
    for i in (0..n.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let out_shape: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
    let out_strides: Vec<usize> = axes.iter().map(|&a| strides[a]).collect();
    let mut out = Vec::with_capacity(data.len());
    let mut index = vec![0usize; n];
    let mut at = 0usize;
    for _ in 0..data.len() {
        out.push(data[at]);
        // Odometer over the output's indices, innermost fastest.
        for d in (0..n).rev() {
            index[d] += 1;
            at += out_strides[d];
            if index[d] < out_shape[d] {
                break;
            }
            at -= out_strides[d] * out_shape[d];
            index[d] = 0;
        }
    }
    out
}

/// At most this many layouts per pair of shapes: far more than real graphs
/// need (one or two), few enough that a wide tensor stays cheap.
const MAX_LAYOUTS: usize = 256;

/// The layouts that take a tensor of shape `from` to shape `to` (the same
/// number of elements), simplest first: an optional leading 1 dropped, each
/// dimension split into factors, the factors permuted and grouped into
/// `to`'s dimensions; each also with the rope permutation on one
/// `head_dim`-divisible group, both ways.
pub fn candidates(from: &[usize], to: &[usize], head_dim: usize) -> Vec<Layout> {
    let mut prefix = Vec::new();
    let mut r: &[usize] = from;
    if r.len() > 1 && r[0] == 1 {
        prefix.push(Step::DropBatch);
        r = &r[1..];
    }
    let actual = r.to_vec();
    let r: Vec<usize> = r.iter().copied().filter(|&d| d != 1).collect();
    let l: Vec<usize> = to.iter().copied().filter(|&d| d != 1).collect();
    let atoms = atom_sizes(&r, &l);
    let mut out: Vec<Layout> = Vec::new();
    let mut seen = BTreeSet::new();
    for (a, b) in refinements(&r, &l, &atoms) {
        for perm in bijections(&a, &b) {
            let mut variants = vec![(a.clone(), perm.clone(), Rope::None, None)];
            for (j, &i) in perm.iter().enumerate() {
                let x = a[i];
                if head_dim >= 2 && head_dim.is_multiple_of(2) && x % head_dim == 0 {
                    variants.push(rope_split(&a, &perm, j, head_dim, Rope::Pairs));
                    variants.push(rope_split(&a, &perm, j, head_dim, Rope::Halves));
                }
            }
            for (sizes, perm, rope, rope_at) in variants {
                let steps = simplify(&prefix, &actual, sizes, perm, to);
                if seen.insert(steps.clone()) {
                    out.push(Layout {
                        steps,
                        rope,
                        rope_at,
                    });
                }
                if out.len() >= MAX_LAYOUTS {
                    return out;
                }
            }
        }
    }
    out
}

/// The sizes a dimension may split into: both sides' dimensions, and the
/// quotients of one by another (a dimension split on one side and merged
/// with another on the other).
fn atom_sizes(r: &[usize], l: &[usize]) -> Vec<usize> {
    let mut sizes: BTreeSet<usize> = r.iter().chain(l).copied().collect();
    let dims: Vec<usize> = sizes.iter().copied().collect();
    for &x in &dims {
        for &y in &dims {
            if y > 1 && x > y && x % y == 0 {
                sizes.insert(x / y);
            }
        }
    }
    sizes.remove(&1);
    sizes.into_iter().collect()
}

/// Ordered factorizations of `d` into at most three of `sizes`.
fn factorizations(d: usize, sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![d]];
    for &x in sizes.iter().filter(|&&x| x < d && d.is_multiple_of(x)) {
        let rest = d / x;
        if sizes.contains(&rest) {
            out.push(vec![x, rest]);
        }
        for &y in sizes
            .iter()
            .filter(|&&y| y < rest && rest.is_multiple_of(y))
        {
            if sizes.contains(&(rest / y)) {
                out.push(vec![x, y, rest / y]);
            }
        }
    }
    out
}

/// Pairs of atom lists (the reference's dimensions split, the node's
/// dimensions split) holding the same sizes.
fn refinements(r: &[usize], l: &[usize], sizes: &[usize]) -> Vec<(Vec<usize>, Vec<usize>)> {
    let sides = |dims: &[usize]| -> Vec<Vec<usize>> {
        let mut lists = vec![Vec::new()];
        for &d in dims {
            let mut next = Vec::new();
            for list in &lists {
                for f in factorizations(d, sizes) {
                    let mut grown: Vec<usize> = list.clone();
                    grown.extend(f);
                    next.push(grown);
                }
            }
            next.truncate(MAX_LAYOUTS);
            lists = next;
        }
        lists
    };
    let sorted = |v: &[usize]| {
        let mut s = v.to_vec();
        s.sort_unstable();
        s
    };
    let (ra, lb) = (sides(r), sides(l));
    // Fewest atoms first: the plainest layouts are tried, and deduplicated, first.
    let mut pairs = Vec::new();
    for a in &ra {
        for b in lb
            .iter()
            .filter(|b| b.len() == a.len() && sorted(b) == sorted(a))
        {
            pairs.push((a.clone(), b.clone()));
        }
    }
    pairs.sort_by_key(|(a, _)| a.len());
    pairs
}

/// Every assignment of `a`'s atoms to `b`'s positions with the same size:
/// `perm[j]` is the atom of `a` at position `j` of `b`.
fn bijections(a: &[usize], b: &[usize]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut perm = Vec::with_capacity(b.len());
    let mut used = vec![false; a.len()];
    fn go(
        a: &[usize],
        b: &[usize],
        perm: &mut Vec<usize>,
        used: &mut [bool],
        out: &mut Vec<Vec<usize>>,
    ) {
        if out.len() >= MAX_LAYOUTS {
            return;
        }
        let j = perm.len();
        if j == b.len() {
            out.push(perm.clone());
            return;
        }
        for i in 0..a.len() {
            if !used[i] && a[i] == b[j] {
                used[i] = true;
                perm.push(i);
                go(a, b, perm, used, out);
                perm.pop();
                used[i] = false;
            }
        }
    }
    go(a, b, &mut perm, &mut used, &mut out);
    // The identity first: the plainest reading of equal sizes.
    out.sort_by_key(|p| p.iter().enumerate().filter(|(j, &i)| *j != i).count());
    out
}

/// Atom `perm[j]` of `a` split into [x/head_dim, 2, head_dim/2] (`Pairs`) or
/// [x/head_dim, head_dim/2, 2] (`Halves`), without the first part where it
/// is 1, and its last two parts swapped at `j`.
fn rope_split(
    a: &[usize],
    perm: &[usize],
    j: usize,
    head_dim: usize,
    rope: Rope,
) -> (Vec<usize>, Vec<usize>, Rope, Option<usize>) {
    let i = perm[j];
    let heads = a[i] / head_dim;
    let pair = match rope {
        Rope::Pairs => [2, head_dim / 2],
        _ => [head_dim / 2, 2],
    };
    let parts: Vec<usize> = [heads].into_iter().filter(|&h| h > 1).chain(pair).collect();
    let extra = parts.len() - 1;
    let mut sizes = a[..i].to_vec();
    sizes.extend(&parts);
    sizes.extend(&a[i + 1..]);
    // Atom indices after the split: those past i move by the parts added.
    let moved = |k: usize| if k > i { k + extra } else { k };
    let mut new_perm = Vec::with_capacity(perm.len() + extra);
    for (jj, &k) in perm.iter().enumerate() {
        if jj == j {
            new_perm.extend((i..i + extra - 1).chain([i + extra, i + extra - 1]));
        } else {
            new_perm.push(moved(k));
        }
    }
    (sizes, new_perm, rope, Some(i + extra - 1))
}

/// The steps of one layout, without those that change nothing; `r` is
/// the tensor's shape after `prefix`.
fn simplify(
    prefix: &[Step],
    r: &[usize],
    sizes: Vec<usize>,
    perm: Vec<usize>,
    to: &[usize],
) -> Vec<Step> {
    let mut steps = prefix.to_vec();
    let mut shape: Vec<usize> = r.to_vec();
    let identity = perm.iter().enumerate().all(|(j, &i)| j == i);
    if !identity {
        if sizes != r {
            steps.push(Step::Reshape(sizes.clone()));
        }
        shape = perm.iter().map(|&i| sizes[i]).collect();
        steps.push(Step::Permute(perm));
    }
    if shape != to {
        steps.push(Step::Reshape(to.to_vec()));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting(shape: &[usize]) -> Vec<f64> {
        (0..shape.iter().product::<usize>())
            .map(|i| i as f64)
            .collect()
    }

    #[test]
    fn permute_and_slice_move_elements_as_numpy_does() {
        // [[0 1 2] [3 4 5]] transposed: [[0 3] [1 4] [2 5]].
        assert_eq!(
            permute(&[2, 3], &counting(&[2, 3]), &[1, 0]),
            [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        // [2, 3, 2]: axes (2, 0, 1).
        let p = permute(&[2, 3, 2], &counting(&[2, 3, 2]), &[2, 0, 1]);
        assert_eq!(
            p,
            [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 1.0, 3.0, 5.0, 7.0, 9.0, 11.0]
        );
        assert_eq!(
            slice(&[2, 4], &counting(&[2, 4]), 1, 1, 2),
            [1.0, 2.0, 5.0, 6.0]
        );
    }

    #[test]
    fn heads_split_and_transposed_are_among_the_candidates() {
        // transformers' query [1, heads 4, tokens 3, head_dim 8] as llama.cpp's [tokens, heads, head_dim].
        let layouts = candidates(&[1, 4, 3, 8], &[3, 4, 8], 8);
        let want = vec![Step::DropBatch, Step::Permute(vec![1, 0, 2])];
        assert!(
            layouts.iter().any(|l| l.steps == want),
            "{:?}",
            layouts.iter().map(|l| &l.steps).collect::<Vec<_>>()
        );
        // Merged heads [3, 32] against split ones [4, 3, 8] (kqv: heads outermost).
        let layouts = candidates(&[1, 3, 32], &[4, 3, 8], 8);
        let want = vec![
            Step::DropBatch,
            Step::Reshape(vec![3, 4, 8]),
            Step::Permute(vec![1, 0, 2]),
        ];
        assert!(layouts.iter().any(|l| l.steps == want));
    }

    #[test]
    fn the_rope_permutation_and_its_inverse_undo_each_other() {
        // One token, two heads of head_dim 6: halves (0 1 2 | 3 4 5) to pairs (0 3 1 4 2 5).
        let layouts = candidates(&[1, 12], &[1, 12], 6);
        let pairs = layouts.iter().find(|l| l.rope == Rope::Pairs).unwrap();
        let (_, permuted) = apply(&pairs.steps, &[1, 12], &counting(&[1, 12]));
        assert_eq!(
            permuted,
            [0.0, 3.0, 1.0, 4.0, 2.0, 5.0, 6.0, 9.0, 7.0, 10.0, 8.0, 11.0]
        );
        let halves = layouts.iter().find(|l| l.rope == Rope::Halves).unwrap();
        let (_, back) = apply(&halves.steps, &[1, 12], &permuted);
        assert_eq!(back, counting(&[12]));
    }
}
