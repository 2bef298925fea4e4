//! `cargo xtask model --random ARCH --size 1b|7b`: seeded random Hugging
//! Face checkpoints at the real widths of a published model, made by
//! `xtask/python/sized.py` one shard at a time in bfloat16, to test time,
//! memory and disk at the sizes people port (not trained numerics).

use std::path::PathBuf;

use anyhow::{Context, Result};
use llorch_checkpoint_spec::files::sha256_file;
use xshell::cmd;

use super::hf::{tiny, Outtype};
use super::parts::models_dir;
use crate::models::python;
use crate::project::Project;

/// How big a random model is: tiny (2 layers, 128 wide: `tiny.py`'s rule,
/// any architecture), or the widths of a published 1B or 7B model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    #[default]
    Tiny,
    #[value(name = "1b")]
    B1,
    #[value(name = "7b")]
    B7,
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::Tiny => "tiny",
            Size::B1 => "1b",
            Size::B7 => "7b",
        }
    }

    /// What the converter writes unless told: f32 for tiny models (exact),
    /// f16 at real sizes (a 7B f32 GGUF would take 30 GB).
    pub fn outtype(self) -> Outtype {
        match self {
            Size::Tiny => Outtype::F32,
            _ => Outtype::F16,
        }
    }
}

/// A random Hugging Face model of `arch` at `size`, made once into
/// `target/llorch/models/random/<arch>-<size>-s<seed>` (tiny ones where
/// `--tiny` keeps them), and remade when `sized.py` or transformers changes.
pub fn random(project: &Project, arch: &str, size: Size, seed: u64) -> Result<PathBuf> {
    if size == Size::Tiny {
        return tiny(project, arch, seed);
    }
    let dir = models_dir(project)
        .join("random")
        .join(format!("{arch}-{}-s{seed}", size.name()));
    let script = project.root().join("xtask/python/sized.py");
    let rules = sha256_file(&script)?[..12].to_string();
    let (transformers, _) = python::transformers_versions();
    let made = std::fs::read(dir.join("llorch-sized.json")).ok();
    let made: Option<serde_json::Value> = made.and_then(|b| serde_json::from_slice(&b).ok());
    if made.is_some_and(|m| m["sized_py"] == rules.as_str() && m["transformers"] == transformers) {
        return Ok(dir);
    }
    // The same tokenizer as the tiny models, made by the same transformers.
    let tokenizer = models_dir(project)
        .join("tiny")
        .join(format!("tokenizer-smollm2-{transformers}"));
    let gguf = crate::models::catalogue::fetch(project, "smollm2-135m")?;
    let converter = python::converter(project)?;
    let (py, packages) = (&converter.python, &converter.packages);
    let staging = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(dir.parent().unwrap_or(&dir))?;
    let (size_name, seed_text) = (size.name(), seed.to_string());
    let sh = project.shell()?;
    // Its progress goes to the terminal: a 7B model takes minutes.
    let made = cmd!(
        sh,
        "{py} {script} {arch} {size_name} {staging} --seed {seed_text} --tokenizer {tokenizer} --tokenizer-gguf {gguf} --conversion {packages}"
    )
    .quiet()
    .run();
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    made.with_context(|| {
        format!("transformers could not make the {size_name} {arch} model (nothing was kept)")
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staging, &dir)?;
    Ok(dir)
}
