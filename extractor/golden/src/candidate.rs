//! Your engine's tensors as a candidate directory, for
//! `cargo xtask compare --candidate DIR`: one file per checkpoint, named as
//! the run names it, and `tokens.json`, the ids both sides ran.

use std::path::{Path, PathBuf};

use anyhow::Context;
use llorch_checkpoint_spec::files::write_atomically;
use llorch_checkpoint_spec::format;

use crate::{Checkpoint, Error, Result, Run};

/// The file format of a candidate's tensors (both hold f32 data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The tool's own `.bin` (the README's "Checkpoint files").
    #[default]
    Bin,
    /// NumPy's `.npy`.
    Npy,
}

/// A candidate directory being written: filled beside its final place and
/// renamed there by [`Candidate::finish`], so the directory holds a whole
/// candidate or nothing; dropped unfinished, it leaves nothing behind.
///
/// ```no_run
/// use llorch_checkpoint_golden::{Candidate, Format, Run};
/// # fn my_engine(_: &[i32]) -> Vec<f32> { Vec::new() }
/// let run = Run::open("checkpoints")?;
/// let mut candidate = Candidate::new("my-engine", &run, Format::Bin)?;
/// let ffn = run.checkpoint("07_ffn_out", 0)?;
/// candidate.write(&ffn, &my_engine(run.tokens()))?;
/// candidate.finish()?; // then: cargo xtask compare --run checkpoints --candidate my-engine
/// # Ok::<(), llorch_checkpoint_golden::Error>(())
/// ```
#[derive(Debug)]
pub struct Candidate {
    out: PathBuf,
    staging: Option<PathBuf>,
    tokens: Vec<i32>,
    format: Format,
}

impl Candidate {
    /// Starts a candidate of `run`'s tokens in `out`, which must not exist
    /// or be an empty directory (an earlier candidate is never mixed in).
    pub fn new(out: impl AsRef<Path>, run: &Run, format: Format) -> Result<Candidate> {
        let out = std::path::absolute(out.as_ref()).context("the candidate's directory")?;
        let occupied = out.exists()
            && (!out.is_dir() || std::fs::read_dir(&out).map_or(true, |mut d| d.next().is_some()));
        if occupied {
            return Err(Error::msg(format!(
                "{} exists and is not an empty directory: name a new one (a candidate is written whole)",
                out.display()
            )));
        }
        let parent = out
            .parent()
            .context("the candidate's directory has no parent")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let name = out
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("candidate");
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("cannot clear {}", staging.display()))?;
        }
        std::fs::create_dir(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        Ok(Candidate {
            out,
            staging: Some(staging),
            tokens: run.tokens().to_vec(),
            format,
        })
    }

    /// Writes the engine's `data` (row-major, the checkpoint's shape) as
    /// `checkpoint`'s file.
    pub fn write(&mut self, checkpoint: &Checkpoint, data: &[f32]) -> Result<()> {
        let expected: usize = checkpoint.shape().iter().product();
        if data.len() != expected {
            return Err(Error::msg(format!(
                "{} layer {:?}: the engine's tensor has {} elements, the checkpoint's shape {:?} holds {expected}",
                checkpoint.id(),
                checkpoint.layer(),
                data.len(),
                checkpoint.shape()
            )));
        }
        let (spec_format, ext) = match self.format {
            Format::Bin => (format::Format::Bin, "bin"),
            Format::Npy => (format::Format::Npy, "npy"),
        };
        let file = checkpoint.file();
        let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
        let shape: Vec<i64> = checkpoint.shape().iter().map(|&d| d as i64).collect();
        let mut bytes = Vec::with_capacity(data.len() * 4 + 128);
        format::write(spec_format, &mut bytes, &shape, data)?;
        write_atomically(&self.staging()?.join(format!("{stem}.{ext}")), &bytes)?;
        Ok(())
    }

    /// Writes `tokens.json` and moves the directory into place; its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let staging = self.staging()?.to_path_buf();
        let tokens = serde_json::to_vec(&self.tokens).context("the token ids")?;
        write_atomically(&staging.join("tokens.json"), &tokens)?;
        if self.out.is_dir() {
            std::fs::remove_dir(&self.out)
                .with_context(|| format!("cannot replace {}", self.out.display()))?;
        }
        std::fs::rename(&staging, &self.out).with_context(|| {
            format!(
                "cannot move {} to {}",
                staging.display(),
                self.out.display()
            )
        })?;
        self.staging = None;
        Ok(self.out.clone())
    }

    fn staging(&self) -> Result<&Path> {
        self.staging
            .as_deref()
            .ok_or_else(|| Error::msg("the candidate is finished"))
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        if let Some(staging) = self.staging.take() {
            let _ = std::fs::remove_dir_all(staging);
        }
    }
}
