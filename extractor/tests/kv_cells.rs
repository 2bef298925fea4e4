//! Every-node capture and a KV cache's padding: only the filled cells are
//! written unless `--keep-padding`, and they are the whole node's first cells.
mod common;

use std::path::{Path, PathBuf};

use common::{model, read, run_ok};
use llorch_checkpoint_extractor::record::RunRecord;

/// Every node of layer 0 and the caches, cut (the default) and whole (`--keep-padding`).
fn cache_runs(dir: &Path, flash_attn: &str) -> [(RunRecord, PathBuf); 2] {
    let model = model();
    ["cut", "whole"].map(|how| {
        let out = dir.join(format!("{how}-{flash_attn}"));
        let mut args = vec![
            "-m",
            model.to_str().unwrap(),
            "--tensors",
            "*-0*,*cache*l0*",
            "-p",
            "Hello world, this is",
            "-n",
            "0",
            "--flash-attn",
            flash_attn,
            "--out",
            out.to_str().unwrap(),
        ];
        if how == "whole" {
            args.push("--keep-padding");
        }
        run_ok(&args);
        (RunRecord::read(&out).unwrap(), out)
    })
}

#[test]
fn a_kv_caches_nodes_keep_only_their_filled_cells_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    for flash_attn in ["on", "off"] {
        let [(cut, cut_dir), (whole, whole_dir)] = cache_runs(tmp.path(), flash_attn);
        assert!(!cut.keep_padding && whole.keep_padding);
        let n_kv = cut.symbols.n_kv as usize;
        assert_eq!(n_kv, 5);
        let mut cut_nodes = 0;
        for (c, w) in cut.checkpoints.iter().zip(&whole.checkpoints) {
            assert_eq!((&c.tensor, c.ggml_ne), (&w.tensor, w.ggml_ne));
            let (a, b) = (read(&cut_dir, &c.file), read(&whole_dir, &w.file));
            let axes: Vec<usize> = (0..a.shape.len())
                .filter(|&i| a.shape[i] != b.shape[i])
                .collect();
            if axes.is_empty() {
                continue;
            }
            // One axis, cut to the filled cells: the whole node's first n_kv there.
            assert_eq!(
                axes.len(),
                1,
                "{}: {:?} vs {:?}",
                c.tensor,
                a.shape,
                b.shape
            );
            let axis = axes[0];
            assert_eq!(a.shape[axis] as usize, n_kv, "{}", c.tensor);
            assert!(c.tensor.contains("cache"), "{} is no cache node", c.tensor);
            let inner: usize = b.shape[axis + 1..].iter().product::<i64>() as usize;
            let (outer_b, outer_a) = (b.shape[axis] as usize * inner, n_kv * inner);
            for (ra, rb) in a.data.chunks(outer_a).zip(b.data.chunks(outer_b)) {
                assert!(
                    ra.iter()
                        .zip(&rb[..outer_a])
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{}: the cut cells differ from the whole node's",
                    c.tensor
                );
            }
            cut_nodes += 1;
        }
        // K and V: the write, the view and its permutation; without flash
        // attention V's transposed write interleaves its cells and stays whole.
        let expected = if flash_attn == "on" { 6 } else { 5 };
        assert_eq!(cut_nodes, expected, "flash attention {flash_attn}");
    }
}
