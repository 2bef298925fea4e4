//! How far each checkpoint is from its reference: a run scored against
//! every reference variant, one row per checkpoint (the rows and the first
//! checkpoint over its tolerance are the report crate's findings).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Result};
use llorch_checkpoint_spec::format::read_values;

use llorch_checkpoint_spec::metric::{metrics, unravel};

use llorch_checkpoint_report::findings::{Entry, Row};

/// Scores every checkpoint in graph order; with `fail_fast`, stops after the
/// first over its tolerance.
pub fn score_run(
    run: &Path,
    reference: &Path,
    entries: &[Entry],
    fail_fast: bool,
    variants: &[String],
) -> Result<Vec<Row>> {
    let truth = llorch_checkpoint_report::findings::truth(variants);
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

#[cfg(test)]
mod tests {
    use super::*;
    use llorch_checkpoint_report::findings::{first_failure, F64};
    use llorch_checkpoint_spec::manifest::Tolerance;

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
