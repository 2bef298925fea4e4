//! `cargo xtask model --hf DIR`, `--tiny ARCH` and `--self-test-hf`: a
//! Hugging Face checkpoint of any architecture the pinned tree's
//! `convert_hf_to_gguf.py` knows, converted by it; tiny random ones made by
//! transformers (`xtask/python/tiny.py`) to test with.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{ensure, Context, Result};
use xshell::cmd;

use super::parts::{check, ensure_tools_built, models_dir, tokenizer_files};
use crate::models::python;
use crate::project::Project;

/// What the converter writes the weights as (`--outtype`): llama.cpp's own names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Outtype {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl Outtype {
    pub fn name(self) -> &'static str {
        match self {
            Outtype::F32 => "f32",
            Outtype::F16 => "f16",
            Outtype::Bf16 => "bf16",
            Outtype::Q8_0 => "q8_0",
        }
    }
}

/// The architectures `--tiny` makes (transformers' model types; `tiny.py` has their shapes).
pub const TINY: &[&str] = &[
    "llama",
    "mistral",
    "qwen3",
    "starcoder2",
    "stablelm",
    "falcon",
    "qwen2_moe",
    "qwen3_moe",
];

/// Converts a Hugging Face checkpoint; returns the GGUF's path. It is kept
/// as `<dir name>-hf-<outtype>.gguf` and converted again when any file of
/// the checkpoint is newer (or with `force`).
pub fn from_hf(project: &Project, dir: &Path, outtype: Outtype, force: bool) -> Result<PathBuf> {
    ensure!(
        dir.join("config.json").is_file(),
        "{} has no config.json: not a Hugging Face model directory",
        dir.display()
    );
    let dir = dir.canonicalize()?;
    let stem = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "hf".into());
    let out = models_dir(project).join(format!("{stem}-hf-{}.gguf", outtype.name()));
    if !force && newest_file(&dir)? <= modified(&out) {
        eprintln!(
            "model: {} is up to date with {}",
            out.display(),
            dir.display()
        );
        return Ok(out);
    }
    let converter = python::converter(project)?;
    std::fs::create_dir_all(models_dir(project))?;
    let tmp = out.with_extension(format!("tmp{}.gguf", std::process::id()));
    let sh = project.shell()?;
    let _env = sh.push_env("PYTHONPATH", &converter.pythonpath);
    let _local = sh.push_env("NO_LOCAL_GGUF", "1");
    let (py, script, outtype) = (&converter.python, &converter.script, outtype.name());
    let started = Instant::now();
    let result = cmd!(
        sh,
        "{py} {script} --outfile {tmp} --outtype {outtype} {dir}"
    )
    .quiet()
    .ignore_status()
    .output()
    .context("cannot start the project's Python")?;
    if !result.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let stderr = String::from_utf8_lossy(&result.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(6).collect();
        anyhow::bail!(
            "the pinned convert_hf_to_gguf.py could not convert {} (nothing was kept):\n  {}",
            dir.display(),
            last.into_iter().rev().collect::<Vec<_>>().join("\n  ")
        );
    }
    std::fs::rename(&tmp, &out)?;
    eprintln!(
        "model: {} converted to {} in {:.1} s",
        dir.display(),
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

/// The latest modification time of the checkpoint's files.
fn newest_file(dir: &Path) -> Result<Option<SystemTime>> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        newest = newest.max(modified(&entry?.path()));
    }
    Ok(newest)
}

/// A tiny random Hugging Face model of `arch` (seeded; SmolLM2's tokenizer,
/// which the converter knows), made once into `target/llorch/models/tiny/<arch>-s<seed>`.
pub fn tiny(project: &Project, arch: &str, seed: u64) -> Result<PathBuf> {
    ensure!(
        TINY.contains(&arch),
        "--tiny {arch}: the tiny architectures are {}",
        TINY.join(", ")
    );
    let dir = models_dir(project)
        .join("tiny")
        .join(format!("{arch}-s{seed}"));
    if dir.join("llorch-tiny.json").is_file() {
        return Ok(dir);
    }
    let tokenizer = models_dir(project).join("tiny").join("tokenizer-smollm2");
    let gguf = crate::models::catalogue::fetch(project, "smollm2-135m")?;
    let py = python::ensure(project)?;
    let script = project.root().join("xtask/python/tiny.py");
    let staging = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let sh = project.shell()?;
    let seed_text = seed.to_string();
    let result = cmd!(
        sh,
        "{py} {script} {arch} {staging} --seed {seed_text} --tokenizer {tokenizer} --tokenizer-gguf {gguf}"
    )
    .quiet()
    .ignore_status()
    .output()
    .context("cannot start the project's Python")?;
    if !result.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        anyhow::bail!(
            "transformers could not make the tiny {arch} model:\n{}",
            String::from_utf8_lossy(&result.stderr).trim_end()
        );
    }
    eprint!("{}", String::from_utf8_lossy(&result.stdout));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staging, &dir)?;
    Ok(dir)
}

/// The --hf path end to end, on a tiny random GPT-2 written by transformers
/// with the real GPT-2 tokenizer (real GPT-2 weights cannot be downloaded here).
pub fn self_test_hf(project: &Project) -> Result<()> {
    let [encoder, vocab] = tokenizer_files(project)?;
    let py = python::ensure(project)?;
    let work = project.work_dir().join("self-test-hf");
    let hf = work.join("tiny-gpt2");
    if hf.exists() {
        std::fs::remove_dir_all(&hf)?;
    }
    std::fs::create_dir_all(&hf)?;
    let sh = project.shell()?;
    let script = format!(
        r#"
import torch, transformers
torch.manual_seed(0)
# n_ctx: as in openai-community/gpt2's config.json, which the converter reads.
config = transformers.GPT2Config(vocab_size=50257, n_positions=128, n_ctx=128, n_embd=64, n_layer=2, n_head=4,
                                 bos_token_id=50256, eos_token_id=50256)
model = transformers.GPT2LMHeadModel(config)
model.save_pretrained({hf:?}, safe_serialization=True)
tok = transformers.GPT2TokenizerFast(vocab_file={encoder:?}, merges_file={vocab:?})
tok.save_pretrained({hf:?})
ids = tok("Hello world")["input_ids"]
assert ids == [15496, 995], ids
print("self-test-hf: wrote a 2-layer, 64-wide random GPT-2 to", {hf:?})
"#,
        hf = hf.display().to_string(),
        encoder = encoder.display().to_string(),
        vocab = vocab.display().to_string(),
    );
    cmd!(sh, "{py} -c {script}")
        .run()
        .context("transformers could not write the tiny GPT-2")?;
    let out = from_hf(project, &hf, Outtype::F32, true)?;
    ensure_tools_built(project)?;
    println!("{}", check(project, &out)?);
    let exe = project
        .root()
        .join("target/release/llorch-checkpoint-model");
    cmd!(sh, "{exe} stats {out}")
        .run()
        .context("llama.cpp could not run the converted model")?;
    println!(
        "self-test-hf: passed ({} converts, loads and runs)",
        hf.display()
    );
    Ok(())
}
