//! `compare --sequential`: the prompt as one batch against the same prompt one
//! token at a time (the extractor's `--sequential`), checkpoint by checkpoint
//! and position by position, on the same KV-cache type.
//!
//! A checkpoint's position axis is the dimension its manifest shape writes
//! `n_tokens`; its cache axis the one written `n_kv`. Position i of the batch
//! run is row i of the first, and cells 0..=i of the second; in the
//! sequential run it is pass i (`.step<i>` files), whose cache holds exactly
//! cells 0..=i. Checkpoints with neither axis are not per position and are
//! left out.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_spec::files::write_atomically;
use llorch_checkpoint_spec::manifest::{Checkpoint, Manifest};
use llorch_checkpoint_spec::metric::nmse;
use llorch_checkpoint_spec::record::RunRecord;
use serde::Serialize;

use crate::sides::{Extraction, Extractor};
use llorch_checkpoint_report::text::layer_text;
use llorch_checkpoint_spec::format::{read_values, Values};

/// Two extractor runs of `run` (its `out` the parent directory), one batch
/// and one token at a time, compared position by position: the table, and
/// `sequential.json` written in `run.out`.
pub fn batch_vs_sequential(extractor: &dyn Extractor, run: &Extraction<'_>) -> Result<String> {
    let (batch, one_by_one) = (run.out.join("batch"), run.out.join("sequential"));
    extractor.extract(&Extraction {
        out: &batch,
        ..*run
    })?;
    extractor.extract(&Extraction {
        out: &one_by_one,
        sequential: true,
        ..*run
    })?;
    let rows = compare(&batch, &one_by_one, run.manifest)?;
    let n = RunRecord::read(&batch)?.tokens.len();
    let json = run.out.join("sequential.json");
    let record = serde_json::json!({
        "model": run.model, "manifest": run.manifest, "prompt": run.prompt, "tokens": n, "checkpoints": rows,
    });
    write_atomically(&json, &serde_json::to_vec_pretty(&record)?)?;
    Ok(format!(
        "{}\nper position: {}\n",
        table(&rows, n),
        json.display()
    ))
}

/// One checkpoint of one layer: the error of each position.
#[derive(Serialize)]
pub struct PositionRow {
    pub id: String,
    pub layer: Option<u32>,
    /// Per position: NMSE of the sequential run against the batch run (dB).
    pub nmse_db: Vec<f64>,
    /// Per position: the largest |difference|.
    pub max_abs: Vec<f64>,
    /// Positions whose numbers are bitwise the batch's.
    pub bitwise: usize,
}

/// Compares the batch run `batch` with the sequential run `sequential`.
pub fn compare(batch: &Path, sequential: &Path, manifest: &Path) -> Result<Vec<PositionRow>> {
    let (b, s) = (RunRecord::read(batch)?, RunRecord::read(sequential)?);
    ensure!(
        s.sequential && !b.sequential,
        "expected a batch run and a --sequential run"
    );
    ensure!(b.tokens == s.tokens, "the two runs have other tokens");
    let manifest: Manifest = b.manifest(manifest)?;
    let n = b.tokens.len();
    let mut rows = Vec::new();
    for cp in manifest.graph_order() {
        let (tok, kv) = axes(cp);
        if tok.is_none() && kv.is_none() {
            continue;
        }
        let whole = read_values(&batch.join(format!("{}.bin", cp.file_stem)))?;
        let (mut nmse_db, mut max_abs, mut bitwise) = (Vec::new(), Vec::new(), 0);
        for i in 0..n {
            let file = match i {
                0 => format!("{}.bin", cp.file_stem),
                i => format!("{}.step{i}.bin", cp.file_stem),
            };
            let one = read_values(&sequential.join(&file))
                .with_context(|| format!("position {i} of the sequential run"))?;
            let row = position(&whole, tok.map(|a| (a, i)), kv.map(|a| (a, i + 1)));
            ensure!(
                row.len() == one.data.len(),
                "{file}: {} values, but position {i} of the batch run has {}",
                one.data.len(),
                row.len()
            );
            let (nmse, max, same) = difference(&one.data, &row);
            nmse_db.push(10.0 * nmse.log10());
            max_abs.push(max);
            bitwise += same as usize;
        }
        rows.push(PositionRow {
            id: cp.id.clone(),
            layer: cp.layer,
            nmse_db,
            max_abs,
            bitwise,
        });
    }
    Ok(rows)
}

/// The file axes (row-major) of the positions and of the cache cells.
fn axes(cp: &Checkpoint) -> (Option<usize>, Option<usize>) {
    let n = cp.shape.len();
    let find = |symbol: &str| {
        cp.shape
            .iter()
            .position(|d| d.to_string().trim() == symbol)
            .map(|ggml_axis| n - 1 - ggml_axis)
    };
    (find("n_tokens"), find("n_kv"))
}

/// The values of `t` at index `at.1` of axis `at.0` and in `0..upto.1` of
/// axis `upto.0`, row-major.
fn position(t: &Values, at: Option<(usize, usize)>, upto: Option<(usize, usize)>) -> Vec<f64> {
    let shape = &t.shape;
    let mut index = vec![0usize; shape.len()];
    let mut out = Vec::new();
    for (flat, &v) in t.data.iter().enumerate() {
        let mut rest = flat;
        for (axis, &d) in shape.iter().enumerate().rev() {
            index[axis] = rest % d.max(1);
            rest /= d.max(1);
        }
        let keep = at.is_none_or(|(axis, i)| index[axis] == i)
            && upto.is_none_or(|(axis, n)| index[axis] < n);
        if keep {
            out.push(v);
        }
    }
    out
}

/// NMSE against `reference`, the largest |difference|, and bitwise equality.
fn difference(test: &[f64], reference: &[f64]) -> (f64, f64, bool) {
    let max = test
        .iter()
        .zip(reference)
        .fold(0f64, |max, (t, r)| max.max((t - r).abs()));
    let same = test
        .iter()
        .zip(reference)
        .all(|(t, r)| t.to_bits() == r.to_bits());
    (nmse(test, reference), max, same)
}

/// Per checkpoint: the worst position, the first, the last, and how many are bitwise equal.
pub fn table(rows: &[PositionRow], n_tokens: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nbatch of {n_tokens} tokens vs one token at a time: NMSE of each position (dB; -inf: bitwise equal)\n\
         {:<16} {:>3}  {:>10} {:>10} {:>16} {:>10}  {:>9}",
        "checkpoint", "l", "position 0", "last", "worst (at)", "max |diff|", "bitwise"
    );
    for r in rows {
        let worst =
            r.nmse_db
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |(wi, w), (i, &x)| if x > w { (i, x) } else { (wi, w) },
                );
        let max = r.max_abs.iter().copied().fold(0f64, f64::max);
        let _ = writeln!(
            s,
            "{:<16} {:>3}  {:>10.1} {:>10.1} {:>10.1} ({:>3}) {:>10.2e}  {:>4}/{:<4}",
            r.id,
            layer_text(r.layer),
            r.nmse_db[0],
            r.nmse_db[r.nmse_db.len() - 1],
            worst.1,
            worst.0,
            max,
            r.bitwise,
            r.nmse_db.len()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_a_row_and_the_cells_up_to_it() {
        // File shape [1, heads 2, queries 3, keys 3] (scores): position 1 is
        // query row 1, keys 0..=1, of both heads.
        let t = Values {
            shape: vec![1, 2, 3, 3],
            data: (0..18).map(f64::from).collect(),
        };
        assert_eq!(
            position(&t, Some((2, 1)), Some((3, 2))),
            [3.0, 4.0, 12.0, 13.0]
        );
        // A cache [1, cells 3, heads 1, dim 2]: position 1 is cells 0 and 1.
        let cache = Values {
            shape: vec![1, 3, 1, 2],
            data: (0..6).map(f64::from).collect(),
        };
        assert_eq!(position(&cache, None, Some((1, 2))), [0.0, 1.0, 2.0, 3.0]);
        let (nmse, max, same) = difference(&[1.0, 2.0], &[1.0, 2.0]);
        assert_eq!((nmse, max, same), (0.0, 0.0, true));
        let (nmse, max, same) = difference(&[1.0, 2.5], &[1.0, 2.0]);
        assert!((nmse - 0.5).abs() < 1e-12 && max == 0.5 && !same);
    }
}
