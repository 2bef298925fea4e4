//! Validates a run directory: it holds exactly one complete run (every file
//! `run.json` lists, with its sha256, and nothing else), and every checkpoint
//! the manifest names exists, parses, has the manifest's shape for that run
//! and holds no NaN or Inf. The same code serves the tests, `cargo xtask
//! verify` and users (`llorch-checkpoint-validate`).

use std::path::Path;

use anyhow::Result;

use crate::format;
use crate::manifest::fmt_ne;
use crate::output::file_name;
use crate::record::RunRecord;
use llorch_checkpoint_spec::files::sha256_file;

/// The verdict on one file: `Ok(description)` or `Err(defect)`.
pub struct FileVerdict {
    pub file: String,
    pub verdict: Result<String, String>,
}

/// Checks the prompt pass's checkpoint files of `dir` against the manifest at
/// `manifest`, expanded as the run expanded it (`--layers`).
pub fn check_run(dir: &Path, manifest: &Path) -> Result<Vec<FileVerdict>> {
    let record = RunRecord::read(dir)?;
    let manifest = record.manifest(manifest)?;

    let mut verdicts = Vec::new();
    for cp in &manifest.checkpoints {
        let file = file_name(&cp.file_stem, 0, record.format);
        let expected = cp.resolve(&record.symbols)?.file_shape();
        let sha = record.checkpoint(&file).map(|r| r.sha256.as_str());
        let verdict = check_file(&dir.join(&file), &expected, sha);
        verdicts.push(FileVerdict { file, verdict });
    }
    Ok(verdicts)
}

/// Whether `dir` holds exactly one complete run: each file `run.json` lists
/// (checkpoints and logits) present with its sha256, and no other file.
pub fn check_complete(dir: &Path) -> Result<Vec<FileVerdict>> {
    let record = RunRecord::read(dir)?;
    let listed = record
        .checkpoints
        .iter()
        .map(|c| (c.file.as_str(), c.sha256.as_str()))
        .chain([(record.logits.file.as_str(), record.logits.sha256.as_str())]);
    let mut verdicts: Vec<FileVerdict> = listed
        .map(|(file, sha)| FileVerdict {
            file: file.to_string(),
            verdict: match sha256_file(&dir.join(file)) {
                Ok(actual) if actual == sha => Ok("listed in run.json, sha256 matches".into()),
                Ok(actual) => Err(format!(
                    "{file}: sha256 {actual} differs from run.json's {sha}"
                )),
                Err(_) => Err(format!("{file}: listed in run.json but missing")),
            },
        })
        .collect();
    let mut present: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    present.sort();
    for name in present {
        if name != crate::record::FILE && !verdicts.iter().any(|v| v.file == name) {
            verdicts.push(FileVerdict {
                verdict: Err(format!(
                    "{name}: not listed in run.json (left by another run?)"
                )),
                file: name,
            });
        }
    }
    Ok(verdicts)
}

/// One file: parse, shape, finiteness, checksum. The error says what is wrong.
pub fn check_file(
    path: &Path,
    expected_shape: &[i64],
    expected_sha256: Option<&str>,
) -> Result<String, String> {
    if !path.exists() {
        return Err(format!("{} is missing", path.display()));
    }
    let tensor = format::read(path).map_err(|e| format!("{e:#}"))?;
    if tensor.shape != expected_shape {
        return Err(format!(
            "{}: shape {} differs from the manifest's {}",
            path.display(),
            fmt_ne(&tensor.shape),
            fmt_ne(expected_shape)
        ));
    }
    let bad = tensor.data.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(format!("{}: {bad} NaN or Inf values", path.display()));
    }
    match expected_sha256 {
        None => return Err(format!("{}: not listed in run.json", path.display())),
        Some(sha) => {
            let actual = sha256_file(path).map_err(|e| format!("{e:#}"))?;
            if actual != sha {
                return Err(format!(
                    "{}: sha256 {actual} differs from run.json's {sha}",
                    path.display()
                ));
            }
        }
    }
    Ok(format!(
        "shape {}, {} values, finite, sha256 matches run.json",
        fmt_ne(&tensor.shape),
        tensor.data.len()
    ))
}
