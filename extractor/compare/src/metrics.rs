//! How far a checkpoint is from its reference: the metrics, the score of a
//! run against every reference variant, and the first checkpoint over its
//! tolerance.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Result};
use llorch_checkpoint_spec::format::read_values;
use llorch_checkpoint_spec::manifest::Tolerance;
use serde::Serialize;

use llorch_checkpoint_spec::metric::{metrics, unravel, Metrics};

use crate::entries::Entry;

/// What one run scored, per checkpoint (graph order) and reference variant.
#[derive(Serialize)]
pub struct Row {
    pub id: String,
    pub layer: Option<u32>,
    pub file: String,
    pub shape: Vec<usize>,
    pub tolerance: Tolerance,
    /// Variant -> metrics.
    pub against: BTreeMap<String, Metrics>,
    pub pass: bool,
    /// The worst element against f64: index, llama.cpp's value, the reference's.
    pub worst_index: Vec<usize>,
    pub worst_test: f64,
    pub worst_ref: f64,
    /// NaN or Inf values in llama.cpp's tensor and in the f64 reference.
    pub non_finite_test: usize,
    pub non_finite_ref: usize,
    /// The variant the verdict is against (`f64`; `f32` where f64 cannot run).
    pub truth: String,
}

impl Row {
    /// The metrics the verdict rests on.
    pub fn verdict(&self) -> &Metrics {
        &self.against[&self.truth]
    }

    /// The f32 reference's metrics, and the truth's.
    pub fn f32_and_truth(&self) -> (Metrics, Metrics) {
        (
            self.against
                .get(crate::entries::F32)
                .copied()
                .unwrap_or(*self.verdict()),
            *self.verdict(),
        )
    }
}

/// Scores every checkpoint in graph order; with `fail_fast`, stops after the
/// first over its tolerance.
pub fn score_run(
    run: &Path,
    reference: &Path,
    entries: &[Entry],
    fail_fast: bool,
    variants: &[String],
) -> Result<Vec<Row>> {
    let truth = crate::entries::truth(variants);
    let mut rows: Vec<Row> = Vec::new();
    for e in entries {
        if fail_fast && rows.last().is_some_and(|r| !r.pass) {
            break;
        }
        let file = format!("{}.bin", e.stem);
        let test = read_values(&run.join(&file))?;
        let mut against = BTreeMap::new();
        for variant in variants {
            let r = read_values(&reference.join(variant).join(format!("{}.npy", e.stem)))?;
            ensure!(
                r.shape == test.shape,
                "{}: the reference has shape {:?}, the checkpoint file {:?}: fix the `reference:` ops of `{}` in the manifest",
                file,
                r.shape,
                test.shape,
                e.id
            );
            against.insert(
                variant.to_string(),
                metrics(&test.data, &r.data, &e.tolerance),
            );
        }
        let m = against[truth];
        let r64 = read_values(&reference.join(truth).join(format!("{}.npy", e.stem)))?;
        rows.push(Row {
            id: e.id.clone(),
            layer: e.layer,
            file,
            worst_index: unravel(m.worst, &test.shape),
            worst_test: test.data[m.worst],
            worst_ref: r64.data[m.worst],
            non_finite_test: non_finite(&test.data),
            non_finite_ref: non_finite(&r64.data),
            shape: test.shape,
            tolerance: e.tolerance,
            pass: m.passes(&e.tolerance),
            against,
            truth: truth.to_string(),
        });
    }
    Ok(rows)
}

fn non_finite(data: &[f64]) -> usize {
    data.iter().filter(|v| !v.is_finite()).count()
}

/// The verdict: `None` when every checkpoint is within tolerance, or the first
/// one (graph order) that is not, with its worst element.
pub fn first_failure(rows: &[Row]) -> Option<String> {
    let row = rows.iter().find(|r| !r.pass)?;
    let m = *row.verdict();
    let t = row.tolerance;
    let layer = row.layer.map(|l| format!(" layer {l}")).unwrap_or_default();
    if row.non_finite_test + row.non_finite_ref > 0 {
        // No tolerance speaks of NaN: say so instead of an element's error.
        return Some(format!(
            "checkpoint {}{layer} ({}) holds {} NaN or Inf values in llama.cpp and {} in PyTorch, of {} \
             (a corrupt model, or an overflow in the graph: the checkpoints before it show where they start)",
            row.id,
            row.file,
            row.non_finite_test,
            row.non_finite_ref,
            row.shape.iter().product::<usize>(),
        ));
    }
    Some(format!(
        "checkpoint {}{layer} ({}) exceeds its tolerance against the {} reference: element {:?} is {:.7} in llama.cpp, {:.7} in PyTorch \
         (|diff| {:.3e} > atol {:.1e} + rtol {:.0e}*|ref|); {} of {} elements outside, NMSE {:.3e} (limit {:.0e})",
        row.id,
        row.file,
        row.truth,
        row.worst_index,
        row.worst_test,
        row.worst_ref,
        (row.worst_test - row.worst_ref).abs(),
        m.atol,
        t.rtol,
        m.n_outside,
        row.shape.iter().product::<usize>(),
        m.nmse,
        t.nmse
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::F64;

    #[test]
    fn a_single_perturbed_element_is_found_and_named() {
        let reference: Vec<f64> = (0..2 * 12 * 64)
            .map(|i| ((i as f64) * 0.37).sin())
            .collect();
        let mut test: Vec<f64> = reference.iter().map(|r| r + 1e-7).collect();
        test[777] += 1e-2;
        let tol = Tolerance {
            atol: 1e-5,
            atol_of_max: 0.0,
            rtol: 1e-4,
            nmse: 1e-6,
        };
        let m = metrics(&test, &reference, &tol);
        assert_eq!((m.n_outside, m.worst), (1, 777));
        assert_eq!(unravel(777, &[2, 12, 64]), [1, 0, 9]);
        let row = Row {
            id: "02_q".into(),
            layer: Some(0),
            file: "checkpoint_02_q.bin".into(),
            shape: vec![2, 12, 64],
            tolerance: tol,
            against: [(F64.to_string(), m)].into(),
            pass: m.passes(&tol),
            worst_index: unravel(m.worst, &[2, 12, 64]),
            worst_test: test[777],
            worst_ref: reference[777],
            non_finite_test: 0,
            non_finite_ref: 0,
            truth: F64.into(),
        };
        let ok = Row {
            id: "01_ln1_output".into(),
            pass: true,
            ..Row {
                against: [(F64.to_string(), metrics(&reference, &reference, &tol))].into(),
                ..row_clone(&row)
            }
        };
        let why = first_failure(&[ok, row_clone(&row)]).unwrap();
        assert!(
            why.starts_with("checkpoint 02_q layer 0 (checkpoint_02_q.bin)")
                && why.contains("element [1, 0, 9]"),
            "{why}"
        );

        // A NaN fails every tolerance, and the verdict says it is a NaN.
        test[5] = f64::NAN;
        let m = metrics(&test, &reference, &tol);
        assert!(!m.passes(&tol) && m.worst_ratio.is_nan());
        assert!(
            m.nmse.is_nan() && m.cosine.is_nan() && m.max_rel.is_nan(),
            "no perfect score: {m:?}"
        );
        let nan = Row {
            against: [(F64.to_string(), m)].into(),
            pass: m.passes(&tol),
            non_finite_test: non_finite(&test),
            ..row
        };
        let why = first_failure(&[nan]).unwrap();
        assert!(
            why.starts_with("checkpoint 02_q layer 0 (checkpoint_02_q.bin) holds 1 NaN or Inf values in llama.cpp and 0 in PyTorch, of 1536"),
            "{why}"
        );
    }

    fn row_clone(r: &Row) -> Row {
        Row {
            id: r.id.clone(),
            layer: r.layer,
            file: r.file.clone(),
            shape: r.shape.clone(),
            tolerance: r.tolerance,
            against: r.against.clone(),
            pass: r.pass,
            worst_index: r.worst_index.clone(),
            worst_test: r.worst_test,
            worst_ref: r.worst_ref,
            non_finite_test: r.non_finite_test,
            non_finite_ref: r.non_finite_ref,
            truth: r.truth.clone(),
        }
    }
}
