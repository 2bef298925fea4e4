//! The extractor against the real llama.cpp and a real GPT-2-architecture model.
//!
//! The model is the project's default synthetic GPT-2 (`cargo xtask model`),
//! or any GPT-2 GGUF named by `LLORCH_TEST_MODEL`. `cargo xtask verify` and
//! `.ci/run` make sure it exists before running the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use llorch_checkpoint_extractor::format::{self, Tensor};

fn model() -> PathBuf {
    if let Some(path) = std::env::var_os("LLORCH_TEST_MODEL") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let path = root.join("target/llorch/models/gpt2-synthetic-0-12l-f32.gguf");
    assert!(
        path.exists(),
        "no test model at {}: run `cargo xtask model` first (or set LLORCH_TEST_MODEL)",
        path.display()
    );
    path
}

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("manifests")
}

fn extractor(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_llorch-checkpoint-extractor"))
        .args(["-t", "2"])
        .args(args)
        .output()
        .expect("the extractor runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn run_ok(args: &[&str]) {
    let out = extractor(args);
    assert!(
        out.status.success(),
        "extractor failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_err(args: &[&str]) -> String {
    let out = extractor(args);
    assert!(!out.status.success(), "extractor should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Files in `dir` other than the lock (hidden files included: no staging may be left).
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| n != ".llorch.lock");
    names.sort();
    names
}

fn read(dir: &Path, name: &str) -> Tensor {
    format::read(&dir.join(name)).unwrap()
}

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
  - { id: cache_k, tensor: "cache_k-{layer}", shape: [head_dim, n_head, n_kv, 1], file: cache_k }
  - { id: cache_v, tensor: "cache_v-{layer}", shape: [n_kv, n_head, head_dim, 1], file: cache_v }
  - { id: scores, tensor: "kq_soft_max-{layer}", shape: [n_kv, n_tokens, n_head, 1], file: scores }
  - { id: attn_out, tensor: "attn_out-{layer}", shape: [n_embd, n_tokens, 1], file: attn_out }
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
        let sha = llorch_checkpoint_extractor::output::sha256_file(&dir.join(file)).unwrap();
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
        "-p",
        "The quick brown fox jumps",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let (qkv, q, k, v) = (
        read(&dir, "qkv.bin"),
        read(&dir, "q.bin"),
        read(&dir, "k.bin"),
        read(&dir, "v.bin"),
    );
    let n_tokens = qkv.shape[0] as usize;
    assert!(n_tokens >= 5);

    // Q/K/V are exactly the three 768-wide slices of the fused QKV projection.
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

    // The cache's filled cells hold this prompt's K and V, rounded to f16.
    let f16 = |x: f32| half::f16::from_f32(x).to_f32();
    let (cache_k, cache_v) = (read(&dir, "cache_k.bin"), read(&dir, "cache_v.bin"));
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

    // Softmax rows sum to 1 over the filled cells and are 0 beyond the causal mask.
    let scores = read(&dir, "scores.bin");
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

    // The residual: attn_out + layer input = ffn_inp, bit for bit (one f32 add).
    let (attn_out, layer_in, ffn_inp) = (
        read(&dir, "attn_out.bin"),
        read(&dir, "layer_in.bin"),
        read(&dir, "ffn_inp.bin"),
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

fn failing_run(manifest_text: Option<&str>, extra: &[&str]) -> (String, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("m.yaml");
    match manifest_text {
        // The architecture goes last, so the line numbers of `text` stay.
        Some(text) => std::fs::write(&manifest, format!("{text}architecture: gpt2\n")).unwrap(),
        None => std::fs::copy(manifests().join("gpt2.yaml"), &manifest)
            .map(|_| ())
            .unwrap(),
    }
    let dir = tmp.path().join("run");
    let model = model();
    let err = run_err(
        &[
            &[
                "-m",
                model.to_str().unwrap(),
                "--manifest",
                manifest.to_str().unwrap(),
                "-p",
                "Hello world",
                "--out",
                dir.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat(),
    );
    (err, files_in(&dir))
}

#[test]
fn an_unknown_tensor_is_named_and_nothing_is_written() {
    let (err, files) = failing_run(
        Some("checkpoints:\n  - {id: ln1, tensor: attn_norm-0, shape: [n_embd, n_tokens], file: ln1}\n  - {id: typo, tensor: atn_norm-0, shape: [n_embd, n_tokens], file: typo}\n"),
        &[],
    );
    assert!(
        err.contains("typo (tensor `atn_norm-0`)") && err.contains("not seen"),
        "{err}"
    );
    assert!(files.is_empty(), "left behind: {files:?}");
}

#[test]
fn a_shape_mismatch_gives_expected_and_actual() {
    let (err, files) = failing_run(
        Some("checkpoints:\n  - {id: ln1, tensor: attn_norm-0, shape: [n_embd, 7], file: ln1}\n"),
        &[],
    );
    assert!(
        err.contains("checkpoint ln1") && err.contains("expected ne [768, 7], got [768, 2]"),
        "{err}"
    );
    assert!(files.is_empty(), "left behind: {files:?}");
}

#[test]
fn a_file_name_with_dotdot_is_refused_before_inference() {
    let (err, files) = failing_run(Some("checkpoints:\n  - {id: ln1, tensor: attn_norm-0, shape: [n_embd, n_tokens], file: ../escape}\n"), &[]);
    assert!(
        err.contains("plain name inside the output directory"),
        "{err}"
    );
    assert!(
        !err.contains("model"),
        "refused before the model is loaded: {err}"
    );
    assert!(files.is_empty());
}

#[test]
fn malformed_yaml_reports_its_line() {
    let (err, files) = failing_run(Some("checkpoints:\n  - id: ln1\n    tensor: attn_norm-0\n    shape: [n_embd, n_tokens\n    file: ln1\n"), &[]);
    assert!(err.contains("line 5"), "{err}");
    assert!(files.is_empty());
}

#[test]
fn a_panic_in_the_callback_stops_the_run_and_leaves_no_file() {
    let (err, files) = failing_run(None, &["--inject-panic", "kq_soft_max-0"]);
    assert!(err.contains("panicked on node `kq_soft_max-0`"), "{err}");
    assert!(files.is_empty(), "left behind: {files:?}");
}

#[test]
fn an_unwritable_output_directory_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let out = blocker.join("run");
    let model = model();
    let manifest = manifests().join("gpt2.yaml");
    let err = run_err(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("cannot write to the output directory") && err.contains("--out"),
        "{err}"
    );
}

#[test]
fn two_runs_cannot_write_into_one_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join(".llorch.lock")).unwrap();
    lock.try_lock().unwrap(); // another run holds the directory
    let model = model();
    let manifest = manifests().join("gpt2.yaml");
    let err = run_err(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(err.contains("another extraction is writing to"), "{err}");
    assert!(files_in(&dir).is_empty());
}

#[test]
fn a_corrupt_model_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let manifest = manifests().join("gpt2.yaml");
    let dir = tmp.path().join("run");
    let err = run_err(&[
        "-m",
        bad.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        err.contains("could not load") && err.contains("bad.gguf"),
        "{err}"
    );
    assert!(files_in(&dir).is_empty());
}

/// A refused run: exit code 1, one `error:` message, and no output directory.
fn refused(args: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = extractor(&[args, &["--out", dir.to_str().unwrap()]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    assert!(!dir.exists(), "left behind: {:?}", files_in(&dir));
    stderr
}

#[test]
fn a_prompt_past_the_trained_context_is_refused_before_compute() {
    let (model, manifest) = (model(), manifests().join("gpt2.yaml"));
    let long = "hello world ".repeat(600); // 1200 tokens; GPT-2 was trained for 1024
    let long = long.trim_end();
    let err = refused(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "-p",
        long,
    ]);
    assert!(
        err.contains("the prompt is 1200 tokens")
            && err.contains("trained for a context of 1024")
            && err.contains("shorten the prompt to at most 1023 tokens"),
        "{err}"
    );
    // Prompt and generation together: the fix is a smaller -n.
    let err = refused(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "-p",
        "hello world ".repeat(500).trim_end(),
        "-n",
        "100",
    ]);
    assert!(
        err.contains("1100 positions") && err.contains("lower -n to 24"),
        "{err}"
    );
}

#[test]
fn a_ctx_size_above_the_trained_context_is_refused() {
    let (model, manifest) = (model(), manifests().join("gpt2.yaml"));
    let err = refused(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "-c",
        "4096",
    ]);
    assert!(
        err.contains("--ctx-size 4096 is above the context")
            && err.contains("(1024); use --ctx-size 1024 or less"),
        "{err}"
    );
}

#[test]
fn a_model_of_another_architecture_is_refused_with_the_manifests_that_fit() {
    use llorch_checkpoint_extractor::ffi::gguf::{Dtype, GgufWriter};
    let tmp = tempfile::tempdir().unwrap();
    let llama = tmp.path().join("llama.gguf");
    let mut w = GgufWriter::new(1).unwrap();
    w.set_str("general.architecture", "llama").unwrap();
    w.add_tensor("token_embd.weight", &[4, 2], Dtype::F32, vec![0; 32])
        .unwrap();
    w.write(&llama).unwrap();
    let gpt2 = manifests().join("gpt2.yaml");
    let args = ["-m", llama.to_str().unwrap(), "--manifest"];

    let err = refused(&[&args[..], &[gpt2.to_str().unwrap()]].concat());
    assert!(
        err.contains("llama.gguf is a `llama` model, but the manifest")
            && err.contains("describes the graph of `gpt2`")
            && err.contains("is written for `llama` yet"),
        "{err}"
    );

    // With a llama manifest beside the GPT-2 one, the message names it.
    let dir = tmp.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(&gpt2, dir.join("gpt2.yaml")).unwrap();
    std::fs::write(
        dir.join("tiny-llama.yaml"),
        "architecture: llama\ncheckpoints:\n  - {id: n, tensor: attn_norm-0, shape: [n_embd, n_tokens], file: n}\n",
    )
    .unwrap();
    let copy = dir.join("gpt2.yaml");
    let err = refused(&[&args[..], &[copy.to_str().unwrap()]].concat());
    assert!(
        err.contains("manifests for `llama`: ") && err.contains("tiny-llama.yaml"),
        "{err}"
    );
}
