//! The engine held to llama.cpp, checkpoint by checkpoint: the run is
//! `cargo xtask extract -- --flash-attn off` (nine checkpoints of layer 0,
//! the attention scores among them), in the tool's `checkpoints/` or in
//! `$LLORCH_RUN`; the model is the GGUF the run names.

use std::path::PathBuf;

use gpt2_layer0_engine::{Gpt2Layer0, Variant};
use llorch_checkpoint_golden::{Candidate, Format, Run};

/// The manifest's nine checkpoints of layer 0, in graph order.
const NINE: [&str; 9] = [
    "01_ln1_output",
    "02_q",
    "02_k",
    "02_v",
    "03_cache_k",
    "03_cache_v",
    "04_scores",
    "05_output",
    "06_ffn",
];

fn run() -> Run {
    let dir = std::env::var_os("LLORCH_RUN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../checkpoints"));
    Run::open(&dir).unwrap_or_else(|e| {
        panic!("{e}\n(make the run with `cargo xtask extract -- --flash-attn off`, or point LLORCH_RUN at one)")
    })
}

fn engine(run: &Run) -> Gpt2Layer0 {
    let model = run
        .model()
        .expect("the GGUF the run names is not to be found");
    Gpt2Layer0::load(&model).unwrap()
}

#[test]
fn every_checkpoint_of_layer_0_matches_llama_cpp() {
    let run = run();
    let ours = engine(&run).forward(run.tokens(), Variant::Correct);
    let out = std::env::var_os("LLORCH_CANDIDATE").map(PathBuf::from);
    let mut candidate = out.map(|dir| Candidate::new(dir, &run, Format::Npy).unwrap());
    for id in NINE {
        let checkpoint = run.checkpoint(id, 0).unwrap();
        let verdict = checkpoint.compare(&ours[id]).unwrap();
        println!("{verdict}");
        assert!(verdict.pass(), "{verdict}");
        if let Some(c) = &mut candidate {
            c.write(&checkpoint, &ours[id]).unwrap();
        }
    }
    if let Some(c) = candidate {
        println!("candidate written to {}", c.finish().unwrap().display());
    }
}

#[test]
fn unscaled_scores_fail_at_the_scores_and_not_before() {
    let run = run();
    let ours = engine(&run).forward(run.tokens(), Variant::UnscaledScores);
    let first = NINE
        .iter()
        .map(|id| run.checkpoint(id, 0).unwrap().compare(&ours[id]).unwrap())
        .find(|v| !v.pass())
        .expect("a missing 1/sqrt(head_dim) must be caught");
    println!("{first}");
    let text = first.to_string();
    assert!(
        text.starts_with("checkpoint 04_scores layer 0 (checkpoint_04_scores"),
        "{text}"
    );
    assert!(
        text.contains("DIVERGES from llama.cpp: element [0, "),
        "{text}"
    );
}
