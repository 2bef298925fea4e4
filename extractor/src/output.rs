//! The output directory: locked, staged, committed.
//!
//! Checkpoint files are written by a writer thread into a hidden staging
//! directory inside the output directory; only when the whole run succeeded
//! are they renamed into place, then `run.json` is written (also by rename).
//! A failed or interrupted run therefore leaves no checkpoint file behind, and
//! an exclusive lock on `.llorch.lock` keeps two runs from interleaving.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::capture::Captured;
use crate::format::{self, Format};
use crate::record::{CheckpointRecord, RunRecord};

const LOCK_FILE: &str = ".llorch.lock";
const STAGING_PREFIX: &str = ".staging-";

pub struct Output {
    dir: PathBuf,
    staging: PathBuf,
    format: Format,
    /// The run made `dir`: if it fails, it removes `dir` again.
    created: bool,
    committed: bool,
    _lock: File,
}

impl Output {
    /// Creates and locks the output directory; fails before any inference if
    /// it cannot be written or another run holds it.
    pub fn open(dir: &Path, format: Format) -> Result<Output> {
        let unwritable = || {
            format!(
                "cannot write to the output directory {}; choose another with --out, or fix its permissions",
                dir.display()
            )
        };
        let created = !dir.exists();
        fs::create_dir_all(dir).with_context(unwritable)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .with_context(unwritable)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => bail!(
                "another extraction is writing to {} (it holds {}); wait for it to finish or use another --out",
                dir.display(),
                LOCK_FILE
            ),
            Err(fs::TryLockError::Error(e)) => return Err(e).with_context(unwritable),
        }
        // Staging directories of runs that were killed: ours to clean, we hold the lock.
        for entry in fs::read_dir(dir).with_context(unwritable)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
            {
                fs::remove_dir_all(entry.path()).with_context(unwritable)?;
            }
        }
        let staging = dir.join(format!("{STAGING_PREFIX}{}", std::process::id()));
        fs::create_dir(&staging).with_context(unwritable)?;
        Ok(Output {
            dir: dir.to_path_buf(),
            staging,
            format,
            created,
            committed: false,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the writer thread: it drains `rx` until every sender is gone,
    /// and returns the files' records and the time it spent writing them.
    pub fn spawn_writer(
        &self,
        rx: Receiver<Captured>,
    ) -> JoinHandle<Result<(Vec<CheckpointRecord>, f64)>> {
        let staging = self.staging.clone();
        let format = self.format;
        std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                let mut written = Vec::new();
                let mut busy = std::time::Duration::ZERO;
                for captured in rx {
                    let started = std::time::Instant::now();
                    let file = file_name(&captured.file_stem, captured.step, format);
                    let mut bytes = Vec::with_capacity(captured.data.len() * 4 + 64);
                    format::write(format, &mut bytes, &captured.shape, &captured.data)?;
                    let path = staging.join(&file);
                    fs::write(&path, &bytes).with_context(|| {
                        format!(
                            "cannot write {} (disk full or directory removed?)",
                            path.display()
                        )
                    })?;
                    let (min, max, mean, non_finite) = stats(&captured.data);
                    log::info!(
                        "  {:<24} {:<18} {:>18}  {}",
                        captured.id,
                        captured.tensor,
                        crate::capture::shape_text(&captured.shape),
                        file
                    );
                    written.push(CheckpointRecord {
                        id: captured.id,
                        layer: captured.layer,
                        step: captured.step,
                        tensor: captured.tensor,
                        op: captured.op.to_string(),
                        ggml_ne: captured.ggml_ne,
                        shape: captured.shape,
                        source_dtype: captured.source_dtype.to_string(),
                        buffer: captured.buffer,
                        file,
                        sha256: hex::encode(Sha256::digest(&bytes)),
                        min,
                        max,
                        mean,
                        non_finite,
                    });
                    busy += started.elapsed();
                }
                Ok((written, busy.as_secs_f64() * 1e3))
            })
            .expect("cannot start the writer thread")
    }

    /// Moves the staged files into the output directory, then writes the run record.
    pub fn commit(mut self, record: &RunRecord, extra: &[(&str, &[u8])]) -> Result<()> {
        for (name, bytes) in extra {
            fs::write(self.staging.join(name), bytes)
                .with_context(|| format!("cannot write {} in {}", name, self.staging.display()))?;
        }
        let names = record
            .checkpoints
            .iter()
            .map(|w| w.file.as_str())
            .chain(extra.iter().map(|(n, _)| *n));
        for name in names {
            fs::rename(self.staging.join(name), self.dir.join(name))
                .with_context(|| format!("cannot move {name} into {}", self.dir.display()))?;
        }
        let tmp = self.staging.join(crate::record::FILE);
        fs::write(&tmp, record.to_json())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, self.dir.join(crate::record::FILE))
            .context("cannot move run.json into place")?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // Committed or not, the staging directory goes: a failed run leaves nothing,
        // not even the directory it made (remove_dir only takes an empty one).
        let _ = fs::remove_dir_all(&self.staging);
        if self.created && !self.committed {
            let _ = fs::remove_file(self.dir.join(LOCK_FILE));
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

/// The prompt pass keeps the manifest's names; later passes get `.stepN`.
pub fn file_name(stem: &str, step: usize, format: Format) -> String {
    match step {
        0 => format!("{stem}.{}", format.extension()),
        s => format!("{stem}.step{s}.{}", format.extension()),
    }
}

/// Min, max and mean over the finite values (`None` without any), and how many are not finite.
fn stats(data: &[f32]) -> (Option<f32>, Option<f32>, Option<f64>, usize) {
    let (mut min, mut max, mut sum, mut finite) = (f32::INFINITY, f32::NEG_INFINITY, 0f64, 0usize);
    for &v in data.iter().filter(|v| v.is_finite()) {
        min = min.min(v);
        max = max.max(v);
        sum += v as f64;
        finite += 1;
    }
    if finite == 0 {
        return (None, None, None, data.len());
    }
    (
        Some(min),
        Some(max),
        Some(sum / finite as f64),
        data.len() - finite,
    )
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
