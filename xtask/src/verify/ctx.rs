//! What every group of verify's checks works with.

use std::path::PathBuf;

use anyhow::Result;

use xshell::Shell;

use crate::project::Project;

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
    /// The release extractor built on the unpatched tree (the build section
    /// makes it; none with `--quick` or when it failed).
    pub unpatched: Option<PathBuf>,
}

impl<'a> Ctx<'a> {
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
            unpatched: self.unpatched.clone(),
        })
    }
}
