//! The manifest parser and the shape resolver: the first 80 bytes are the
//! run's symbols (a hostile GGUF chooses them), the rest the manifest's text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llorch_checkpoint_spec::manifest::{Manifest, Symbols};

fuzz_target!(|bytes: &[u8]| {
    if bytes.len() < 80 {
        return;
    }
    let (head, text) = bytes.split_at(80);
    let v: Vec<i64> = head
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let symbols = Symbols {
        n_embd: v[0],
        n_head: v[1],
        n_head_kv: v[2],
        head_dim: v[3],
        n_embd_gqa: v[4],
        n_ff: v[5],
        n_vocab: v[6],
        n_ctx: v[7],
        n_tokens: v[8],
        n_kv: v[9],
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(manifest) = Manifest::parse(text) else {
        return;
    };
    for cp in &manifest.checkpoints {
        if let Ok(resolved) = cp.resolve(&symbols) {
            let _ = resolved.file_shape();
            let _ = resolved.keep(resolved.ne);
            let _ = resolved.keep([v[0], v[1], v[2], v[3]]);
        }
    }
});
