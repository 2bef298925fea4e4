//! The library on a run directory as the extractor writes it (the spec
//! crate's example record, with its checkpoint file).

use llorch_checkpoint_golden::{Candidate, Format, Run, Tolerance};
use llorch_checkpoint_spec::format;
use llorch_checkpoint_spec::record::example;

/// A run of 2 tokens with one checkpoint, `01_ln1_output` of layer 0, [2, 768].
fn run_dir() -> (tempfile::TempDir, Vec<f32>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    let record = example();
    std::fs::write(dir.join("run.json"), record.to_json()).unwrap();
    let data: Vec<f32> = (0..2 * 768)
        .map(|i| ((i % 97) as f32 - 48.0) / 16.0)
        .collect();
    let mut bytes = Vec::new();
    format::write(format::Format::Bin, &mut bytes, &[2, 768], &data).unwrap();
    std::fs::write(dir.join("checkpoint_01_ln1_output.bin"), bytes).unwrap();
    (tmp, data)
}

#[test]
fn a_checkpoint_is_found_by_id_layer_and_node_and_judged() {
    let (tmp, data) = run_dir();
    let run = Run::open(tmp.path().join("run")).unwrap();
    assert_eq!(run.tokens(), &[15496, 995]);
    assert_eq!(run.architecture(), "gpt2");
    let ln1 = run.checkpoint("01_ln1_output", 0).unwrap();
    assert_eq!(ln1.shape(), &[2, 768]);
    assert_eq!(ln1.node(), run.by_node(ln1.node()).unwrap().node());
    assert_eq!(run.layer(0), vec![ln1.clone()]);
    assert_eq!(ln1.tensor().unwrap().data(), &data[..]);
    assert!(ln1.compare(&data).unwrap().pass());
    // 1% off in one row: caught by the default, with the checkpoint named.
    let mut mine = data.clone();
    for x in &mut mine[768..] {
        *x *= 1.01;
    }
    let verdict = ln1.compare(&mine).unwrap();
    assert!(!verdict.pass());
    let text = verdict.to_string();
    assert!(
        text.starts_with("checkpoint 01_ln1_output layer 0 (checkpoint_01_ln1_output.bin, node attn_norm-0) DIVERGES"),
        "{text}"
    );
    // A looser tolerance lets it through: the verdict says which judged.
    let loose = Tolerance {
        atol: 0.1,
        atol_of_max: 0.0,
        rtol: 0.0,
        nmse: 1e-2,
    };
    assert!(ln1.compare_with(&mine, loose).unwrap().pass());
    // No manifest named: no manifest tolerance, said as None.
    assert_eq!(ln1.manifest_tolerance(), None);
}

#[test]
fn what_the_run_lacks_is_named_with_what_it_has() {
    let (tmp, _) = run_dir();
    let run = Run::open(tmp.path().join("run")).unwrap();
    let err = run.checkpoint("02_q", 0).unwrap_err().to_string();
    assert!(
        err.contains("has no checkpoint `02_q` of layer 0 in pass 0; it has 01_ln1_output@0"),
        "{err}"
    );
    let err = Run::open(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("is not a run directory of llorch-checkpoint"),
        "{err}"
    );
}

#[test]
fn a_candidate_is_written_whole_with_the_runs_tokens_or_not_at_all() {
    let (tmp, data) = run_dir();
    let run = Run::open(tmp.path().join("run")).unwrap();
    let ln1 = run.checkpoint("01_ln1_output", 0).unwrap();
    let out = tmp.path().join("cand");
    let mut c = Candidate::new(&out, &run, Format::Npy).unwrap();
    assert!(c
        .write(&ln1, &data[..10])
        .unwrap_err()
        .to_string()
        .contains("has 10 elements"));
    c.write(&ln1, &data).unwrap();
    assert!(!out.exists(), "nothing in place before finish");
    c.finish().unwrap();
    let written = format::read(&out.join("checkpoint_01_ln1_output.npy")).unwrap();
    assert_eq!((written.shape, written.data), (vec![2, 768], data.clone()));
    let tokens: Vec<i64> =
        serde_json::from_slice(&std::fs::read(out.join("tokens.json")).unwrap()).unwrap();
    assert_eq!(tokens, [15496, 995]);
    // An occupied directory is refused; an unfinished candidate leaves nothing.
    assert!(Candidate::new(&out, &run, Format::Bin)
        .unwrap_err()
        .to_string()
        .contains("not an empty directory"));
    let other = tmp.path().join("other");
    drop(Candidate::new(&other, &run, Format::Bin).unwrap());
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}
