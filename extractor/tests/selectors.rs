//! How a manifest finds a graph node: by its name, or by its op and an
//! operand's name (for nodes llama.cpp leaves unnamed), against the real
//! llama.cpp and the default synthetic GPT-2.
mod common;

use std::path::Path;

use common::{model, run_ok};
use llorch_checkpoint_extractor::record::RunRecord;

/// The manifest `text` run on "Hello world" into `dir/name`; its record.
fn run_with(dir: &Path, name: &str, text: &str) -> RunRecord {
    let manifest = dir.join(format!("{name}.yaml"));
    std::fs::write(&manifest, text).unwrap();
    let out = dir.join(name);
    let model = model();
    let args = [&model, &manifest, &out].map(|p| p.to_str().unwrap());
    run_ok(&[
        "-m",
        args[0],
        "--manifest",
        args[1],
        "-p",
        "Hello world",
        // The scores need it.
        "--flash-attn",
        "off",
        "--out",
        args[2],
    ]);
    RunRecord::read(&out).unwrap()
}

/// The nodes the naming patch names, found instead by op and operand: the
/// same files, bitwise, as by their patched names (on an unpatched tree only
/// the second way works; verify runs that tree).
#[test]
fn nodes_found_by_op_and_operand_are_the_named_ones_bitwise() {
    let by_name = r#"
architecture: gpt2
layers: [0, 11]
checkpoints:
  - { id: cache_k, tensor: "cache_k-{layer}", shape: [head_dim, n_head, n_kv, 1], file: "cache_k_l{layer}" }
  - { id: cache_v, tensor: "cache_v-{layer}", shape: [n_kv, n_head, head_dim, 1], file: "cache_v_l{layer}" }
  - { id: attn_out, tensor: "attn_out-{layer}", shape: [n_embd, n_tokens, 1], file: "attn_out_l{layer}" }
  # Scores keep flash attention off: the V cache transposed, as the shape says.
  - { id: scores, tensor: "kq_soft_max-{layer}", shape: [n_kv, n_tokens, n_head, 1], file: "scores_l{layer}" }
"#;
    let by_operand = by_name
        .replace(
            r#"tensor: "cache_k-{layer}""#,
            r#"op: VIEW, operand: "cache_k_l{layer}""#,
        )
        .replace(
            r#"tensor: "cache_v-{layer}""#,
            r#"op: VIEW, operand: "cache_v_l{layer}""#,
        )
        .replace(
            r#"tensor: "attn_out-{layer}""#,
            r#"op: ADD, operand: "blk.{layer}.attn_output.bias""#,
        );
    let tmp = tempfile::tempdir().unwrap();
    let records = [("name", by_name), ("operand", &by_operand)]
        .map(|(name, text)| run_with(tmp.path(), name, text));
    let seen = |r: &RunRecord| -> Vec<(String, String, String)> {
        r.checkpoints
            .iter()
            .map(|c| (c.file.clone(), c.tensor.clone(), c.sha256.clone()))
            .collect()
    };
    assert_eq!(records[0].checkpoints.len(), 8);
    assert_eq!(seen(&records[0]), seen(&records[1]));
    let attn_out = records[1].checkpoint("attn_out_l11.bin").unwrap();
    assert_eq!(
        attn_out.tensor, "attn_out-11",
        "the node's own name is recorded"
    );
}
