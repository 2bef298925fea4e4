//! One architecture tried end to end on a tiny random model and classified
//! (`tried`), and the conformance table its rows make (`table`): for
//! `cargo xtask conformance` and verify's sample of it.

mod table;
mod tried;

pub use table::{Row, Table, Versions};
pub use tried::try_one;

use anyhow::Result;
use llorch_checkpoint_spec::files::sha256_file;

use crate::llama_cpp::pin::Pin;
use crate::models::python::transformers_versions;
use crate::project::Project;

impl Versions {
    /// What a row made now is made with.
    pub fn now(project: &Project) -> Result<Versions> {
        let pin = Pin::load(&project.pin_file())?;
        let (transformers, converter) = transformers_versions();
        let tiny_py = sha256_file(&project.root().join("xtask/python/tiny.py"))?;
        Ok(Versions {
            llama_cpp: pin.describe(),
            transformers: transformers.into(),
            converter_transformers: converter.into(),
            tiny_py: tiny_py[..12].into(),
        })
    }
}
