//! What every way of making a model needs: where models are kept, the
//! model tool (`llorch-checkpoint-model`), GPT-2's tokenizer, the dtypes and
//! the check of a GGUF.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_spec::files::write_atomically;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xshell::cmd;

use crate::llama_cpp::build::Backend;
use crate::llama_cpp::fetch;
use crate::project::Project;

/// Where GPT-2's tokenizer files come from.
pub const TIKTOKEN: (&str, &str) = ("tiktoken-rs", "0.12.1");
const TIKTOKEN_CRATE_SHA256: &str =
    "2aeff724640cfe13037336ddf35befdffd2909cbdb65cf041cc8a4cf8c584cfa";
/// The two files taken from it, and their sha256 (checked on every use).
const TOKENIZER_FILES: [(&str, &str); 2] = [
    (
        "encoder.json",
        "6401aa8aac4e480b02ed2713037078c26fab6fc9f1882012e746fe9bd87bc99b",
    ),
    (
        "vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
    #[value(name = "q8_0")]
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Q8_0 => "q8_0",
        }
    }
}

/// Where models are kept.
pub fn models_dir(project: &Project) -> PathBuf {
    project.work_dir().join("models")
}

/// Builds llama.cpp and the extractor package (both binaries); returns the model tool.
pub fn ensure_tools_built(project: &Project) -> Result<PathBuf> {
    crate::llama_cpp::build::pinned_extractor(project, Backend::Cpu)?;
    let exe = project
        .root()
        .join("target/release/llorch-checkpoint-model");
    ensure!(
        exe.is_file(),
        "the extractor build did not produce {}",
        exe.display()
    );
    Ok(exe)
}

/// `encoder.json` and `vocab.bpe` from the pinned tiktoken-rs crate, unpacked
/// once into `target/llorch/tokenizer/`, checked on every use.
pub fn tokenizer_files(project: &Project) -> Result<[PathBuf; 2]> {
    let dir = project
        .work_dir()
        .join("tokenizer")
        .join(format!("{}-{}", TIKTOKEN.0, TIKTOKEN.1));
    let paths = TOKENIZER_FILES.map(|(name, _)| dir.join(name));
    let intact = |p: &Path, sha: &str| {
        std::fs::read(p)
            .map(|b| hex::encode(Sha256::digest(&b)) == sha)
            .unwrap_or(false)
    };
    if TOKENIZER_FILES
        .iter()
        .zip(&paths)
        .all(|((_, sha), p)| intact(p, sha))
    {
        return Ok(paths);
    }
    crate::step::note(
        "model",
        &format!(
            "GPT-2's tokenizer from the {} {} crate",
            TIKTOKEN.0, TIKTOKEN.1
        ),
    );
    let crate_file = fetch::download_crate_file(project, TIKTOKEN.0, TIKTOKEN.1)?;
    let bytes = std::fs::read(&crate_file)
        .with_context(|| format!("cannot read {}", crate_file.display()))?;
    let what = format!("{} {}", TIKTOKEN.0, TIKTOKEN.1);
    fetch::check_sha256(&crate_file, &bytes, &what, TIKTOKEN_CRATE_SHA256, file!())?;
    std::fs::create_dir_all(&dir)?;
    for ((name, sha), path) in TOKENIZER_FILES.iter().zip(&paths) {
        let inner = PathBuf::from(format!("{}-{}/assets/{name}", TIKTOKEN.0, TIKTOKEN.1));
        let content = fetch::read_from_tar_gz(&bytes, &inner)?;
        fetch::check_sha256(
            path,
            &content,
            &format!("{what} assets/{name}"),
            sha,
            file!(),
        )?;
        write_atomically(path, &content)?;
    }
    Ok(paths)
}

/// Checks a GGUF with `llorch-checkpoint-model check`; returns its one-line summary.
pub fn check(project: &Project, path: &Path) -> Result<String> {
    let exe = project
        .root()
        .join("target/release/llorch-checkpoint-model");
    let sh = project.shell()?;
    let out = cmd!(sh, "{exe} check {path}")
        .quiet()
        .ignore_status()
        .output()
        .context("cannot run llorch-checkpoint-model")?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .trim()
            .strip_prefix("error: ")
            .unwrap_or(stderr.trim());
        bail!(
            "{} cannot be used as the GPT-2 model:\n{reason}",
            path.display()
        );
    }
    Ok(stdout)
}
