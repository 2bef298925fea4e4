//! The manifest as a specification: what it accepts, expands and refuses.

use super::*;

const GOOD: &str = "architecture: gpt2\nlayers: [0, 1]\ncheckpoints:\n  - id: ln1\n    tensor: attn_norm-{layer}\n    shape: [n_embd, n_tokens]\n    file: ln1_l{layer}\n";

/// GPT-2 small's symbols for a 2-token prompt pass (the record example's).
fn gpt2_symbols() -> Symbols {
    crate::record::example().symbols
}

/// `text` made a whole manifest (the architecture goes last, so line numbers stay).
fn parse(text: &str) -> Result<Manifest> {
    Manifest::parse(&format!("{text}architecture: gpt2\n"))
}

fn err(text: &str) -> String {
    format!("{:#}", parse(text).unwrap_err())
}

#[test]
fn expands_layers_and_resolves_shapes() {
    let m = Manifest::parse(GOOD).unwrap();
    assert_eq!(m.architecture, "gpt2");
    let names: Vec<_> = m
        .checkpoints
        .iter()
        .map(|c| (c.tensor.as_str(), c.file_stem.as_str()))
        .collect();
    assert_eq!(
        names,
        [("attn_norm-0", "ln1_l0"), ("attn_norm-1", "ln1_l1")]
    );
    let s = gpt2_symbols();
    let r = m.checkpoints[0].resolve(&s).unwrap();
    assert_eq!(r.file_shape(), [2, 768]);
    assert_eq!(r.keep([768, 2, 1, 1]), Ok([768, 2, 1, 1]));
    assert_eq!(
        r.keep([768, 3, 1, 1]),
        Err("expected ne [768, 2], got [768, 3]".to_string())
    );
}

#[test]
fn n_kv_dims_keep_only_the_filled_cells() {
    let m = parse("checkpoints:\n  - {id: k, op: VIEW, operand: cache_k_l0, shape: [head_dim, n_head, n_kv, 1], file: k}\n").unwrap();
    let s = gpt2_symbols();
    let r = m.checkpoints[0].resolve(&s).unwrap();
    assert_eq!(
        r.keep([64, 12, 256, 1]),
        Ok([64, 12, 2, 1]),
        "padded cells are dropped"
    );
    assert!(
        r.keep([64, 12, 1, 1]).is_err(),
        "fewer cells than tokens is a mismatch"
    );
    assert_eq!(r.file_shape(), [1, 2, 12, 64]);
}

#[test]
fn malformed_yaml_reports_its_line() {
    let msg = format!(
        "{:#}",
        Manifest::parse("checkpoints:\n  - id: a\n    shape: [n_embd\n    file: x\n").unwrap_err()
    );
    assert!(msg.contains("line 4"), "{msg}");
}

#[test]
fn unknown_keys_are_refused() {
    let msg = err("checkpoints:\n  - {id: a, tensor: t, shape: [1], file: f, colour: red}\n");
    assert!(
        msg.contains("unknown field `colour`") && msg.contains("line 2"),
        "{msg}"
    );
}

#[test]
fn compare_keys_are_accepted_and_checked() {
    let ok = "checkpoints:\n  - {id: a, tensor: t, shape: [1], file: f, reference: {capture: 'h.{layer}.ln_1', ops: [drop_batch]}, tolerance: {atol: 1.0e-5, rtol: 0, nmse: 1.0e-9}}\n";
    assert_eq!(parse(ok).unwrap().checkpoints.len(), 1);
    let msg =
        err("checkpoints:\n  - {id: a, tensor: t, shape: [1], file: f, reference: {ops: []}}\n");
    assert!(
        msg.contains("checkpoint `a`: `reference` needs `capture`"),
        "{msg}"
    );
    let msg =
        err("checkpoints:\n  - {id: a, tensor: t, shape: [1], file: f, tolerance: {atol: -1}}\n");
    assert!(
        msg.contains("`tolerance` takes atol, atol_of_max, rtol and nmse"),
        "{msg}"
    );
    let msg = err("checkpoints:\n  - {id: a, tensor: t, shape: [1], file: f, reference: {capture: x, op: []}}\n");
    assert!(msg.contains("unknown key"), "{msg}");
}

#[test]
fn unknown_symbols_are_refused_with_their_checkpoint() {
    let msg = err("checkpoints:\n  - id: q\n    tensor: Qcur-0\n    shape: [head_dim, n_heads]\n    file: q\n");
    assert!(
        msg.contains("line 2: checkpoint `q`: unknown symbol `n_heads`"),
        "{msg}"
    );
}

#[test]
fn a_file_name_without_layer_serves_one_layer_and_many_but_not_two_entries() {
    let stems = |text: &str| -> Vec<String> {
        parse(text)
            .unwrap()
            .checkpoints
            .iter()
            .map(|c| c.file_stem.clone())
            .collect()
    };
    let entry = "checkpoints:\n  - {id: a, tensor: 'x-{layer}', shape: [1], file: same}\n";
    assert_eq!(stems(&format!("layers: [3]\n{entry}")), ["same"]);
    assert_eq!(
        stems(&format!("layers: [0, 1]\n{entry}")),
        ["same_l0", "same_l1"]
    );
    let many = Manifest::parse_with_layers(
        &format!("architecture: gpt2\nlayers: [0]\n{entry}"),
        Some(&[0, 11]),
    )
    .unwrap();
    assert_eq!(many.checkpoints[1].file_stem, "same_l11");
    let msg = err("checkpoints:\n  - {id: a, tensor: x, shape: [1], file: same}\n  - {id: b, tensor: y, shape: [1], file: same}\n");
    assert!(
        msg.contains("file `same` is written by another checkpoint"),
        "{msg}"
    );
}

#[test]
fn file_names_cannot_escape_the_output_directory() {
    for bad in ["../evil", "sub/dir", "/abs", ".hidden", "a..b"] {
        let msg = err(&format!(
            "checkpoints:\n  - {{id: a, tensor: t, shape: [1], file: '{bad}'}}\n"
        ));
        assert!(
            msg.contains("plain name inside the output directory"),
            "{bad}: {msg}"
        );
    }
}

#[test]
fn a_manifest_names_its_architecture() {
    let msg = format!(
        "{:#}",
        Manifest::parse("checkpoints:\n  - {id: a, tensor: t, shape: [1], file: f}\n").unwrap_err()
    );
    assert!(
        msg.contains("no `architecture:`") && msg.contains("architecture: gpt2"),
        "{msg}"
    );
}

#[test]
fn references_expand_in_graph_order_and_resolve_symbols() {
    let text = r#"layers: [0, 1]
checkpoints:
  - id: a
    tensor: 'x-{layer}'
    shape: [n_embd]
    file: 'a_l{layer}'
    reference: {capture: 'h.{layer}.attn.c_attn', ops: [drop_batch, {slice: {axis: -1, start: 2*n_embd, len: n_embd}}, {reshape: [n_tokens, n_head, head_dim]}]}
    tolerance: {atol: 1.0e-5, rtol: 1.0e-4, nmse: 1.0e-8}
  - id: b
    tensor: 'y-{layer}'
    shape: [n_embd]
    file: 'b_l{layer}'
    reference: {capture: 'present.{layer}.value', ops: [{permute: [0, 3, 1, 2]}]}
"#;
    let m = parse(text).unwrap();
    let order: Vec<_> = m
        .graph_order()
        .iter()
        .map(|c| {
            let capture = c.reference.as_ref().unwrap().capture.clone();
            (c.key(), c.file_stem.clone(), capture)
        })
        .collect();
    let expected = [
        ("a@0", "a_l0", "h.0.attn.c_attn"),
        ("b@0", "b_l0", "present.0.value"),
        ("a@1", "a_l1", "h.1.attn.c_attn"),
        ("b@1", "b_l1", "present.1.value"),
    ]
    .map(|(k, f, c)| (k.to_string(), f.to_string(), c.to_string()));
    assert_eq!(order, expected);
    let (a, b) = (m.graph_order()[0], m.graph_order()[1]);
    assert_eq!(
        a.tolerance,
        Tolerance {
            atol: 1e-5,
            atol_of_max: 0.0,
            rtol: 1e-4,
            nmse: 1e-8
        }
    );
    assert_eq!(b.tolerance, Tolerance::DEFAULT);
    let s = gpt2_symbols();
    let ops = &a.reference.as_ref().unwrap().ops;
    assert_eq!(ops[0], Op::DropBatch);
    let Op::Slice { axis, start, len } = &ops[1] else {
        panic!("{ops:?}")
    };
    assert_eq!(
        (*axis, start.resolve(&s).unwrap(), len.resolve(&s).unwrap()),
        (-1, 1536, 768)
    );
    let unknown = Dim::Expr("n_heads".into()).resolve(&s).unwrap_err();
    assert!(
        unknown.to_string().contains("unknown symbol `n_heads`"),
        "{unknown}"
    );
    let msg = err("checkpoints:\n  - {id: c, tensor: t, shape: [1], file: f, reference: {capture: x, ops: [{transpose: [1, 0]}]}}\n");
    assert!(
        msg.contains("checkpoint `c`: `reference`") && msg.contains("transpose"),
        "{msg}"
    );
}

#[test]
fn layers_override_the_manifests_and_pick_among_an_entrys_own() {
    let text = "architecture: gpt2\nlayers: [0]\ncheckpoints:\n  - {id: a, tensor: 'x-{layer}', shape: [1], file: 'a{layer}'}\n  - {id: b, tensor: 'y-{layer}', shape: [1], file: 'b{layer}', layers: [3]}\n  - {id: c, tensor: 'logits', shape: [1], file: c}\n";
    let keys = |m: &Manifest| m.checkpoints.iter().map(|c| c.key()).collect::<Vec<_>>();
    assert_eq!(keys(&Manifest::parse(text).unwrap()), ["a@0", "b@3", "c"]);
    let all = "all".parse::<Layers>().unwrap().resolve(2).unwrap();
    assert_eq!(all, [0, 1]);
    // An entry's own layers are where its node is: --layers picks among them.
    let m = Manifest::parse_with_layers(text, Some(&all)).unwrap();
    assert_eq!(keys(&m), ["a@0", "a@1", "c"]);
    let m = Manifest::parse_with_layers(text, Some(&[1, 3])).unwrap();
    assert_eq!(keys(&m), ["a@1", "a@3", "b@3", "c"]);
    // Entries without {layer} come before the layers where listed before them, after otherwise.
    let order: Vec<String> = m.graph_order().iter().map(|c| c.key()).collect();
    assert_eq!(order, ["a@1", "a@3", "b@3", "c"]);
    let first = "architecture: gpt2\nlayers: [0, 1]\ncheckpoints:\n  - {id: e, tensor: embd, shape: [1], file: e}\n  - {id: a, tensor: 'x-{layer}', shape: [1], file: 'a{layer}'}\n  - {id: o, tensor: out, shape: [1], file: o}\n";
    let order: Vec<String> = Manifest::parse(first)
        .unwrap()
        .graph_order()
        .iter()
        .map(|c| c.key())
        .collect();
    assert_eq!(order, ["e", "a@0", "a@1", "o"]);
    assert_eq!(
        "0, 5,29".parse::<Layers>(),
        Ok(Layers::Only(vec![0, 5, 29]))
    );
    let err = "0,x".parse::<Layers>().unwrap_err();
    assert!(err.contains("neither `all` nor layer numbers"), "{err}");
    let err = Layers::Only(vec![0, 30])
        .resolve(30)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer 30, but the model has 30 (0 to 29, or -1 to -30)"),
        "{err}"
    );
}

#[test]
fn dimensions_multiply_and_divide_left_to_right() {
    let s = crate::record::example().symbols;
    let dim = |e: &str| Dim::Expr(e.into()).resolve(&s);
    assert_eq!(dim("head_dim/2").unwrap(), 32);
    assert_eq!(dim("2*n_embd").unwrap(), 1536);
    assert_eq!(dim("n_embd/n_head*3").unwrap(), 192);
    assert_eq!(dim(" n_head_kv * head_dim ").unwrap(), 768);
    let err = dim("n_embd/7").unwrap_err().to_string();
    assert!(err.contains("divides 768 by 7"), "{err}");
}

#[test]
fn negative_layers_count_from_the_end() {
    let ends = "0,-1".parse::<Layers>().unwrap().resolve(30).unwrap();
    assert_eq!(ends, [0, 29]);
    assert!(Layers::Only(vec![-31]).resolve(30).is_err());
}

/// Hostile manifests are refused at once, before anything grows with them.
#[test]
fn oversized_manifests_are_refused_naming_the_limit() {
    let entry = |i: usize| {
        format!("  - id: c{i}\n    tensor: attn_norm-{i}\n    shape: [n_embd]\n    file: c{i}\n")
    };
    let many: String = (0..10_000).map(entry).collect();
    let msg = err(&format!("checkpoints:\n{many}"));
    assert!(
        msg.contains("10000 checkpoints listed; the limit is 1000"),
        "{msg}"
    );

    let long_name = "x".repeat(1 << 20);
    let msg = err(&format!(
        "checkpoints:\n  - id: a\n    tensor: {long_name}\n    shape: [n_embd]\n    file: a\n"
    ));
    assert!(
        msg.contains("bytes; a manifest is a few kB"),
        "1 MB: {}",
        &msg[..200.min(msg.len())]
    );
    let name = "x".repeat(64);
    let msg = err(&format!(
        "checkpoints:\n  - id: a\n    tensor: {name}\n    shape: [n_embd]\n    file: a\n"
    ));
    assert!(
        msg.contains("tensor name of 64 bytes: ggml names have at most 63"),
        "{msg}"
    );

    let layers: Vec<String> = (0..20_000).map(|l| l.to_string()).collect();
    let msg = err(&format!(
        "layers: [{}]\ncheckpoints:\n  - id: a\n    tensor: t-{{layer}}\n    shape: [n_embd]\n    file: a{{layer}}\n",
        layers.join(",")
    ));
    assert!(
        msg.contains("expands to more than 16384 checkpoints"),
        "{msg}"
    );
}

#[test]
fn deeply_nested_yaml_is_refused_not_recursed_into() {
    // YAML's parser takes time quadratic in the depth of `[`/`{` nesting
    // (100,000 levels: over a minute), so depth is checked first, in one pass.
    let depth = 100_000;
    let nested = format!("checkpoints: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let msg = err(&nested);
    assert!(
        msg.contains("line 1: `[`/`{` nested deeper than 64 levels"),
        "{msg}"
    );
    let nested = format!(
        "checkpoints:\n  - id: {}x{}\n",
        "{a: ".repeat(depth),
        "}".repeat(depth)
    );
    let msg = err(&nested);
    assert!(
        msg.contains("line 2: `[`/`{` nested deeper than 64 levels"),
        "{msg}"
    );
    // Brackets in quotes and comments are text.
    let commented = format!("# {}\n{GOOD}", "[".repeat(100));
    assert!(Manifest::parse(&commented).is_ok());
    let what = format!("id: ln1\n    what: 'it''s {}'", "[".repeat(100));
    assert!(Manifest::parse(&GOOD.replace("id: ln1", &what)).is_ok());
}

#[test]
fn shape_expressions_on_hostile_symbols_are_refused_not_overflowed() {
    // A GGUF chooses the symbols; `i64::MIN % -1` and `2^62 * 4` would panic.
    let mut s = gpt2_symbols();
    s.n_embd = 1 << 62;
    s.n_head = -1;
    s.n_ff = i64::MIN;
    let dim = |e: &str| format!("{:#}", Dim::Expr(e.into()).resolve(&s).unwrap_err());
    assert_eq!(
        dim("n_embd * 4"),
        "`n_embd * 4` overflows: 4611686018427387904 * 4"
    );
    assert_eq!(
        dim("n_ff / n_head"),
        "`n_ff / n_head` divides -9223372036854775808 by -1, which does not go exactly"
    );
    assert_eq!(dim("n_head"), "`n_head` is -1, not a positive dimension");
    assert_eq!(
        dim("n_embd / n_embd * 0"),
        "`n_embd / n_embd * 0` is 0, not a positive dimension"
    );
}

#[test]
fn a_node_found_by_op_and_operand_expands_per_layer_and_a_nameless_entry_is_refused() {
    let m = Manifest::parse(
        "architecture: llama\nlayers: [0, 3]\ncheckpoints:\n  - id: attn_out\n    op: MUL_MAT\n    operand: \"blk.{layer}.attn_output.weight\"\n    shape: [n_embd, n_tokens]\n    file: attn_out\n",
    )
    .unwrap();
    let found: Vec<_> = m
        .checkpoints
        .iter()
        .map(|c| {
            (
                c.tensor.as_str(),
                c.operand.as_deref(),
                c.file_stem.as_str(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("", Some("blk.0.attn_output.weight"), "attn_out_l0"),
            ("", Some("blk.3.attn_output.weight"), "attn_out_l3")
        ]
    );
    assert_eq!(
        m.checkpoints[1].node(),
        "the MUL_MAT node with operand `blk.3.attn_output.weight`"
    );
    let msg = err("checkpoints:\n  - id: x\n    op: ADD\n    shape: [1]\n    file: x\n");
    assert!(msg.contains("name the node: `tensor`"), "{msg}");
    let msg = err("checkpoints:\n  - id: a\n    operand: w\n    shape: [1]\n    file: a\n  - id: b\n    operand: w\n    shape: [1]\n    file: b\n");
    assert!(
        msg.contains("the node with operand `w` is listed twice"),
        "{msg}"
    );
}

#[test]
fn flash_attention_makes_a_checkpoint_absent_or_changes_its_layout() {
    let m = parse(
        "layers: [2]\ncheckpoints:\n  - id: v\n    operand: cache_v_l{layer}\n    shape: [n_kv, n_head, head_dim]\n    file: v\n    reference: {capture: \"present.{layer}.value\"}\n    flash_attn: {shape: [head_dim, n_head, n_kv], reference: {capture: \"v.{layer}\", ops: [drop_batch]}}\n  - id: s\n    tensor: kq_soft_max-{layer}\n    shape: [n_kv]\n    file: s\n    flash_attn: {absent: fused}\n  - id: o\n    tensor: l_out-{layer}\n    shape: [n_embd]\n    file: o\n",
    )
    .unwrap();
    let own: Vec<String> = m.checkpoints.iter().map(|c| c.shape_text()).collect();
    let (fa, absent) = m.under_flash_attn();
    assert_eq!(fa.checkpoints.len(), 2);
    assert_eq!(
        (absent[0].0.id.as_str(), absent[0].1.as_str()),
        ("s", "fused")
    );
    assert_eq!(fa.checkpoints[0].shape_text(), "[head_dim, n_head, n_kv]");
    assert_ne!(own[0], fa.checkpoints[0].shape_text());
    assert_eq!(
        fa.checkpoints[0].reference.as_ref().unwrap().capture,
        "v.2",
        "{{layer}} expanded"
    );
    assert_eq!(fa.checkpoints[1].id, "o");

    let both = "checkpoints:\n  - id: s\n    tensor: t\n    shape: [1]\n    file: s\n    flash_attn: {absent: x, shape: [1]}\n";
    assert!(
        err(both).contains("either `absent: <why>` or `shape`"),
        "{}",
        err(both)
    );
    let unknown = "checkpoints:\n  - id: s\n    tensor: t\n    shape: [1]\n    file: s\n    flash_attn: {gone: yes}\n";
    assert!(err(unknown).contains("gone"), "{}", err(unknown));
}

#[test]
fn a_node_regroups_a_shape_only_when_its_dimensions_merge_or_split_in_order() {
    let shape = |ne: [i64; 4], n_dims, kv: bool| Resolved {
        ne,
        n_dims,
        kv_dims: [kv, false, false, false],
    };
    let q = shape([64, 12, 2, 1], 3, false);
    assert!(q.regroups([768, 2, 1, 1]), "heads merged");
    assert!(q.regroups([64, 12, 2, 1]));
    assert!(q.regroups([1536, 1, 1, 1]), "one flat row");
    assert!(
        !q.regroups([2, 768, 1, 1]),
        "transposed: same count, other order"
    );
    assert!(q.regroups([64, 24, 1, 1]), "tokens and heads merged");
    assert!(
        !q.regroups([128, 12, 1, 1]),
        "a boundary that is not the shape's"
    );
    assert!(!q.regroups([768, 3, 1, 1]), "another total");
    assert!(
        !shape([64, 12, 2, 1], 3, true).regroups([768, 2, 1, 1]),
        "KV cells are cut, not regrouped"
    );
}
