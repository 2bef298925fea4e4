//! `cargo xtask model --hf DIR` and `--self-test-hf`: a Hugging Face GPT-2
//! converted with the pinned tree's `convert_hf_to_gguf.py`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use xshell::cmd;

use llorch_checkpoint_spec::files::sha256_file;

use super::parts::{check, ensure_tools_built, models_dir, tokenizer_files, Dtype};
use crate::project::Project;
use crate::python;

/// Converts a Hugging Face GPT-2 directory; returns the GGUF's path.
pub fn from_hf(project: &Project, dir: &Path, dtype: Dtype, force: bool) -> Result<PathBuf> {
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
    let out = models_dir(project).join(format!("{stem}-hf-{}.gguf", dtype.name()));
    if !force && out.is_file() {
        eprintln!(
            "model: {} exists (pass --force to reconvert)",
            out.display()
        );
    } else {
        let converter = python::converter(project)?;
        std::fs::create_dir_all(models_dir(project))?;
        let tmp = out.with_extension(format!("tmp{}.gguf", std::process::id()));
        let outtype = dtype.name();
        let sh = project.shell()?;
        let _env = sh.push_env("PYTHONPATH", &converter.pythonpath);
        let _local = sh.push_env("NO_LOCAL_GGUF", "1");
        let (py, script) = (&converter.python, &converter.script);
        let started = Instant::now();
        let result = cmd!(
            sh,
            "{py} {script} --outfile {tmp} --outtype {outtype} {dir}"
        )
        .run();
        if let Err(err) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(err).with_context(|| {
                format!("convert_hf_to_gguf.py could not convert {}", dir.display())
            });
        }
        std::fs::rename(&tmp, &out)?;
        eprintln!(
            "model: converted in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    ensure_tools_built(project)?;
    println!("{}", check(project, &out)?);
    println!("model: {} sha256 {}", out.display(), sha256_file(&out)?);
    Ok(out)
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
    let out = from_hf(project, &hf, Dtype::F32, true)?;
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
