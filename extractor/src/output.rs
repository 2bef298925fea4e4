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
use crate::manifest::Checkpoint;

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

/// What the writer made of one captured checkpoint (staged, not yet committed).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    pub id: String,
    pub layer: Option<u32>,
    pub step: usize,
    pub tensor: String,
    pub op: &'static str,
    pub ggml_ne: [i64; 4],
    pub shape: Vec<i64>,
    pub source_dtype: &'static str,
    pub buffer: String,
    pub file: String,
    pub sha256: String,
    pub min: f32,
    pub max: f32,
    pub mean: f64,
    pub non_finite: usize,
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

    /// Starts the writer thread: it drains `rx` until every sender is gone.
    pub fn spawn_writer(
        &self,
        checkpoints: Vec<Checkpoint>,
        rx: Receiver<Captured>,
    ) -> JoinHandle<Result<Vec<Written>>> {
        let staging = self.staging.clone();
        let format = self.format;
        std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                let mut written = Vec::new();
                for captured in rx {
                    let cp = &checkpoints[captured.index];
                    let file = file_name(&cp.file_stem, captured.step, format);
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
                        cp.id,
                        cp.tensor,
                        crate::capture::shape_text(&captured.shape),
                        file
                    );
                    written.push(Written {
                        id: cp.id.clone(),
                        layer: cp.layer,
                        step: captured.step,
                        tensor: cp.tensor.clone(),
                        op: captured.op,
                        ggml_ne: captured.ggml_ne,
                        shape: captured.shape,
                        source_dtype: captured.source_dtype,
                        buffer: captured.buffer,
                        file,
                        sha256: hex::encode(Sha256::digest(&bytes)),
                        min,
                        max,
                        mean,
                        non_finite,
                    });
                }
                Ok(written)
            })
            .expect("cannot start the writer thread")
    }

    /// Moves the staged files into the output directory, then writes the run record.
    pub fn commit(
        mut self,
        written: &[Written],
        record: &serde_json::Value,
        extra: &[(&str, &[u8])],
    ) -> Result<()> {
        for (name, bytes) in extra {
            fs::write(self.staging.join(name), bytes)
                .with_context(|| format!("cannot write {} in {}", name, self.staging.display()))?;
        }
        let names = written
            .iter()
            .map(|w| w.file.as_str())
            .chain(extra.iter().map(|(n, _)| *n));
        for name in names {
            fs::rename(self.staging.join(name), self.dir.join(name))
                .with_context(|| format!("cannot move {name} into {}", self.dir.display()))?;
        }
        let json = serde_json::to_vec_pretty(record)?;
        let tmp = self.staging.join("run.json");
        fs::write(&tmp, json).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, self.dir.join("run.json")).context("cannot move run.json into place")?;
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

fn stats(data: &[f32]) -> (f32, f32, f64, usize) {
    let (mut min, mut max, mut sum, mut non_finite) =
        (f32::INFINITY, f32::NEG_INFINITY, 0f64, 0usize);
    for &v in data {
        if !v.is_finite() {
            non_finite += 1;
            continue;
        }
        min = min.min(v);
        max = max.max(v);
        sum += v as f64;
    }
    let finite = data.len() - non_finite;
    let mean = if finite == 0 {
        f64::NAN
    } else {
        sum / finite as f64
    };
    (min, max, mean, non_finite)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
