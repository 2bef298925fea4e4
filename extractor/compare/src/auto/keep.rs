//! `--keep failing`: once the reports are written, a comparison without a
//! manifest keeps the files of the checkpoints over their tolerance and of
//! its first and last layer (a sample of the passing ones), and drops the
//! rest with the whole-graph run and the reference's pass it was laid out
//! from; report.json still holds every checkpoint's figures, and the run's
//! `run.json` lists only the files it kept.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use llorch_checkpoint_report::findings::{Entry, Row};
use llorch_checkpoint_spec::files::write_atomically;
use llorch_checkpoint_spec::record::{RunRecord, FILE};

/// The stems kept: every failing checkpoint, and every checkpoint of the
/// first and last layer compared, and those outside the layers.
pub fn kept(entries: &[Entry], rows: &[Row]) -> BTreeSet<String> {
    let layers: Vec<u32> = entries.iter().filter_map(|e| e.layer).collect();
    let (first, last) = (layers.iter().min().copied(), layers.iter().max().copied());
    entries
        .iter()
        .zip(rows)
        .filter(|(e, r)| !r.pass || e.layer.is_none() || e.layer == first || e.layer == last)
        .map(|(e, _)| e.stem.clone())
        .collect()
}

/// Drops what `kept` leaves out from `out` (llama.cpp's files in `llama/`,
/// the reference's in `reference/<variant>/`, and `auto/`'s whole-graph
/// run, reference pass and layer inputs, unless the graph run is the
/// user's `--run`); returns how many checkpoints kept their files and the bytes freed.
pub fn drop_passing(
    out: &Path,
    entries: &[Entry],
    rows: &[Row],
    own_run: bool,
) -> Result<(usize, u64)> {
    let keep = kept(entries, rows);
    let mut freed = 0;
    let mut remove = |path: &Path| {
        freed += super::budget::bytes_under(path);
        let _ = match path.is_dir() {
            true => std::fs::remove_dir_all(path),
            false => std::fs::remove_file(path),
        };
    };
    for dir in ["reference", "layer-inputs"]
        .into_iter()
        .chain((!own_run).then_some("llama"))
    {
        remove(&out.join("auto").join(dir));
    }
    let variants: Vec<_> = std::fs::read_dir(out.join("reference"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    for e in entries.iter().filter(|e| !keep.contains(&e.stem)) {
        remove(&out.join("llama").join(format!("{}.bin", e.stem)));
        for variant in variants.iter().filter(|v| v.is_dir()) {
            remove(&variant.join(format!("{}.npy", e.stem)));
        }
    }
    // The run record lists what its directory holds.
    let mut record = RunRecord::read(&out.join("llama"))?;
    record
        .checkpoints
        .retain(|c| out.join("llama").join(&c.file).is_file());
    write_atomically(
        &out.join("llama").join(FILE),
        &serde_json::to_vec_pretty(&record)?,
    )?;
    Ok((record.checkpoints.len(), freed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use llorch_checkpoint_spec::manifest::Tolerance;

    const TOLERANCE: Tolerance = Tolerance {
        atol: 0.0,
        atol_of_max: 0.0,
        rtol: 0.0,
        nmse: 0.0,
    };

    fn pair(id: &str, layer: Option<u32>, pass: bool) -> (Entry, Row) {
        let stem = format!("{id}_{}", layer.map_or("x".into(), |l| l.to_string()));
        let entry = Entry {
            id: id.into(),
            layer,
            head_axis: None,
            stem,
            capture: String::new(),
            ops: Vec::new(),
            tolerance: TOLERANCE,
        };
        let row = Row {
            id: id.into(),
            layer,
            file: String::new(),
            shape: vec![1],
            tolerance: TOLERANCE,
            against: Default::default(),
            pass,
            worst_index: vec![0],
            worst_test: 0.0,
            worst_ref: 0.0,
            non_finite_test: 0,
            non_finite_ref: 0,
            truth: "f64".into(),
        };
        (entry, row)
    }

    #[test]
    fn failing_checkpoints_and_the_first_and_last_layer_are_kept() {
        let (entries, rows): (Vec<_>, Vec<_>) = [
            pair("emb", None, true),
            pair("a", Some(0), true),
            pair("a", Some(1), true),
            pair("b", Some(1), false),
            pair("a", Some(2), true),
            pair("a", Some(3), true),
        ]
        .into_iter()
        .unzip();
        let keep = kept(&entries, &rows);
        assert_eq!(
            keep.into_iter().collect::<Vec<_>>(),
            ["a_0", "a_3", "b_1", "emb_x"]
        );
    }
}
