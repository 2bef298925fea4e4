//! The extractor against the real llama.cpp and a real GPT-2-architecture model.
//!
//! The model is the project's default synthetic GPT-2 (`cargo xtask model`),
//! or any GPT-2 GGUF named by `LLORCH_TEST_MODEL`. `cargo xtask verify` and
//! `.ci/run` make sure it exists before running the tests.
mod common;

use std::path::Path;

use common::{files_in, manifests, model, read, run_ok};

/// A manifest with the seed's checkpoints plus the nodes the correctness checks need.
const WITH_NEIGHBOURS: &str = r#"
architecture: gpt2
layers: [0]
checkpoints:
  - { id: ln1, tensor: "attn_norm-{layer}", shape: [n_embd, n_tokens], file: ln1 }
  - { id: qkv, tensor: "wqkv_b-{layer}", shape: [2304, n_tokens], file: qkv }
  - { id: q, tensor: "Qcur-{layer}", shape: [head_dim, n_head, n_tokens], file: q }
  - { id: k, tensor: "Kcur-{layer}", shape: [head_dim, n_head, n_tokens], file: k }
  - { id: v, tensor: "Vcur-{layer}", shape: [head_dim, n_head, n_tokens], file: v }
  - { id: cache_k, op: VIEW, operand: "cache_k_l{layer}", shape: [head_dim, n_head, n_kv, 1], file: cache_k }
  - { id: cache_v, op: VIEW, operand: "cache_v_l{layer}", shape: [n_kv, n_head, head_dim, 1], file: cache_v }
  - { id: scores, tensor: "kq_soft_max-{layer}", shape: [n_kv, n_tokens, n_head, 1], file: scores }
  - { id: attn_out, op: ADD, operand: "blk.{layer}.attn_output.bias", shape: [n_embd, n_tokens, 1], file: attn_out }
  - { id: layer_in, tensor: "inpL", shape: [n_embd, n_tokens], file: layer_in }
  - { id: ffn_inp, tensor: "ffn_inp-{layer}", shape: [n_embd, n_tokens], file: ffn_inp }
"#;

#[test]
fn the_default_manifest_writes_the_seeds_nine_files_with_their_shapes() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("run");
    let manifest = manifests().join("gpt2.yaml");
    let model = model();
    run_ok(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--flash-attn",
        "off",
        "-p",
        "Hello world",
        "--out",
        dir.to_str().unwrap(),
    ]);

    let expected: &[(&str, &[i64])] = &[
        ("checkpoint_01_ln1_output.bin", &[2, 768]),
        ("checkpoint_02_q.bin", &[2, 12, 64]),
        ("checkpoint_02_k.bin", &[2, 12, 64]),
        ("checkpoint_02_v.bin", &[2, 12, 64]),
        ("checkpoint_03_cache_k.bin", &[1, 2, 12, 64]),
        ("checkpoint_03_cache_v.bin", &[1, 64, 12, 2]),
        ("checkpoint_04_scores.bin", &[1, 12, 2, 2]),
        ("checkpoint_05_output.bin", &[1, 2, 768]),
        ("checkpoint_06_ffn.bin", &[2, 768]),
    ];
    for (name, shape) in expected {
        let t = read(&dir, name);
        assert_eq!(&t.shape, shape, "{name}");
        assert!(
            t.data.iter().all(|v| v.is_finite()),
            "{name} has NaN or Inf"
        );
        assert!(t.data.iter().any(|&v| v != 0.0), "{name} is all zeros");
    }
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(
        record["tokens"],
        serde_json::json!([15496, 995]),
        "GPT-2 tokenizes `Hello world` as [15496, 995]"
    );
    let checkpoints = record["checkpoints"].as_array().unwrap();
    assert_eq!(checkpoints.len(), 9);
    for cp in checkpoints {
        let file = cp["file"].as_str().unwrap();
        let sha = llorch_checkpoint_spec::files::sha256_file(&dir.join(file)).unwrap();
        assert_eq!(
            cp["sha256"].as_str().unwrap(),
            sha,
            "{file}: the record's sha256 matches the file"
        );
    }
    assert_eq!(
        checkpoints
            .iter()
            .find(|c| c["id"] == "03_cache_k")
            .unwrap()["source_dtype"],
        "f16"
    );
}

#[test]
fn checkpoints_agree_with_their_neighbours_in_the_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("m.yaml");
    std::fs::write(&manifest, WITH_NEIGHBOURS).unwrap();
    let dir = tmp.path().join("run");
    let model = model();
    run_ok(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--flash-attn",
        "off",
        "-p",
        "The quick brown fox jumps",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let n_tokens = read(&dir, "qkv.bin").shape[0] as usize;
    assert!(n_tokens >= 5);
    qkv_slices_are_q_k_and_v(&dir, n_tokens);
    the_cache_holds_k_and_v_in_f16(&dir, n_tokens);
    scores_are_causal_softmax_rows(&dir, n_tokens);
    the_residual_adds_attn_out_to_the_layer_input(&dir);
}

/// Q/K/V are exactly the three 768-wide slices of the fused QKV projection.
fn qkv_slices_are_q_k_and_v(dir: &Path, n_tokens: usize) {
    let (qkv, q, k, v) = (
        read(dir, "qkv.bin"),
        read(dir, "q.bin"),
        read(dir, "k.bin"),
        read(dir, "v.bin"),
    );
    for t in 0..n_tokens {
        let row = &qkv.data[t * 2304..(t + 1) * 2304];
        assert_eq!(
            &q.data[t * 768..(t + 1) * 768],
            &row[0..768],
            "Q, token {t}"
        );
        assert_eq!(
            &k.data[t * 768..(t + 1) * 768],
            &row[768..1536],
            "K, token {t}"
        );
        assert_eq!(
            &v.data[t * 768..(t + 1) * 768],
            &row[1536..2304],
            "V, token {t}"
        );
    }
}

/// The cache's filled cells hold this prompt's K and V, rounded to f16.
fn the_cache_holds_k_and_v_in_f16(dir: &Path, n_tokens: usize) {
    let f16 = |x: f32| half::f16::from_f32(x).to_f32();
    let (k, v) = (read(dir, "k.bin"), read(dir, "v.bin"));
    let (cache_k, cache_v) = (read(dir, "cache_k.bin"), read(dir, "cache_v.bin"));
    assert_eq!(cache_k.shape, [1, n_tokens as i64, 12, 64]);
    assert_eq!(cache_v.shape, [1, 64, 12, n_tokens as i64]);
    for (cached, fresh) in cache_k.data.iter().zip(&k.data) {
        assert_eq!(*cached, f16(*fresh));
    }
    for cell in 0..n_tokens {
        for h in 0..12 {
            for d in 0..64 {
                // V is stored transposed: file [1, head_dim, n_head, n_kv].
                let cached = cache_v.data[(d * 12 + h) * n_tokens + cell];
                assert_eq!(
                    cached,
                    f16(v.data[(cell * 12 + h) * 64 + d]),
                    "V cell {cell} head {h} dim {d}"
                );
            }
        }
    }
}

/// Softmax rows sum to 1 over the filled cells and are 0 beyond the causal mask.
fn scores_are_causal_softmax_rows(dir: &Path, n_tokens: usize) {
    let scores = read(dir, "scores.bin");
    assert_eq!(scores.shape, [1, 12, n_tokens as i64, n_tokens as i64]);
    let mut non_uniform = false;
    for h in 0..12 {
        for i in 0..n_tokens {
            let row =
                &scores.data[(h * n_tokens + i) * n_tokens..(h * n_tokens + i + 1) * n_tokens];
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "head {h} query {i}: sum {sum}");
            assert!(
                row[i + 1..].iter().all(|&p| p == 0.0),
                "head {h} query {i} attends to the future: {row:?}"
            );
            non_uniform |= i > 0
                && row[..=i]
                    .iter()
                    .any(|&p| (p - 1.0 / (i + 1) as f32).abs() > 1e-3);
        }
    }
    assert!(
        non_uniform,
        "attention is uniform everywhere: the model's weights make no useful test"
    );
}

/// The residual: attn_out + layer input = ffn_inp, bit for bit (one f32 add).
fn the_residual_adds_attn_out_to_the_layer_input(dir: &Path) {
    let (attn_out, layer_in, ffn_inp) = (
        read(dir, "attn_out.bin"),
        read(dir, "layer_in.bin"),
        read(dir, "ffn_inp.bin"),
    );
    for i in 0..ffn_inp.data.len() {
        assert_eq!(
            attn_out.data[i] + layer_in.data[i],
            ffn_inp.data[i],
            "element {i}"
        );
    }
}

#[test]
fn extraction_does_not_change_the_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = manifests().join("gpt2.yaml");
    let model = model();
    let (with, without) = (tmp.path().join("with"), tmp.path().join("without"));
    let common = [
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "-p",
        "Hello world",
        "-n",
        "2",
    ];
    run_ok(&[&common[..], &["--out", with.to_str().unwrap()]].concat());
    run_ok(
        &[
            &common[..],
            &["--out", without.to_str().unwrap(), "--no-extract"],
        ]
        .concat(),
    );
    let a = std::fs::read(with.join("logits.bin")).unwrap();
    let b = std::fs::read(without.join("logits.bin")).unwrap();
    assert_eq!(a.len(), 4 + 16 + 3 * 50257 * 4, "logits of 3 passes");
    assert!(a == b, "logits differ with extraction on");
    assert_eq!(
        files_in(&without),
        ["logits.bin", "run.json"],
        "--no-extract writes no checkpoint"
    );
}

#[test]
fn steps_all_captures_every_pass_under_its_own_name() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = manifests().join("gpt2.yaml");
    let model = model();
    let dir = tmp.path().join("run");
    run_ok(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--flash-attn",
        "off",
        "-p",
        "Hello world",
        "-n",
        "2",
        "--steps",
        "all",
        "--out",
        dir.to_str().unwrap(),
    ]);
    // Pass 2 decodes one token with two earlier ones in the cache.
    assert_eq!(
        read(&dir, "checkpoint_01_ln1_output.step2.bin").shape,
        [1, 768]
    );
    assert_eq!(
        read(&dir, "checkpoint_03_cache_k.step2.bin").shape,
        [1, 4, 12, 64]
    );
    assert_eq!(
        read(&dir, "checkpoint_04_scores.step2.bin").shape,
        [1, 12, 1, 4]
    );
    // The history in the cache is the prompt pass's.
    let (k0, k2) = (
        read(&dir, "checkpoint_03_cache_k.bin"),
        read(&dir, "checkpoint_03_cache_k.step2.bin"),
    );
    assert_eq!(&k2.data[..k0.data.len()], &k0.data[..]);
}

#[test]
fn npy_output_holds_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = manifests().join("gpt2.yaml");
    let model = model();
    let (bin, npy) = (tmp.path().join("bin"), tmp.path().join("npy"));
    let common = [
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--flash-attn",
        "off",
        "-p",
        "Hello world",
    ];
    run_ok(&[&common[..], &["--out", bin.to_str().unwrap()]].concat());
    run_ok(
        &[
            &common[..],
            &["--out", npy.to_str().unwrap(), "--format", "npy"],
        ]
        .concat(),
    );
    assert_eq!(
        read(&bin, "checkpoint_04_scores.bin"),
        read(&npy, "checkpoint_04_scores.npy")
    );
}

#[test]
fn the_whole_graph_is_captured_node_by_node_with_a_small_buffer_too() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model();
    let run = |dir: &str, extra: &[&str]| {
        let out = tmp.path().join(dir);
        run_ok(
            &[
                &[
                    "-m",
                    model.to_str().unwrap(),
                    "--flash-attn",
                    "off",
                    "--tensors",
                    "*-0",
                    "-p",
                    "Hello world",
                    "--out",
                    out.to_str().unwrap(),
                ][..],
                extra,
            ]
            .concat(),
        );
        let record = llorch_checkpoint_extractor::record::RunRecord::read(&out).unwrap();
        (out, record)
    };
    let (dir, big) = run("big", &[]);
    // A 1 MB buffer: the pass hands its copies over early and waits for room.
    let (_, small) = run("small", &["--buffer-mb", "1"]);
    let (_, none) = run("none", &["--no-extract"]);
    assert_eq!(big.tensors.as_deref(), Some("*-0"));
    let names: Vec<&str> = big.checkpoints.iter().map(|c| c.tensor.as_str()).collect();
    for expected in [
        "attn_norm-0",
        "wqkv_b-0",
        "kq_soft_max-0",
        "kqv_out-0",
        "ffn_out-0",
        "l_out-0",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(names.iter().all(|n| n.ends_with("-0")), "{names:?}");
    // Names repeat in the graph (norm-0 twice); files do not.
    let mut files: Vec<&str> = big.checkpoints.iter().map(|c| c.file.as_str()).collect();
    files.sort();
    files.dedup();
    assert_eq!(files.len(), big.checkpoints.len());
    assert!(names.iter().filter(|n| **n == "norm-0").count() == 2);
    // The same bytes whatever the buffer, and the same logits as no capture.
    let shas = |r: &llorch_checkpoint_extractor::record::RunRecord| {
        r.checkpoints
            .iter()
            .map(|c| (c.file.clone(), c.sha256.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(shas(&big), shas(&small));
    assert_eq!(big.logits.sha256, none.logits.sha256);
    let ln1 = read(&dir, &big.checkpoint_by_tensor("attn_norm-0").unwrap().file);
    assert_eq!(ln1.shape, [2, 768]);
}

#[test]
fn repeat_times_capture_against_no_capture_without_changing_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, manifest) = (model(), manifests().join("gpt2.yaml"));
    let (once, repeated) = (tmp.path().join("once"), tmp.path().join("repeated"));
    let common = [
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "-p",
        "Hello world",
        "-n",
        "1",
    ];
    run_ok(&[&common[..], &["--out", once.to_str().unwrap()]].concat());
    run_ok(
        &[
            &common[..],
            &["--out", repeated.to_str().unwrap(), "--repeat", "3"],
        ]
        .concat(),
    );
    let read_record =
        |d: &std::path::Path| llorch_checkpoint_extractor::record::RunRecord::read(d).unwrap();
    let (a, b) = (read_record(&once), read_record(&repeated));
    assert!(a.steady.is_none());
    let steady = b.steady.clone().unwrap();
    assert_eq!((steady.with_ms.len(), steady.without_ms.len()), (3, 3));
    assert!(steady
        .with_ms
        .iter()
        .chain(&steady.without_ms)
        .all(|&ms| ms > 0.0));
    // The timing passes keep nothing: same files, same logits.
    let shas = |r: &llorch_checkpoint_extractor::record::RunRecord| {
        r.checkpoints
            .iter()
            .map(|c| c.sha256.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(shas(&a), shas(&b));
    assert_eq!(a.logits.sha256, b.logits.sha256);
}

#[test]
fn tokens_and_sequential_feed_the_same_ids_one_pass_per_position() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, manifest) = (model(), manifests().join("gpt2.yaml"));
    let common = [
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "-n",
        "0",
    ];
    let (text, ids, one_by_one) = (
        tmp.path().join("text"),
        tmp.path().join("ids"),
        tmp.path().join("seq"),
    );
    run_ok(
        &[
            &common[..],
            &["-p", "Hello world", "--out", text.to_str().unwrap()],
        ]
        .concat(),
    );
    run_ok(
        &[
            &common[..],
            &["--tokens", "15496,995", "--out", ids.to_str().unwrap()],
        ]
        .concat(),
    );
    run_ok(
        &[
            &common[..],
            &[
                "--tokens",
                "15496,995",
                "--sequential",
                "--out",
                one_by_one.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let record =
        |d: &std::path::Path| llorch_checkpoint_extractor::record::RunRecord::read(d).unwrap();
    assert_eq!(record(&ids).tokens, [15496, 995]);
    assert_eq!(record(&text).logits.sha256, record(&ids).logits.sha256);
    let seq = record(&one_by_one);
    assert!(seq.sequential);
    assert_eq!(seq.logits.shape, [2, 50257], "one logits row per pass");
    // Position 1 is pass 1: one token, two cache cells; LayerNorm rows do not
    // depend on the batch, so they are bitwise the batch run's.
    let batch = read(&text, "checkpoint_01_ln1_output.bin");
    let first = read(&one_by_one, "checkpoint_01_ln1_output.bin");
    let second = read(&one_by_one, "checkpoint_01_ln1_output.step1.bin");
    assert_eq!(
        (first.shape.as_slice(), second.shape.as_slice()),
        (&[1, 768][..], &[1, 768][..])
    );
    assert_eq!([first.data, second.data].concat(), batch.data);
    assert_eq!(
        read(&one_by_one, "checkpoint_03_cache_k.step1.bin").shape,
        [1, 2, 12, 64]
    );
}

#[test]
fn several_globs_pick_several_kinds_of_node() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model();
    let dir = tmp.path().join("run");
    run_ok(&[
        "-m",
        model.to_str().unwrap(),
        "--tensors",
        "attn_norm-*,ffn_out-*",
        "-p",
        "Hello world",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let record = llorch_checkpoint_extractor::record::RunRecord::read(&dir).unwrap();
    let mut names: Vec<&str> = record
        .checkpoints
        .iter()
        .map(|c| c.tensor.as_str())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..12)
        .flat_map(|l| [format!("attn_norm-{l}"), format!("ffn_out-{l}")])
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    assert!(record.checkpoints.iter().all(|c| c.shape == [2, 768]));
}

#[test]
fn layers_counted_from_the_end_are_taken_as_values_not_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = manifests().join("gpt2.yaml");
    let model = model();
    for (i, layers) in ["-1", "0,-1", "-2,-1"].into_iter().enumerate() {
        let dir = tmp.path().join(format!("run{i}"));
        // `--layers -1` as two arguments: clap must not take `-1` for a flag.
        run_ok(&[
            "-m",
            model.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "--layers",
            layers,
            "-n",
            "0",
            "--out",
            dir.to_str().unwrap(),
        ]);
        let record = llorch_checkpoint_extractor::record::RunRecord::read(&dir).unwrap();
        let last = record.model.n_layer as u32 - 1;
        let expected = match layers {
            "-1" => vec![last],
            "0,-1" => vec![0, last],
            _ => vec![last - 1, last],
        };
        assert_eq!(
            record.layers.as_deref(),
            Some(&expected[..]),
            "--layers {layers}"
        );
        let mut captured: Vec<u32> = record
            .checkpoints
            .iter()
            .map(|c| {
                c.layer
                    .expect("every checkpoint of this manifest has a layer")
            })
            .collect();
        captured.sort();
        captured.dedup();
        assert_eq!(
            captured, expected,
            "--layers {layers}: the checkpoints' layers"
        );
        // One layer keeps the manifest's file names; more get `_l<layer>`.
        let ln1 = match expected.len() {
            1 => "checkpoint_01_ln1_output.bin".to_string(),
            _ => format!("checkpoint_01_ln1_output_l{last}.bin"),
        };
        assert!(
            files_in(&dir).contains(&ln1),
            "--layers {layers}: no {ln1} in {:?}",
            files_in(&dir)
        );
        assert_eq!(read(&dir, &ln1).shape, [2, 768]);
    }
}
