//! What every group of verify's checks works with.

use std::path::PathBuf;

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
}
