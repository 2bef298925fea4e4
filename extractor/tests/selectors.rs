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

/// The node `--list-nodes` shows with `op` and an operand named `operand`
/// (the first in graph order): its name.
fn listed(listing: &str, op: &str, operand: &str) -> String {
    listing
        .lines()
        .find_map(|line| {
            // `name op type [shape] <- operands`; a name may hold spaces.
            let (node, operands) = line.split_once(" <- ")?;
            let words: Vec<&str> = node.split('[').next()?.split_whitespace().collect();
            let (name, listed_op) = (words[..words.len() - 2].join(" "), words[words.len() - 2]);
            let has = operands.split(", ").any(|o| o.trim() == operand);
            (listed_op == op && has).then_some(name)
        })
        .unwrap_or_else(|| panic!("no {op} of {operand} in the listing"))
}

/// The nodes llama.cpp leaves unnamed or names after their source, found by
/// op and operand: the cache as attention reads it (a VIEW; the cache write,
/// a SET_ROWS, has the same name) and the attention output (`node_<n>`). Each
/// is the node `--list-nodes` shows with that op and operand, and selecting
/// the attention output by that name gives the same bits.
#[test]
fn nodes_found_by_op_and_operand_are_the_ones_the_listing_shows() {
    let by_operand = r#"
architecture: gpt2
layers: [0, 11]
checkpoints:
  - { id: cache_k, op: VIEW, operand: "cache_k_l{layer}", shape: [head_dim, n_head, n_kv, 1], file: "cache_k_l{layer}" }
  - { id: cache_v, op: VIEW, operand: "cache_v_l{layer}", shape: [n_kv, n_head, head_dim, 1], file: "cache_v_l{layer}" }
  - { id: attn_out, op: ADD, operand: "blk.{layer}.attn_output.bias", shape: [n_embd, n_tokens, 1], file: "attn_out_l{layer}" }
"#;
    let model = model();
    let out = common::extractor(&[
        "-m",
        model.to_str().unwrap(),
        "-p",
        "Hello world",
        "--flash-attn",
        "off",
        "--list-nodes",
    ]);
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let record = run_with(tmp.path(), "operand", by_operand);
    assert_eq!(record.checkpoints.len(), 6);
    for layer in [0, 11] {
        let recorded = |file: &str| {
            record
                .checkpoint(&format!("{file}_l{layer}.bin"))
                .unwrap()
                .tensor
                .clone()
        };
        for cache in ["cache_k", "cache_v"] {
            let operand = format!("{cache}_l{layer}");
            assert_eq!(recorded(cache), listed(&listing, "VIEW", &operand));
            assert_eq!(recorded(cache), format!("{operand} (view)"));
        }
        let bias = format!("blk.{layer}.attn_output.bias");
        let attn_out = listed(&listing, "ADD", &bias);
        assert!(attn_out.starts_with("node_"), "{attn_out}");
        assert_eq!(recorded("attn_out"), attn_out);
    }
    // The same node by the name the listing gives it: the same bits.
    let name = listed(&listing, "ADD", "blk.0.attn_output.bias");
    let by_name = format!(
        "architecture: gpt2\nlayers: [0]\ncheckpoints:\n  - {{ id: attn_out, tensor: \"{name}\", shape: [n_embd, n_tokens, 1], file: attn_out_l0 }}\n"
    );
    let named = run_with(tmp.path(), "name", &by_name);
    assert_eq!(
        named.checkpoint("attn_out_l0.bin").unwrap().sha256,
        record.checkpoint("attn_out_l0.bin").unwrap().sha256
    );
}
