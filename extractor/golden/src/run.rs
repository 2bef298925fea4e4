//! A run directory of the extractor, and the checkpoints it holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use llorch_checkpoint_spec::files::sha256_file;
use llorch_checkpoint_spec::format;
use llorch_checkpoint_spec::record::{CheckpointRecord, RunRecord};

use crate::verdict::judge;
use crate::{Error, Result, Tensor, Tolerance, Verdict};

/// One extractor run, opened: `run.json` read and checked (its schema
/// version, its checkpoints' files named), checkpoint data read on demand.
#[derive(Debug, Clone)]
pub struct Run {
    dir: PathBuf,
    record: RunRecord,
    /// The manifest's tolerance per checkpoint file, where the manifest the
    /// run names can still be read.
    manifest_tolerances: BTreeMap<String, Tolerance>,
}

/// One checkpoint of a run: what it is, where its data is, how it is judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    id: String,
    layer: Option<u32>,
    step: usize,
    node: String,
    shape: Vec<usize>,
    path: PathBuf,
    manifest_tolerance: Option<Tolerance>,
}

impl Run {
    /// Opens the run directory `dir` (what `cargo xtask extract --out DIR` wrote).
    pub fn open(dir: impl AsRef<Path>) -> Result<Run> {
        let dir = dir.as_ref().to_path_buf();
        let record = RunRecord::read(&dir).with_context(|| {
            format!(
                "{} is not a run directory of llorch-checkpoint: make one with `cargo xtask extract --out {}`",
                dir.display(),
                dir.display()
            )
        })?;
        let manifest_tolerances = manifest_tolerances(&record, &dir);
        Ok(Run {
            dir,
            record,
            manifest_tolerances,
        })
    }

    /// The directory it was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The prompt's token ids, as llama.cpp ran them: feed your engine these.
    pub fn tokens(&self) -> &[i32] {
        &self.record.tokens
    }

    /// The model's architecture (GGUF `general.architecture`, e.g. `gpt2`).
    pub fn architecture(&self) -> &str {
        &self.record.model.architecture
    }

    /// The model file llama.cpp ran, found as run.json names it (from the
    /// working directory, or from a directory above the run's) with the
    /// sha256 it recorded; `None` when it is nowhere to be found.
    pub fn model(&self) -> Option<PathBuf> {
        locate(
            &self.record.model.path,
            &self.dir,
            Some(&self.record.model.sha256),
        )
    }

    /// Every checkpoint in the run, in the order the run wrote them (graph
    /// order within a pass; the prompt's pass is step 0).
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.record
            .checkpoints
            .iter()
            .map(|c| self.entry(c))
            .collect()
    }

    /// The prompt pass's checkpoint `id` of `layer` (`None`, or any
    /// `Option<u32>`, for one outside the layers, such as the logits).
    ///
    /// ```no_run
    /// # let run = llorch_checkpoint_golden::Run::open("checkpoints")?;
    /// let q = run.checkpoint("02_q", 0)?;
    /// assert_eq!(q.layer(), Some(0));
    /// # Ok::<(), llorch_checkpoint_golden::Error>(())
    /// ```
    pub fn checkpoint(&self, id: &str, layer: impl Into<Option<u32>>) -> Result<Checkpoint> {
        self.checkpoint_at(id, layer, 0)
    }

    /// Checkpoint `id` of `layer` in pass `step` (0 is the prompt's, N the
    /// N-th generated token's, or position N with `--sequential`).
    pub fn checkpoint_at(
        &self,
        id: &str,
        layer: impl Into<Option<u32>>,
        step: usize,
    ) -> Result<Checkpoint> {
        let layer = layer.into();
        self.record
            .checkpoints
            .iter()
            .find(|c| c.id == id && c.layer == layer && c.step == step)
            .map(|c| self.entry(c))
            .ok_or_else(|| {
                let at = layer.map(|l| format!(" of layer {l}")).unwrap_or_default();
                Error::msg(format!(
                    "the run in {} has no checkpoint `{id}`{at} in pass {step}; it has {}",
                    self.dir.display(),
                    self.known()
                ))
            })
    }

    /// The prompt pass's checkpoint read from the ggml node `name` (`attn_norm-0`).
    pub fn by_node(&self, name: &str) -> Result<Checkpoint> {
        self.record
            .checkpoint_by_tensor(name)
            .map(|c| self.entry(c))
            .ok_or_else(|| {
                Error::msg(format!(
                    "the run in {} captured no node `{name}`",
                    self.dir.display()
                ))
            })
    }

    /// The prompt pass's checkpoints of `layer`, in graph order.
    pub fn layer(&self, layer: u32) -> Vec<Checkpoint> {
        let of_layer = |c: &&CheckpointRecord| c.layer == Some(layer) && c.step == 0;
        self.record
            .checkpoints
            .iter()
            .filter(of_layer)
            .map(|c| self.entry(c))
            .collect()
    }

    fn entry(&self, c: &CheckpointRecord) -> Checkpoint {
        Checkpoint {
            id: c.id.clone(),
            layer: c.layer,
            step: c.step,
            node: c.tensor.clone(),
            shape: c.shape.iter().map(|&d| d.max(0) as usize).collect(),
            path: self.dir.join(&c.file),
            manifest_tolerance: self.manifest_tolerances.get(&c.file).copied(),
        }
    }

    /// `01_ln1_output@0, 02_q@0, ...`: the prompt pass's ids, for messages.
    fn known(&self) -> String {
        let ids: Vec<String> = self
            .record
            .checkpoints
            .iter()
            .filter(|c| c.step == 0)
            .map(|c| match c.layer {
                Some(l) => format!("{}@{l}", c.id),
                None => c.id.clone(),
            })
            .collect();
        match ids.len() {
            0 => "none".into(),
            n if n > 12 => format!("{}, ... ({n} in all)", ids[..12].join(", ")),
            _ => ids.join(", "),
        }
    }
}

/// The manifest's tolerance of each checkpoint file, as the run expanded
/// the manifest; empty when the manifest cannot be read any more.
fn manifest_tolerances(record: &RunRecord, dir: &Path) -> BTreeMap<String, Tolerance> {
    let Some(info) = &record.manifest else {
        return BTreeMap::new();
    };
    let Some(Ok(manifest)) =
        locate(&info.path, dir, info.sha256.as_deref()).map(|p| record.manifest(&p))
    else {
        return BTreeMap::new();
    };
    let by_stem: BTreeMap<&str, Tolerance> = manifest
        .checkpoints
        .iter()
        .map(|c| (c.file_stem.as_str(), Tolerance::from_spec(c.tolerance)))
        .collect();
    record
        .checkpoints
        .iter()
        .filter_map(|c| {
            let stem = c.file.split('.').next()?;
            Some((c.file.clone(), *by_stem.get(stem)?))
        })
        .collect()
}

/// A file run.json names by a path that may be relative to where the
/// extractor ran: as it is, or under a directory above the run's (a run in
/// the project's `checkpoints/`), the first whose sha256 is `sha256`'s.
fn locate(path: &Path, run_dir: &Path, sha256: Option<&str>) -> Option<PathBuf> {
    let absolute = std::path::absolute(run_dir).ok()?;
    std::iter::once(path.to_path_buf())
        .chain(absolute.ancestors().map(|a| a.join(path)))
        .filter(|p| p.is_file())
        .find(|p| sha256.is_none_or(|want| sha256_file(p).is_ok_and(|got| got == want)))
}

impl Checkpoint {
    /// The manifest's id, e.g. `01_ln1_output`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The layer, or `None` for a checkpoint outside the layers.
    pub fn layer(&self) -> Option<u32> {
        self.layer
    }

    /// The pass: 0 is the prompt's.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The ggml node it was read from, e.g. `attn_norm-0`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Row-major, outermost first: `[n_tokens, n_embd]` for a norm output.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The file's name in the run directory, e.g. `checkpoint_02_q.bin`.
    pub fn file(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    /// The tolerance the manifest holds llama.cpp to against float64 here,
    /// where the manifest the run names can still be read.
    pub fn manifest_tolerance(&self) -> Option<Tolerance> {
        self.manifest_tolerance
    }

    /// Reads the data (converted to f32 when the run wrote it).
    pub fn tensor(&self) -> Result<Tensor> {
        let t = format::read(&self.path)?;
        let shape: Vec<usize> = t.shape.iter().map(|&d| d.max(0) as usize).collect();
        if shape != self.shape {
            return Err(Error::msg(format!(
                "{} holds shape {shape:?}, but run.json says {:?}: the run directory was changed after it was written",
                self.path.display(),
                self.shape
            )));
        }
        Tensor::new(shape, t.data)
            .ok_or_else(|| Error::msg(format!("{} is malformed", self.path.display())))
    }

    /// `engine` (row-major, this checkpoint's shape) against llama.cpp's
    /// data, judged by [`Tolerance::against_llama_cpp`].
    pub fn compare(&self, engine: &[f32]) -> Result<Verdict> {
        self.compare_with(engine, Tolerance::against_llama_cpp())
    }

    /// The same, judged by `tolerance` (for example [`Checkpoint::manifest_tolerance`]).
    pub fn compare_with(&self, engine: &[f32], tolerance: Tolerance) -> Result<Verdict> {
        Ok(judge(&self.describe(), engine, &self.tensor()?, tolerance))
    }

    /// `checkpoint 02_q layer 0 (checkpoint_02_q.bin, node Qcur-0)`.
    fn describe(&self) -> String {
        let layer = self
            .layer
            .map(|l| format!(" layer {l}"))
            .unwrap_or_default();
        let step = match self.step {
            0 => String::new(),
            s => format!(" pass {s}"),
        };
        format!(
            "checkpoint {}{layer}{step} ({}, node {})",
            self.id,
            self.file(),
            self.node
        )
    }
}
