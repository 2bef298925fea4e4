//! What every group of verify's checks works with.

use std::path::{Path, PathBuf};

use anyhow::Result;

use xshell::Shell;

use crate::project::Project;
use crate::runs::extractor::ExtractorRun;

/// The saved reference models' budget in verify (`reference.py`'s `make_room`).
const REFERENCE_CACHE_GB: (&str, &str) = ("LLORCH_REFERENCE_CACHE_GB", "2.5");

/// transformers' models saved by compare are a cache: verify holds it to
/// what its largest model needs (qwen2: 2.4 GB), not all it compares. Called
/// before any thread starts; every reference run after reads it.
pub fn hold_reference_cache() {
    if std::env::var_os(REFERENCE_CACHE_GB.0).is_none() {
        std::env::set_var(REFERENCE_CACHE_GB.0, REFERENCE_CACHE_GB.1);
    }
}

/// What every group of checks works with.
pub struct Ctx<'a> {
    pub project: &'a Project,
    pub sh: Shell,
    /// The release extractor.
    pub exe: PathBuf,
    pub validator: PathBuf,
    pub model: PathBuf,
    pub manifest: PathBuf,
    /// target/llorch/verify, or a directory under it.
    pub work: PathBuf,
    /// Seconds setup took when it built llama.cpp and the extractor from
    /// nothing (a fresh clone): that was a clean build.
    pub clean_setup: Option<f64>,
}

impl<'a> Ctx<'a> {
    /// The extractor on this context's model and manifest, into `out`.
    pub fn run(&self, out: &Path) -> ExtractorRun {
        ExtractorRun::new(&self.exe, &self.model, out).manifest(&self.manifest)
    }

    /// The same checks' context for another model and manifest, working in `work/<name>`.
    pub fn with_model(&self, model: PathBuf, manifest: PathBuf, name: &str) -> Result<Ctx<'a>> {
        Ok(Ctx {
            project: self.project,
            sh: self.project.shell()?,
            exe: self.exe.clone(),
            validator: self.validator.clone(),
            model,
            manifest,
            work: self.work.join(name),
            clean_setup: self.clean_setup,
        })
    }
}
