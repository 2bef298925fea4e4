//! The matcher on a small synthetic pair of graphs whose answers are known:
//! each node is a reference tensor laid out another way, scaled, padded or
//! noisy, or nothing at all.

use llorch_checkpoint_spec::manifest::Symbols;
use llorch_checkpoint_spec::record::Operand;

use super::layout::{apply, Rope, Step};
use super::*;
use crate::precision::Precision;

const N: usize = 5; // tokens
const D: usize = 16; // n_embd
const H: usize = 2; // heads
const HD: usize = 8; // head_dim
const PAD: usize = 32; // KV cells the graph pads to

fn symbols() -> Symbols {
    Symbols {
        n_embd: D as i64,
        n_head: H as i64,
        n_head_kv: H as i64,
        head_dim: HD as i64,
        n_embd_gqa: D as i64,
        n_ff: 48,
        n_vocab: 100,
        n_ctx: 64,
        n_tokens: N as i64,
        n_kv: N as i64,
    }
}

/// Seeded values in (-1, 1).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    fn values(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
    /// `x` with noise of relative size `eps` (NMSE about eps^2 / 3).
    fn blur(&mut self, x: &[f64], eps: f64) -> Vec<f64> {
        x.iter().map(|v| v + eps * self.next()).collect()
    }
}

fn tensor(order: usize, name: &str, segment: Segment, shape: &[usize], data: Vec<f64>) -> Tensor {
    Tensor {
        order,
        name: name.into(),
        segment,
        shape: shape.to_vec(),
        data,
        aliases: Vec::new(),
        late: false,
    }
}

/// A node of ggml ne `ne` whose file data is `data`, computed from `operands` (graph indices).
fn node(
    index: usize,
    name: &str,
    op: &str,
    ne: &[usize],
    data: Vec<f64>,
    operands: &[usize],
) -> Node {
    let mut ne4 = [1i64; 4];
    for (i, &d) in ne.iter().enumerate() {
        ne4[i] = d as i64;
    }
    Node {
        index,
        name: name.into(),
        op: op.into(),
        segment: Segment::Before,
        ne: ne4,
        shape: ne.iter().rev().copied().collect(),
        operands: operands
            .iter()
            .map(|&i| Operand {
                name: format!("n{i}"),
                node: Some(i),
                ..Operand::default()
            })
            .collect(),
        data,
    }
}

/// transformers' halves layout to llama.cpp's pairs, over the last axis in heads of HD.
fn to_pairs(shape: &[usize], data: &[f64]) -> Vec<f64> {
    let rows: usize = shape[..shape.len() - 1].iter().product();
    let last = shape[shape.len() - 1];
    let steps = [
        Step::Reshape(vec![rows, last / HD, 2, HD / 2]),
        Step::Permute(vec![0, 1, 3, 2]),
    ];
    apply(&steps, shape, data).1
}

struct Case {
    nodes: Vec<Node>,
    tensors: Vec<Tensor>,
}

fn case() -> Case {
    let mut rng = Noise(0x9e3779b97f4a7c15);
    let l0 = Segment::Layer(0);
    let embed = rng.values(N * D);
    let norm = rng.values(N * D);
    let q = rng.values(N * H * HD);
    let query = rng.values(H * N * HD); // [1, H, N, HD]
    let probs: Vec<f64> = rng.values(H * N * N).iter().map(|v| v.abs()).collect();
    let residual = rng.values(N * D);
    let post_norm = rng.values(N * D);
    // The layer's output differs from the residual before the FFN by about
    // three times llama.cpp's noise: only graph order tells them apart.
    let out = rng.blur(&residual, 1.7e-3);
    let final_norm = rng.values(N * D);
    let tensors = vec![
        tensor(
            0,
            "model.embed_tokens",
            Segment::Before,
            &[1, N, D],
            embed.clone(),
        ),
        tensor(
            1,
            "model.layers.0.input_layernorm",
            l0,
            &[1, N, D],
            norm.clone(),
        ),
        tensor(
            2,
            "model.layers.0.self_attn.q_proj",
            l0,
            &[1, N, H * HD],
            q.clone(),
        ),
        tensor(3, "attn.0.query", l0, &[1, H, N, HD], query.clone()),
        tensor(4, "attentions.0", l0, &[1, H, N, N], probs.clone()),
        tensor(
            5,
            "model.layers.0.post_attention_layernorm:input",
            l0,
            &[1, N, D],
            residual.clone(),
        ),
        tensor(
            6,
            "model.layers.0.post_attention_layernorm",
            l0,
            &[1, N, D],
            post_norm.clone(),
        ),
        tensor(7, "model.layers.0", l0, &[1, N, D], out.clone()),
        tensor(
            8,
            "model.norm",
            Segment::After,
            &[1, N, D],
            final_norm.clone(),
        ),
        tensor(
            9,
            "model.layers.0.mlp.act_fn",
            l0,
            &[1, N, 3],
            rng.values(N * 3),
        ),
    ];
    // llama.cpp's side: f32 arithmetic, or (for the residual stream) a quantized model's noise.
    let eps = 1e-6;
    let rope = {
        // [1, H, N, HD] -> [N, H, HD], then halves to pairs.
        let steps = [Step::DropBatch, Step::Permute(vec![1, 0, 2])];
        let (shape, tokens_first) = apply(&steps, &[1, H, N, HD], &query);
        to_pairs(&shape, &tokens_first)
    };
    let scaled: Vec<f64> = rope.iter().map(|v| v / (HD as f64).sqrt()).collect();
    let mut padded = vec![0.0; H * N * PAD];
    for row in 0..H * N {
        padded[row * PAD..row * PAD + N].copy_from_slice(&probs[row * N..(row + 1) * N]);
    }
    let mut mask = rng.values(N * PAD);
    mask[3] = f64::NEG_INFINITY;
    let nodes = vec![
        node(
            1,
            "inp_embd",
            "GET_ROWS",
            &[D, N],
            rng.blur(&embed, eps),
            &[],
        ),
        node(2, "attn_norm-0", "MUL", &[D, N], rng.blur(&norm, eps), &[1]),
        node(
            3,
            "Qcur-0",
            "MUL_MAT",
            &[H * HD, N],
            rng.blur(&to_pairs(&[N, H * HD], &q), eps),
            &[2],
        ),
        node(4, "Qcur-0", "ROPE", &[HD, H, N], rng.blur(&rope, eps), &[3]),
        node(
            5,
            "node_5",
            "SCALE",
            &[HD, H, N],
            // The same error relative to its values as the node it scales.
            rng.blur(&scaled, eps / (HD as f64).sqrt()),
            &[4],
        ),
        node(6, "kq_mask-0", "CPY", &[PAD, N], mask, &[]),
        node(
            7,
            "kq_soft_max-0",
            "SOFT_MAX",
            &[PAD, N, H],
            rng.blur(&padded, eps),
            &[5, 6],
        ),
        node(
            8,
            "ffn_inp-0",
            "ADD",
            &[D, N],
            rng.blur(&residual, 1e-3),
            &[7],
        ),
        node(
            9,
            "ffn_norm-0",
            "MUL",
            &[D, N],
            rng.blur(&post_norm, 1e-3),
            &[8],
        ),
        node(10, "norm-0", "RMS_NORM", &[D, N], rng.values(N * D), &[8]),
        node(11, "l_out-0", "ADD", &[D, N], rng.blur(&out, 1e-3), &[8, 9]),
        node(
            12,
            "result_norm",
            "MUL",
            &[D, N],
            rng.blur(&final_norm, eps),
            &[11],
        ),
    ];
    let mut nodes = nodes;
    sides::assign_segments(&mut nodes);
    Case { nodes, tensors }
}

fn paired<'a>(m: &'a Matching, case: &'a Case, index: usize) -> Option<(&'a str, &'a Pair)> {
    let position = case.nodes.iter().position(|n| n.index == index)?;
    let pair = m.pair_of(position)?;
    Some((case.tensors[pair.tensor].name.as_str(), pair))
}

#[test]
fn every_node_finds_its_tensor_in_its_layout_or_says_why_not() {
    let case = case();
    let m = pair_all(
        &case.nodes,
        &case.tensors,
        &symbols(),
        &Options::new(Precision::Full),
    );
    let name = |i| paired(&m, &case, i).map(|(n, _)| n);
    assert_eq!(name(1), Some("model.embed_tokens"));
    assert_eq!(name(2), Some("model.layers.0.input_layernorm"));
    let (q, pair) = paired(&m, &case, 3).unwrap();
    assert_eq!(
        (q, pair.layout.rope),
        ("model.layers.0.self_attn.q_proj", Rope::Pairs)
    );
    let (query, pair) = paired(&m, &case, 4).unwrap();
    assert_eq!(
        (query, pair.layout.rope, &pair.scale),
        ("attn.0.query", Rope::Pairs, &fit::Scale::One)
    );
    // ggml's Q pre-scaled by 1/sqrt(head_dim): the same tensor, with its reason.
    let (scaled, pair) = paired(&m, &case, 5).unwrap();
    assert_eq!(scaled, "attn.0.query");
    assert!(
        matches!(&pair.scale, fit::Scale::Reasoned(r) if r.why == "1/sqrt(head_dim)"),
        "{:?}",
        pair.scale
    );
    // The scores over 32 padded cells: the first 5 are the probabilities.
    let (scores, pair) = paired(&m, &case, 7).unwrap();
    assert_eq!((scores, pair.crop), ("attentions.0", Some((2, N))));
    // Graph order parts the residual stream before and after the FFN.
    assert_eq!(
        name(8),
        Some("model.layers.0.post_attention_layernorm:input")
    );
    assert_eq!(name(9), Some("model.layers.0.post_attention_layernorm"));
    assert_eq!(name(11), Some("model.layers.0"));
    assert_eq!(name(12), Some("model.norm"));
    let why = |i: usize| {
        let position = case.nodes.iter().position(|n| n.index == i).unwrap();
        m.unpaired
            .iter()
            .find(|(p, _)| *p == position)
            .map(|(_, w)| w.clone())
    };
    assert_eq!(why(6), Some(Unpaired::NonFinite));
    assert!(
        matches!(why(10), Some(Unpaired::TooFar { .. })),
        "{:?}",
        why(10)
    );
    let lonely: Vec<&str> = m
        .unpaired_tensors
        .iter()
        .map(|(t, _)| case.tensors[*t].name.as_str())
        .collect();
    assert_eq!(lonely, ["model.layers.0.mlp.act_fn"]);
    // Every pair is 10 dB clear of its runner-up.
    assert!(m.pairs.iter().all(|p| p.margin_db() >= 10.0));
}

#[test]
fn without_graph_order_near_identical_neighbours_stay_unpaired() {
    let mut case = case();
    for n in &mut case.nodes {
        n.operands.clear();
    }
    let m = pair_all(
        &case.nodes,
        &case.tensors,
        &symbols(),
        &Options::new(Precision::Full),
    );
    let position = case.nodes.iter().position(|n| n.index == 8).unwrap();
    let why = m
        .unpaired
        .iter()
        .find(|(p, _)| *p == position)
        .map(|(_, w)| w.clone());
    let Some(Unpaired::Ambiguous { best, second }) = why else {
        panic!("ffn_inp-0 should be ambiguous without its edges: {why:?}");
    };
    let names = [best.0, second.0].map(|t| case.tensors[t].name.as_str());
    assert!(
        names.contains(&"model.layers.0.post_attention_layernorm:input")
            && names.contains(&"model.layers.0")
    );
}

#[test]
fn a_factor_without_a_reason_is_no_pair_unless_it_fits_far_closer() {
    let mut case = case();
    // A bug: the layer's output 1.01 times what it should be, exactly otherwise.
    let out = case.tensors[7].data.iter().map(|v| v * 1.01).collect();
    case.nodes[10].data = out;
    let m = pair_all(
        &case.nodes,
        &case.tensors,
        &symbols(),
        &Options::new(Precision::Full),
    );
    let (name, pair) = paired(&m, &case, 11).unwrap();
    assert_eq!(name, "model.layers.0");
    assert!(
        matches!(pair.scale, fit::Scale::Unexplained(s) if (s - 1.01).abs() < 1e-9),
        "{:?}",
        pair.scale
    );
    assert_eq!(
        pair.scale.factor(),
        1.0,
        "judged at 1: the factor is the divergence"
    );
}

#[test]
fn a_diverging_node_pairs_as_a_near_miss_instead_of_going_missing() {
    let mut case = case();
    // result_norm computed a little wrong: NMSE about 7e-3, beyond the match limit of f32 weights.
    let mut rng = Noise(7);
    case.nodes[11].data = rng.blur(&case.tensors[8].data, 0.15);
    let m = pair_all(
        &case.nodes,
        &case.tensors,
        &symbols(),
        &Options::new(Precision::Full),
    );
    let (name, pair) = paired(&m, &case, 12).unwrap();
    assert_eq!(name, "model.norm");
    assert!(
        pair.near && pair.fit.nmse > 1e-3 && pair.fit.nmse < 0.1,
        "{pair:?}"
    );
    assert!(m.pairs.iter().filter(|p| p.near).count() == 1);
}

#[test]
fn two_nodes_torn_between_the_same_two_tensors_take_them_in_graph_order() {
    let mut rng = Noise(11);
    let l0 = Segment::Layer(0);
    let k = rng.values(N * D);
    // After rope, nearly the same: a global layer's rope turns little over a short prompt.
    let rotated = rng.blur(&k, 2e-3);
    let tensors = vec![
        tensor(
            0,
            "model.layers.0.self_attn.k_norm",
            l0,
            &[1, N, D],
            k.clone(),
        ),
        tensor(1, "attn.0.key", l0, &[1, N, D], rotated.clone()),
    ];
    let mut nodes = vec![
        node(1, "Kcur_normed-0", "MUL", &[D, N], rng.blur(&k, 1e-3), &[]),
        node(2, "Kcur-0", "ROPE", &[D, N], rng.blur(&rotated, 1e-3), &[1]),
    ];
    sides::assign_segments(&mut nodes);
    let m = pair_all(&nodes, &tensors, &symbols(), &Options::new(Precision::Full));
    let names: Vec<Option<&str>> = (0..2)
        .map(|i| m.pair_of(i).map(|p| tensors[p.tensor].name.as_str()))
        .collect();
    assert_eq!(
        names,
        [Some("model.layers.0.self_attn.k_norm"), Some("attn.0.key")]
    );
    // Without the edge between them, neither can be told.
    nodes[1].operands.clear();
    let m = pair_all(&nodes, &tensors, &symbols(), &Options::new(Precision::Full));
    assert!(m.pairs.is_empty(), "{:?}", m.unpaired);
}

#[test]
fn a_node_the_extractor_cut_to_its_filled_cells_pairs_as_cropped() {
    let mut case = case();
    // The scores as the extractor writes a padded node without --keep-padding:
    // ne still says 32 cells, the file holds the 5 filled ones.
    let scores = case.nodes.iter_mut().find(|n| n.index == 7).unwrap();
    scores.data = super::layout::slice(&scores.shape, &scores.data, 2, 0, N);
    scores.shape[2] = N;
    assert_eq!(scores.cells_cut(), Some(2));
    let m = pair_all(
        &case.nodes,
        &case.tensors,
        &symbols(),
        &Options::new(Precision::Full),
    );
    let (name, pair) = paired(&m, &case, 7).unwrap();
    assert_eq!((name, pair.crop), ("attentions.0", Some((2, N))));
    // A node written whole is not taken for a cut one.
    assert_eq!(case.nodes[0].cells_cut(), None);
}
