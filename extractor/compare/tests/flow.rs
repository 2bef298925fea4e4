//! The whole comparison on fakes of both sides: a llama.cpp that writes a
//! run of known values with known errors, and a reference that writes the
//! true values. No llama.cpp, no Python.

use std::path::{Path, PathBuf};

use anyhow::Result;
use llorch_checkpoint_compare::sides::{Extraction, Extractor, Reference, ReferenceJob};
use llorch_checkpoint_compare::{compare, self_test, Options};
use llorch_checkpoint_spec::format::{self, Format};
use llorch_checkpoint_spec::manifest::{Checkpoint, Manifest};
use llorch_checkpoint_spec::record::{self, RunRecord};

const MANIFEST: &str = r#"architecture: gpt2
layers: [0, 1]
checkpoints:
  - id: "01_norm"
    tensor: "attn_norm-{layer}"
    shape: [n_embd, n_tokens]
    file: "cp_01_norm_l{layer}"
    reference: { capture: "h.{layer}.ln_1", ops: [drop_batch] }
    tolerance: { atol: 1.0e-4, rtol: 1.0e-4, nmse: 1.0e-8 }
  - id: "02_q"
    tensor: "Qcur-{layer}"
    shape: [head_dim, n_head, n_tokens]
    file: "cp_02_q_l{layer}"
    reference: { capture: "attn.{layer}.query", ops: [drop_batch] }
    tolerance: { atol: 1.0e-4, rtol: 1.0e-4, nmse: 1.0e-8 }
"#;

/// The true value of element `i` of a checkpoint.
fn truth(cp: &Checkpoint, i: usize) -> f32 {
    let phase = cp.layer.unwrap_or(0) as f32 + cp.index as f32 * 0.5;
    (i as f32 * 0.37 + phase).sin()
}

/// A llama.cpp whose checkpoints are the truth plus `error(checkpoint,
/// settings)` times a pattern over the elements.
struct FakeLlama {
    error: fn(&Checkpoint, &Extraction<'_>) -> f32,
}

impl Extractor for FakeLlama {
    fn extract(&self, run: &Extraction<'_>) -> Result<()> {
        let manifest = Manifest::load(run.manifest)?;
        let mut record = record::example();
        record.threads = run.threads as i32;
        record.kv_type = if run.kv_f32 { "f32" } else { "f16" }.into();
        record.checkpoints.clear();
        std::fs::create_dir_all(run.out)?;
        for cp in manifest.graph_order() {
            let shape = cp.resolve(&record.symbols)?.file_shape();
            let n: i64 = shape.iter().product();
            let error = (self.error)(cp, run);
            let data: Vec<f32> = (0..n as usize)
                .map(|i| truth(cp, i) + error * ((i % 7) as f32 - 3.0))
                .collect();
            let mut bytes = Vec::new();
            format::write(Format::Bin, &mut bytes, &shape, &data)?;
            std::fs::write(run.out.join(format!("{}.bin", cp.file_stem)), bytes)?;
        }
        std::fs::write(run.out.join(record::FILE), record.to_json())?;
        Ok(())
    }

    fn dequantized(&self, _model: &Path) -> Result<Option<PathBuf>> {
        Ok(None)
    }
}

/// A reference that computes the truth, the same in every variant; with
/// `no_f64`, a model whose f64 variants cannot run (an MoE in transformers).
struct FakeTorch {
    manifest: PathBuf,
    no_f64: bool,
}

impl Reference for FakeTorch {
    fn compute(&self, job: &ReferenceJob) -> Result<()> {
        let manifest = Manifest::load(&self.manifest)?;
        for variant in job
            .variants
            .iter()
            .filter(|v| !(self.no_f64 && v.starts_with("f64")))
        {
            let dir = job.out.join(variant);
            std::fs::create_dir_all(&dir)?;
            for wanted in &job.checkpoints {
                let cp = manifest
                    .checkpoints
                    .iter()
                    .find(|c| c.file_stem == wanted.stem)
                    .expect("the job asks for the manifest's checkpoints");
                let n: usize = wanted.shape.iter().product();
                let data: Vec<f32> = (0..n).map(|i| truth(cp, i)).collect();
                let shape: Vec<i64> = wanted.shape.iter().map(|&d| d as i64).collect();
                let mut bytes = Vec::new();
                format::write(Format::Npy, &mut bytes, &shape, &data)?;
                std::fs::write(dir.join(format!("{}.npy", wanted.stem)), bytes)?;
            }
        }
        let info = match self.no_f64 {
            false => r#"{"model": "FakeForCausalLM", "next_token": {"f32": 11, "f64": 11}}"#,
            true => {
                r#"{"model": "FakeMoeForCausalLM", "next_token": {"f32": 11}, "variants": ["f32"],
                        "unavailable": {"f64": "Expected mat_a to be Float32, BFloat16 or Float16"}}"#
            }
        };
        std::fs::write(job.out.join("reference.json"), info)?;
        Ok(())
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    manifest: PathBuf,
    model: PathBuf,
    out: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("fake.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    Setup {
        manifest,
        model: tmp.path().join("model.gguf"),
        out: tmp.path().join("out"),
        _tmp: tmp,
    }
}

fn options(s: &Setup) -> Options {
    Options::new(&s.manifest, &s.model, "Hello world", s.out.clone())
}

#[test]
fn a_run_within_tolerance_passes_and_writes_every_report() {
    let s = setup();
    let llama = FakeLlama { error: |_, _| 1e-6 };
    let torch = FakeTorch {
        manifest: s.manifest.clone(),
        no_f64: false,
    };
    let outcome = compare(&llama, &torch, &options(&s)).unwrap();
    assert_eq!(outcome.failure, None);
    assert_eq!(
        outcome.summary,
        "4 of 4 checkpoints within tolerance of the f64 reference"
    );
    assert!(outcome.text.contains(
        "llama.cpp pin (pinned, 0123456789ab) (kv cache f16, 2 threads, flash attention off, asked auto) \
         vs PyTorch FakeForCausalLM (gpt2), 2 prompt tokens; next token: llama.cpp 11, PyTorch f32 11, f64 11"
    ), "{}", outcome.text);
    assert_eq!(
        (outcome.next_token.llama, outcome.next_token.reference),
        (Some(11), Some(11))
    );
    assert!(outcome.next_token.agrees() && outcome.next_token.tie.is_none());
    for file in [&outcome.report, &outcome.picture, &outcome.html] {
        assert!(file.is_file(), "{} is missing", file.display());
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&outcome.report).unwrap()).unwrap();
    assert_eq!(report["pass"], true);
    assert_eq!(report["checkpoints"].as_array().unwrap().len(), 4);
    // The largest error is 3e-6 (the pattern's -3 * 1e-6).
    let max = report["checkpoints"][0]["against"]["f64"]["max_abs"]
        .as_f64()
        .unwrap();
    assert!((max - 3e-6).abs() < 1e-7, "{max}");
}

#[test]
fn the_first_checkpoint_over_its_tolerance_is_named_with_its_worst_element() {
    let s = setup();
    // Layer 1's q is off by 1e-3 per pattern step: 3e-3 at worst, far over 1e-4.
    let llama = FakeLlama {
        error: |cp, _| {
            if cp.id == "02_q" && cp.layer == Some(1) {
                1e-3
            } else {
                0.0
            }
        },
    };
    let torch = FakeTorch {
        manifest: s.manifest.clone(),
        no_f64: false,
    };
    let outcome = compare(&llama, &torch, &options(&s)).unwrap();
    let why = outcome.failure.unwrap();
    assert!(
        why.starts_with("checkpoint 02_q layer 1 (cp_02_q_l1.bin) exceeds its tolerance"),
        "{why}"
    );
    assert_eq!(
        outcome.summary,
        "3 of 4 checkpoints within tolerance of the f64 reference"
    );
}

#[test]
fn the_self_test_passes_a_clean_run_and_catches_one_element_moved() {
    let s = setup();
    let llama = FakeLlama { error: |_, _| 0.0 };
    let torch = FakeTorch {
        manifest: s.manifest.clone(),
        no_f64: false,
    };
    let line = self_test(&llama, &torch, &s.manifest, &s.model, &s.out).unwrap();
    // Element 512 of [2, 768] is [0, 512].
    assert!(
        line.contains("01_norm element [0, 512] + 1e-2 is caught"),
        "{line}"
    );
}

#[test]
fn attribution_blames_the_kv_cache_when_an_f32_cache_removes_the_error() {
    let s = setup();
    let llama = FakeLlama {
        error: |_, run| if run.kv_f32 { 1e-7 } else { 1e-4 },
    };
    let torch = FakeTorch {
        manifest: s.manifest.clone(),
        no_f64: false,
    };
    let opts = Options {
        attribution: true,
        ..options(&s)
    };
    let outcome = compare(&llama, &torch, &opts).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&outcome.report).unwrap()).unwrap();
    let rows = report["attribution"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows {
        assert_eq!(
            row["explanation"], "f16 KV cache (storage precision)",
            "{row}"
        );
        // The one-thread run wrote the same bytes as the default one.
        assert_eq!(row["threads_bitwise_equal"], true);
    }
}

#[test]
fn a_candidate_scaled_by_one_percent_diverges_from_llama_cpp_where_it_was_scaled() {
    let s = setup();
    let llama = FakeLlama { error: |_, _| 0.0 };
    let torch = FakeTorch {
        manifest: s.manifest.clone(),
        no_f64: false,
    };
    let run = s.out.join("run");
    llama.extract(&options(&s).extraction(&run)).unwrap();
    let candidate = s.out.join("candidate");
    llorch_checkpoint_spec::files::copy_run(&run, &candidate).unwrap();
    let victim = candidate.join("cp_01_norm_l1.bin");
    let t = format::read(&victim).unwrap();
    let scaled: Vec<f32> = t.data.iter().map(|x| x * 1.01).collect();
    let mut bytes = Vec::new();
    format::write(Format::Bin, &mut bytes, &t.shape, &scaled).unwrap();
    std::fs::write(&victim, bytes).unwrap();
    let opts = Options {
        run: Some(run),
        candidate: Some(candidate),
        ..options(&s)
    };
    let outcome = compare(&llama, &torch, &opts).unwrap();
    assert_eq!(outcome.failure, None, "llama.cpp itself is exact here");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&outcome.report).unwrap()).unwrap();
    let first = report["candidate"]["first_divergence_from_llama_cpp"]
        .as_str()
        .unwrap();
    assert!(
        first.starts_with("checkpoint 01_norm layer 1 (cp_01_norm_l1.bin): element"),
        "{first}"
    );
}

#[test]
fn a_run_record_of_other_tokens_than_the_candidate_is_refused() {
    let s = setup();
    let llama = FakeLlama { error: |_, _| 0.0 };
    let torch = FakeTorch {
        manifest: s.manifest.clone(),
        no_f64: false,
    };
    let candidate = s.out.join("candidate");
    std::fs::create_dir_all(&candidate).unwrap();
    std::fs::write(candidate.join("tokens.json"), "[1, 2, 3]").unwrap();
    let opts = Options {
        candidate: Some(candidate),
        ..options(&s)
    };
    let err = compare(&llama, &torch, &opts).err().unwrap().to_string();
    assert!(err.contains("ran other tokens than llama.cpp"), "{err}");
    assert!(
        RunRecord::read(&s.out.join("llama")).is_ok(),
        "llama.cpp ran first"
    );
}

#[test]
fn a_model_that_cannot_run_in_f64_is_judged_against_f32_and_says_so() {
    let s = setup();
    let llama = FakeLlama { error: |_, _| 1e-6 };
    let torch = FakeTorch {
        manifest: s.manifest.clone(),
        no_f64: true,
    };
    let outcome = compare(&llama, &torch, &options(&s)).unwrap();
    assert_eq!(outcome.failure, None, "{}", outcome.text);
    assert_eq!(
        outcome.summary,
        "4 of 4 checkpoints within tolerance of the f32 reference"
    );
    assert!(
        outcome
            .text
            .contains("the reference cannot run f64 (Expected mat_a to be Float32")
            && outcome.text.contains("judged against f32")
            && outcome.text.contains("f32:maxab"),
        "{}",
        outcome.text
    );
    assert!(outcome
        .rows
        .iter()
        .all(|r| r.truth == "f32" && !r.against.contains_key("f64")));
}
