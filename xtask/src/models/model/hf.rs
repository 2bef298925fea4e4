//! `cargo xtask model --hf DIR`, `--tiny ARCH` and `--self-test-hf`: a
//! Hugging Face checkpoint of any architecture the pinned tree's
//! `convert_hf_to_gguf.py` knows, converted by it; tiny random ones made by
//! transformers (`xtask/python/tiny.py`) to test with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_spec::files::sha256_file;
use sha2::{Digest, Sha256};
use xshell::cmd;

use super::parts::{check, ensure_tools_built, models_dir, tokenizer_files};
use crate::llama_cpp::fetch;
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

/// The architectures `--tiny` makes: transformers' causal-LM model types
/// whose class the pinned converter registers, each with that class's name.
pub fn tiny_architectures(project: &Project) -> Result<BTreeMap<String, String>> {
    let converter = python::converter(project)?;
    let script = project.root().join("xtask/python/tiny.py");
    let (python, packages) = (&converter.python, &converter.packages);
    let sh = project.shell()?;
    let out = cmd!(sh, "{python} {script} --list --conversion {packages}")
        .quiet()
        .read()
        .context("tiny.py could not list the architectures")?;
    serde_json::from_str(&out).context("tiny.py --list printed no JSON")
}

/// Converts a Hugging Face checkpoint; returns the GGUF's path. It is kept
/// as `<dir name>-<key>-hf-<outtype>.gguf`, the key a digest of the
/// checkpoint's files and the converter script: two checkpoints in
/// directories of the same name never share a conversion, and an edited
/// checkpoint (or a moved pin) is converted again. `force` converts anyway.
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
    let script = fetch::ensure_tree(project, false)?.join("convert_hf_to_gguf.py");
    let key = content_key(&dir, &script)?;
    let out = models_dir(project).join(format!("{stem}-{key}-hf-{}.gguf", outtype.name()));
    if !force && out.is_file() {
        eprintln!(
            "model: {} is already the conversion of {}",
            out.display(),
            dir.display()
        );
        return Ok(out);
    }
    let converter = python::converter(project)?;
    std::fs::create_dir_all(models_dir(project))?;
    let tmp = out.with_extension(format!("tmp{}.gguf", std::process::id()));
    let staging = out.with_extension(format!("staging{}", std::process::id()));
    let staged = staged_for_converter(&dir, &staging)?;
    let input = staged.as_deref().unwrap_or(&dir);
    let sh = project.shell()?;
    let _env = sh.push_env("PYTHONPATH", &converter.pythonpath);
    let _local = sh.push_env("NO_LOCAL_GGUF", "1");
    let (py, script, outtype) = (&converter.python, &converter.script, outtype.name());
    let started = Instant::now();
    let result = cmd!(
        sh,
        "{py} {script} --outfile {tmp} --outtype {outtype} {input}"
    )
    .quiet()
    .ignore_status()
    .output();
    let _ = std::fs::remove_dir_all(&staging);
    let result = result.context("cannot start the project's Python")?;
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

/// A checkpoint as the converter's transformers 4.x reads it. transformers 5
/// saves a tokenizer as `tokenizer_class: TokenizersBackend`, which 4.x does
/// not know, and its `extra_special_tokens` as a list, where 4.x wants a
/// map: for such a checkpoint, `staging` holds links to its files and its
/// `tokenizer_config.json` rewritten to what 4.x reads (the same
/// `tokenizer.json` as a `PreTrainedTokenizerFast`, the extra tokens among
/// the additional special ones). None where 4.x reads it as it is.
fn staged_for_converter(dir: &Path, staging: &Path) -> Result<Option<PathBuf>> {
    let config = dir.join("tokenizer_config.json");
    let Ok(text) = std::fs::read(&config) else {
        return Ok(None);
    };
    let mut json: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not JSON", config.display()))?;
    let Some(map) = json.as_object_mut() else {
        return Ok(None);
    };
    let mut changed = false;
    if map.get("tokenizer_class").and_then(|c| c.as_str()) == Some("TokenizersBackend") {
        map.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        changed = true;
    }
    if let Some(serde_json::Value::Array(extra)) = map.remove("extra_special_tokens") {
        let additional = map
            .entry("additional_special_tokens")
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let Some(list) = additional.as_array_mut() {
            list.extend(extra);
        }
        changed = true;
    }
    if !changed {
        return Ok(None);
    }
    let _ = std::fs::remove_dir_all(staging);
    std::fs::create_dir_all(staging)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path != config {
            std::os::unix::fs::symlink(&path, staging.join(path.file_name().unwrap_or_default()))?;
        }
    }
    std::fs::write(
        staging.join("tokenizer_config.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    Ok(Some(staging.to_path_buf()))
}

/// The first 12 hex digits of a sha256 over the converter script and each
/// file of the checkpoint (name and content, in name order; subdirectories
/// and hidden files are not the converter's input). Hashing streams: a 5 GB
/// checkpoint takes a few seconds.
fn content_key(dir: &Path, script: &Path) -> Result<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if entry.file_type()?.is_file() && !hidden {
            files.push(entry.path());
        }
    }
    files.sort();
    let mut key = Sha256::new();
    for file in std::iter::once(script).chain(files.iter().map(PathBuf::as_path)) {
        key.update(file.file_name().unwrap_or_default().as_encoded_bytes());
        key.update([0]);
        key.update(sha256_file(file)?.as_bytes());
        key.update([b'\n']);
    }
    Ok(hex::encode(key.finalize())[..12].to_string())
}

/// Which transformers saves a tiny model: the reference's (5.x), or the
/// converter's (4.57.6), whose files differ (the tokenizer's class above all).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SavedBy {
    Reference,
    Converter,
}

/// A tiny random Hugging Face model of `arch` (seeded; SmolLM2's tokenizer,
/// which the converter knows), saved by the reference's transformers, made
/// once into `target/llorch/models/tiny/<arch>-s<seed>`.
pub fn tiny(project: &Project, arch: &str, seed: u64) -> Result<PathBuf> {
    tiny_saved_by(project, arch, seed, SavedBy::Reference)
}

/// Where [`tiny`] makes `arch`'s model.
pub fn tiny_dir(project: &Project, arch: &str, seed: u64) -> PathBuf {
    models_dir(project)
        .join("tiny")
        .join(format!("{arch}-s{seed}"))
}

/// [`tiny`], saved by either transformers (the converter's into `<arch>-s<seed>-t4`).
pub fn tiny_saved_by(project: &Project, arch: &str, seed: u64, by: SavedBy) -> Result<PathBuf> {
    let suffix = match by {
        SavedBy::Reference => "",
        SavedBy::Converter => "-t4",
    };
    let dir = tiny_dir(project, arch, seed).with_file_name(format!("{arch}-s{seed}{suffix}"));
    // Made by the transformers that saves it now, or made again.
    let (reference, converter) = python::transformers_versions();
    let wanted = match by {
        SavedBy::Reference => reference,
        SavedBy::Converter => converter,
    };
    let made = std::fs::read(dir.join("llorch-tiny.json")).ok();
    let made: Option<serde_json::Value> = made.and_then(|b| serde_json::from_slice(&b).ok());
    // ... and by this tiny.py, whose rules make it.
    let script = project.root().join("xtask/python/tiny.py");
    let rules = &sha256_file(&script)?[..12];
    if made.is_some_and(|m| m["transformers"] == wanted && m["tiny_py"] == rules) {
        return Ok(dir);
    }
    // Each transformers reads the tokenizer files it saved.
    let tokenizer = models_dir(project)
        .join("tiny")
        .join(format!("tokenizer-smollm2-{wanted}"));
    let gguf = crate::models::catalogue::fetch(project, "smollm2-135m")?;
    let converter = python::converter(project)?;
    let (py, packages) = (&converter.python, &converter.packages);
    let staging = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let sh = project.shell()?;
    let _site = (by == SavedBy::Converter)
        .then(|| sh.push_env("PYTHONPATH", python::converter_site(project)));
    let seed_text = seed.to_string();
    let result = cmd!(
        sh,
        "{py} {script} {arch} {staging} --seed {seed_text} --tokenizer {tokenizer} --tokenizer-gguf {gguf} --conversion {packages}"
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
# transformers 5 names the files `vocab` and `merges`; 4.x `vocab_file` and `merges_file`.
files = dict(vocab={encoder:?}, merges={vocab:?})
if int(transformers.__version__.split(".")[0]) < 5:
    files = dict(vocab_file=files["vocab"], merges_file=files["merges"])
tok = transformers.GPT2TokenizerFast(**files)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conversion_key_follows_content_not_the_directory_name() {
        let root = tempfile::tempdir().unwrap();
        let script = root.path().join("convert_hf_to_gguf.py");
        std::fs::write(&script, "# the converter").unwrap();
        let checkpoint = |parent: &str, config: &str| {
            let dir = root.path().join(parent).join("model");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("config.json"), config).unwrap();
            std::fs::write(dir.join("model.safetensors"), [1u8, 2, 3]).unwrap();
            dir
        };
        let a = content_key(&checkpoint("a", "{\"n\": 1}"), &script).unwrap();
        let b = content_key(&checkpoint("b", "{\"n\": 2}"), &script).unwrap();
        let c = checkpoint("c", "{\"n\": 1}");
        std::fs::write(c.join(".DS_Store"), "not an input").unwrap();
        std::fs::create_dir(c.join(".cache")).unwrap();
        assert_eq!(a.len(), 12);
        assert_ne!(
            a, b,
            "same directory name, other content: another conversion"
        );
        assert_eq!(
            a,
            content_key(&c, &script).unwrap(),
            "same content: the same conversion"
        );
        std::fs::write(&script, "# a moved pin's converter").unwrap();
        assert_ne!(
            a,
            content_key(&c, &script).unwrap(),
            "another converter: converted again"
        );
    }

    #[test]
    fn a_tokenizer_saved_by_transformers_5_is_staged_as_4_reads_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("model");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors"), [1u8, 2, 3]).unwrap();
        let config = dir.join("tokenizer_config.json");
        let staging = root.path().join("staged");
        std::fs::write(&config, r#"{"tokenizer_class": "PreTrainedTokenizerFast"}"#).unwrap();
        assert_eq!(
            staged_for_converter(&dir, &staging).unwrap(),
            None,
            "4.x reads it"
        );
        std::fs::write(
            &config,
            r#"{"tokenizer_class": "TokenizersBackend", "backend": "tokenizers", "extra_special_tokens": ["<a>"], "additional_special_tokens": ["<b>"]}"#,
        )
        .unwrap();
        let staged = staged_for_converter(&dir, &staging).unwrap().unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(staged.join("tokenizer_config.json")).unwrap())
                .unwrap();
        assert_eq!(json["tokenizer_class"], "PreTrainedTokenizerFast");
        assert_eq!(
            json["additional_special_tokens"],
            serde_json::json!(["<b>", "<a>"])
        );
        assert!(json.get("extra_special_tokens").is_none());
        assert_eq!(
            std::fs::read(staged.join("model.safetensors")).unwrap(),
            [1, 2, 3],
            "the other files are the checkpoint's, linked"
        );
        assert!(
            std::fs::read_to_string(&config)
                .unwrap()
                .contains("TokenizersBackend"),
            "the original is untouched"
        );
    }
}
