//! `--candidate DIR`: a third side, the tensors another implementation wrote,
//! compared with llama.cpp's and with the f64 reference.
//!
//! The candidate writes one file per checkpoint, named by the manifest's
//! `file` as the extractor names it (`.bin` as documented in the README, or
//! `.npy` of f32, f16 or f64), and says which tokens it ran: a `run.json` of
//! this tool, or a `tokens.json` (a JSON array of ids). The ids must be the
//! run's. A missing file, another shape or dtype is a message for that file;
//! the comparison goes on with the others.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_spec::manifest::Tolerance;
use llorch_checkpoint_spec::record::RunRecord;

use llorch_checkpoint_spec::metric::{metrics, unravel, AGAINST_LLAMA_CPP};

use llorch_checkpoint_spec::format::{read_values, Values};

use llorch_checkpoint_report::findings::{
    first_divergence, first_failure, CandidateRow, Entry, Row, Verdict,
};
use llorch_checkpoint_report::text::layer_text;

/// Which tolerance judges the candidate against llama.cpp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CandidateTolerance {
    /// [`AGAINST_LLAMA_CPP`], one for every checkpoint.
    #[default]
    LlamaCpp,
    /// Each checkpoint's own (the manifest's, with `--tolerance` overrides),
    /// as llama.cpp is judged against float64.
    Manifest,
}

impl CandidateTolerance {
    /// `llama-cpp` or `manifest`, as `--candidate-tolerance` takes it.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "llama-cpp" => Ok(Self::LlamaCpp),
            "manifest" => Ok(Self::Manifest),
            other => Err(format!(
                "`{other}`: say llama-cpp (the default) or manifest"
            )),
        }
    }

    pub fn for_entry(self, entry: &Entry) -> Tolerance {
        match self {
            Self::LlamaCpp => AGAINST_LLAMA_CPP,
            Self::Manifest => entry.tolerance,
        }
    }

    /// What judged the pair, for the table and the report.
    pub fn describe(self) -> String {
        match self {
            Self::LlamaCpp => format!(
                "the candidate-vs-llama.cpp default (|diff| <= {}*max|llama.cpp|, NMSE <= {:.0e}; \
                 --candidate-tolerance manifest for each checkpoint's own)",
                AGAINST_LLAMA_CPP.atol_of_max, AGAINST_LLAMA_CPP.nmse
            ),
            Self::Manifest => "each checkpoint's own, as for llama.cpp vs f64".into(),
        }
    }
}

fn verdict(test: &Values, reference: &Values, tolerance: Tolerance) -> Verdict {
    let m = metrics(&test.data, &reference.data, &tolerance);
    Verdict {
        metrics: m,
        pass: m.passes(&tolerance),
        tolerance,
        max_index: unravel(m.max_abs_at, &test.shape),
        test: test.data[m.max_abs_at],
        reference: reference.data[m.max_abs_at],
    }
}

/// The token ids the candidate ran: its `run.json`, or its `tokens.json`.
pub fn tokens(dir: &Path) -> Result<Vec<i64>> {
    if dir.join("run.json").is_file() {
        let record = RunRecord::read(dir)?;
        return Ok(record.tokens.iter().map(|&t| t.into()).collect());
    }
    let path = dir.join("tokens.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "the candidate {} has neither run.json nor tokens.json: write the prompt's token ids as a JSON array \
             to {} so that both sides are known to have run the same input",
            dir.display(),
            path.display()
        )
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON array of token ids", path.display()))
}

/// Refuses a candidate that ran other tokens than llama.cpp.
pub fn check_tokens(dir: &Path, run_tokens: &[i32]) -> Result<()> {
    let theirs = tokens(dir)?;
    let ours: Vec<i64> = run_tokens.iter().map(|&t| t.into()).collect();
    ensure!(
        theirs == ours,
        "the candidate ran other tokens than llama.cpp: {} ids {:?}... against {} ids {:?}...; \
         feed both the same ids (the extractor takes --tokens)",
        theirs.len(),
        &theirs[..theirs.len().min(8)],
        ours.len(),
        &ours[..ours.len().min(8)]
    );
    Ok(())
}

/// `reference` is the directory of the variant verdicts are against (`<reference>/f64`).
pub fn score(
    dir: &Path,
    run: &Path,
    reference: &Path,
    entries: &[Entry],
    against_llama: CandidateTolerance,
) -> Vec<CandidateRow> {
    entries
        .iter()
        .map(|e| {
            let (file, compared) = match compare_one(dir, run, reference, e, against_llama) {
                Ok((file, vs_llama, vs_f64)) => (file, Ok((vs_llama, vs_f64))),
                Err((file, problem)) => (file, Err(problem)),
            };
            let (problem, vs_llama, vs_f64) = match compared {
                Ok((a, b)) => (None, Some(a), Some(b)),
                Err(p) => (Some(p), None, None),
            };
            CandidateRow {
                id: e.id.clone(),
                layer: e.layer,
                file,
                problem,
                vs_llama,
                vs_f64,
            }
        })
        .collect()
}

type Compared = (String, Verdict, Verdict);

fn compare_one(
    dir: &Path,
    run: &Path,
    reference: &Path,
    e: &Entry,
    against_llama: CandidateTolerance,
) -> Result<Compared, (String, String)> {
    let found = ["bin", "npy"]
        .iter()
        .map(|ext| format!("{}.{ext}", e.stem))
        .find(|f| dir.join(f).is_file());
    let Some(file) = found else {
        return Err((
            format!("{}.bin", e.stem),
            format!("missing: no {0}.bin or {0}.npy", e.stem),
        ));
    };
    let fail = |what: anyhow::Error| (file.clone(), format!("{what:#}"));
    let candidate = read_values(&dir.join(&file)).map_err(fail)?;
    let llama = read_values(&run.join(format!("{}.bin", e.stem))).map_err(fail)?;
    let f64_ref = read_values(&reference.join(format!("{}.npy", e.stem))).map_err(fail)?;
    if candidate.shape != llama.shape {
        return Err((
            file,
            format!(
                "shape {:?}, but llama.cpp's file is {:?}",
                candidate.shape, llama.shape
            ),
        ));
    }
    Ok((
        file,
        verdict(&candidate, &llama, against_llama.for_entry(e)),
        verdict(&candidate, &f64_ref, e.tolerance),
    ))
}

/// The three pairs side by side: NMSE in dB and the verdict of each.
pub fn table(rows: &[CandidateRow], llama: &[Row], against_llama: CandidateTolerance) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\ncandidate: NMSE in dB and verdict; against llama.cpp by {}, against f64 by each checkpoint's tolerance\n\
         {:<16} {:>3}  {:>18} {:>18} {:>18}",
        against_llama.describe(),
        "checkpoint", "l", "cand vs llama.cpp", "cand vs f64", "llama.cpp vs f64"
    );
    let cell = |v: &Option<Verdict>| match v {
        Some(v) => format!(
            "{:.1} {}",
            v.metrics.nmse_db,
            if v.pass { "ok" } else { "DIVERGES" }
        ),
        None => "-".into(),
    };
    for (r, l) in rows.iter().zip(llama) {
        let ours = *l.verdict();
        let _ = writeln!(
            s,
            "{:<16} {:>3}  {:>18} {:>18} {:>18}{}",
            r.id,
            layer_text(r.layer),
            cell(&r.vs_llama),
            cell(&r.vs_f64),
            format!("{:.1} {}", ours.nmse_db, if l.pass { "ok" } else { "FAIL" }),
            r.problem
                .as_ref()
                .map(|p| format!("  {}: {p}", r.file))
                .unwrap_or_default()
        );
    }
    for pair in ["llama.cpp", "f64"] {
        let first = first_divergence(rows, pair);
        let _ = writeln!(
            s,
            "first divergence, candidate vs {pair}: {}",
            first.as_deref().unwrap_or("none")
        );
    }
    let ours = first_failure(llama);
    let _ = writeln!(
        s,
        "first divergence, llama.cpp vs f64: {}",
        ours.as_deref().unwrap_or("none")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use llorch_checkpoint_report::findings::F64;
    use llorch_checkpoint_spec::format;
    use llorch_checkpoint_spec::manifest::Tolerance;

    fn entry(id: &str, layer: u32) -> Entry {
        Entry {
            id: id.into(),
            layer: Some(layer),
            head_axis: None,
            stem: format!("{id}_l{layer}"),
            capture: String::new(),
            ops: Vec::new(),
            tolerance: Tolerance {
                atol: 1e-6,
                atol_of_max: 0.0,
                rtol: 1e-6,
                nmse: 1e-12,
            },
        }
    }

    fn write(path: &Path, shape: &[i64], data: &[f32]) {
        format::write_file(path, shape, data).unwrap();
    }

    #[test]
    fn the_first_divergence_is_named_with_its_element_and_problems_do_not_stop_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let (cand, run, reference) = (
            tmp.path().join("cand"),
            tmp.path().join("run"),
            tmp.path().join("ref"),
        );
        for d in [&cand, &run, &reference.join(F64)] {
            std::fs::create_dir_all(d).unwrap();
        }
        let entries: Vec<Entry> = (0..3)
            .flat_map(|l| [entry("ffn_out", l), entry("l_out", l)])
            .collect();
        let data: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
        for e in &entries {
            write(&run.join(format!("{}.bin", e.stem)), &[2, 3], &data);
            write(
                &reference.join(F64).join(format!("{}.npy", e.stem)),
                &[2, 3],
                &data,
            );
            if e.stem == "l_out_l0" {
                continue; // missing from the candidate
            }
            let mut mine = data.clone();
            if e.stem == "ffn_out_l1" {
                mine[4] *= 1.01;
            }
            let ext = if e.layer == Some(2) { "npy" } else { "bin" };
            write(&cand.join(format!("{}.{ext}", e.stem)), &[2, 3], &mine);
        }
        let rows = score(
            &cand,
            &run,
            &reference.join(F64),
            &entries,
            CandidateTolerance::Manifest,
        );
        assert_eq!(
            rows[1].problem.as_deref(),
            Some("missing: no l_out_l0.bin or l_out_l0.npy")
        );
        assert!(
            rows[3].vs_llama.as_ref().unwrap().pass,
            "l_out of layer 1 is untouched"
        );
        assert!(
            rows[4].vs_llama.as_ref().unwrap().pass,
            "npy files are read too"
        );
        // The missing file comes first in graph order; past it, layer 1's ffn_out.
        let first = first_divergence(&rows[2..], "llama.cpp").unwrap();
        assert!(
            first.starts_with("checkpoint ffn_out layer 1 (ffn_out_l1.bin): element [1, 1] is 1.5150000 in the candidate, 1.5000000 in llama.cpp"),
            "{first}"
        );
        assert!(first_divergence(&rows, "f64").unwrap().contains("missing"));
    }

    #[test]
    fn a_candidate_of_other_tokens_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = check_tokens(tmp.path(), &[1, 2]).unwrap_err().to_string();
        assert!(err.contains("neither run.json nor tokens.json"), "{err}");
        std::fs::write(tmp.path().join("tokens.json"), "[1, 3]").unwrap();
        let err = check_tokens(tmp.path(), &[1, 2]).unwrap_err().to_string();
        assert!(err.contains("ran other tokens than llama.cpp"), "{err}");
        std::fs::write(tmp.path().join("tokens.json"), "[1, 2]").unwrap();
        check_tokens(tmp.path(), &[1, 2]).unwrap();
    }
}
