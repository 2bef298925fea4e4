//! The comparison library's two sides as xtask provides them: llama.cpp
//! runs through the extractor built here, and reference tensors from
//! `xtask/python/reference.py` in the project's Python environment, which
//! loads the same GGUF into transformers (eager attention) and captures what
//! each checkpoint's `reference:` names, in float32 and float64.

use std::cell::OnceCell;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use llorch_checkpoint_compare::self_test;
use llorch_checkpoint_compare::sides::{Extraction, Extractor, Prompt, Reference, ReferenceJob};
use llorch_checkpoint_spec::record::FlashAttnMode;
use xshell::cmd;

use crate::llama_cpp::build::{self, Backend};
use crate::llama_cpp::tree::TreeArg;
use crate::project::Project;
use crate::runs::extractor::{quietly, ExtractorRun};

/// The self-test on the default GPT-2 and manifests/gpt2.yaml, in
/// target/llorch/compare-self-test.
pub fn run_self_test(
    project: &Project,
    llama: &LlamaCpp<'_>,
    torch: &PyTorch<'_>,
) -> Result<String> {
    let model = crate::models::model::default_model(project)?;
    let manifest = project.root().join("manifests/gpt2.yaml");
    let out = project.work_dir().join("compare-self-test");
    self_test(llama, torch, &manifest, &model, &out)
}

/// llama.cpp: the extractor on a tree and backend (built on first use).
pub struct LlamaCpp<'a> {
    project: &'a Project,
    tree: TreeArg,
    backend: Backend,
    /// `--flash-attn` for every run; None: the extractor's default (auto).
    flash_attn: Option<FlashAttnMode>,
    /// Every run with an f32 KV cache (`--kv-type f32`), not llama.cpp's f16.
    kv_f32: bool,
    /// The extractor, and the environment it runs the backend in.
    built: OnceCell<(PathBuf, Vec<(OsString, OsString)>)>,
}

impl LlamaCpp<'_> {
    /// On the pin, with flash attention off: the graph with every checkpoint
    /// (scores too), as the project's own checks want it.
    pub fn new(project: &Project) -> LlamaCpp<'_> {
        LlamaCpp::on(project, TreeArg::default(), Some(FlashAttnMode::Off))
    }

    pub fn on(project: &Project, tree: TreeArg, flash_attn: Option<FlashAttnMode>) -> LlamaCpp<'_> {
        LlamaCpp {
            project,
            tree,
            backend: Backend::Cpu,
            flash_attn,
            kv_f32: false,
            built: OnceCell::new(),
        }
    }

    /// Every run on `backend` (every layer on its device).
    pub fn on_backend(self, backend: Backend) -> Self {
        LlamaCpp { backend, ..self }
    }

    /// Every run with an f32 KV cache: f32 weights then leave f32 rounding
    /// alone, and what exceeds it is the graph's.
    pub fn with_f32_cache(self) -> Self {
        LlamaCpp {
            kv_f32: true,
            ..self
        }
    }

    fn kv_flags(&self, asked: bool) -> &'static [&'static str] {
        match asked || self.kv_f32 {
            true => &["--kv-type", "f32"],
            false => &[],
        }
    }

    /// `--flash-attn MODE` where one is set.
    fn flash_attn_flags(&self) -> Vec<String> {
        match self.flash_attn {
            Some(mode) => vec!["--flash-attn".into(), mode.name().into()],
            None => Vec::new(),
        }
    }

    /// The extractor and its environment, built on first use.
    fn built(&self) -> Result<&(PathBuf, Vec<(OsString, OsString)>)> {
        if let Some(built) = self.built.get() {
            return Ok(built);
        }
        let tree = self.tree.resolve(self.project)?;
        let exe = build::ensure_extractor(self.project, self.backend, &tree)?;
        let env = build::backend_env(self.project, self.backend, &tree);
        Ok(self.built.get_or_init(|| (exe, env)))
    }

    /// A run of the extractor on this tree and backend.
    fn command(&self, model: &Path, out: &Path) -> Result<ExtractorRun> {
        let (exe, env) = self.built()?;
        let mut run = ExtractorRun::new(exe, model, out).env(env.clone());
        if let Some(n) = self.backend.default_gpu_layers() {
            run = run.arg(format!("--n-gpu-layers={n}"));
        }
        Ok(run)
    }
}

impl Extractor for LlamaCpp<'_> {
    fn extract(&self, run: &Extraction<'_>) -> Result<()> {
        let mut command = self
            .command(run.model, run.out)?
            .manifest(run.manifest)
            .prompt(run.prompt)
            .generate(0)
            .threads(run.threads)
            .args(self.flash_attn_flags());
        if let Some(layers) = run.layers {
            command = command.layers(layers);
        }
        command = command.args(self.kv_flags(run.kv_f32));
        if run.sequential {
            command = command.arg("--sequential");
        }
        command.run(&self.project.shell()?)
    }

    fn extract_graph(
        &self,
        model: &Path,
        prompt: Prompt<'_>,
        out: &Path,
        flash_attn: Option<bool>,
    ) -> Result<()> {
        let command = self.command(model, out)?;
        let command = match prompt {
            Prompt::Text(text) => command.prompt(text),
            Prompt::Tokens(ids) => command.tokens(ids),
        };
        let command = command.tensors("*").generate(0).args(self.kv_flags(false));
        let command = match flash_attn {
            Some(on) => command.flash_attn(FlashAttnMode::from(on)),
            None => command.args(self.flash_attn_flags()),
        };
        let sh = self.project.shell()?;
        let started = Instant::now();
        quietly(
            command.cmd(&sh),
            "the extractor could not capture the whole graph",
        )?;
        let (files, bytes) = std::fs::read_dir(out)?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .fold((0, 0), |(n, b), m| (n + 1, b + m.len()));
        eprintln!(
            "compare: llama.cpp's whole graph captured in {:.1} s ({files} files, {:.2} GB)",
            started.elapsed().as_secs_f64(),
            bytes as f64 / 1e9
        );
        Ok(())
    }

    /// Kept in target/llorch/models as `<name>.f32.gguf`, written by
    /// llama.cpp's quantize API (`llorch-checkpoint-model dequantize`).
    fn dequantized(&self, model: &Path) -> Result<Option<PathBuf>> {
        let stem = model.file_stem().unwrap_or_default().to_string_lossy();
        let copy = self
            .project
            .work_dir()
            .join("models")
            .join(format!("{stem}.f32.gguf"));
        let modified = |p: &Path| std::fs::metadata(p).ok()?.modified().ok();
        if modified(&copy).is_some() && modified(&copy) >= modified(model) {
            return Ok(Some(copy));
        }
        let tool = self.built()?.0.with_file_name("llorch-checkpoint-model");
        let sh = self.project.shell()?;
        cmd!(sh, "{tool} dequantize {model} --out {copy}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("cannot write an f32 copy of {}", model.display()))?;
        Ok(copy.is_file().then_some(copy))
    }
}

/// The reference: transformers in the project's venv, through `xtask/python/reference.py`.
pub struct PyTorch<'a> {
    project: &'a Project,
}

impl PyTorch<'_> {
    pub fn new(project: &Project) -> PyTorch<'_> {
        PyTorch { project }
    }
}

impl Reference for PyTorch<'_> {
    /// A missing package or a broken venv ends in one paragraph with the fix.
    fn compute(&self, job: &ReferenceJob) -> Result<()> {
        let started = Instant::now();
        // LLORCH_REFERENCE_PYTHON: another interpreter (to check what happens without torch).
        let python = match std::env::var_os("LLORCH_REFERENCE_PYTHON") {
            Some(p) => Ok(PathBuf::from(p)),
            None => crate::models::python::ensure(self.project),
        };
        let python = python.context(
            "the PyTorch reference needs the project's Python environment (torch, transformers, numpy from PyPI, about 5 GB). \
             `cargo xtask compare` creates it in target/llorch/pyenv; where PyPI cannot be reached it cannot, and nothing can be compared",
        )?;
        let script = self.project.root().join("xtask/python/reference.py");
        let file = job.file();
        let sh = self.project.shell()?;
        let cache = self.project.work_dir().join("reference-models");
        let _cache = sh.push_env("LLORCH_REFERENCE_MODELS", &cache);
        let result = with_progress(cmd!(sh, "{python} {script} {file}").into())
            .context("cannot start the project's Python")?;
        if !result.status.success() {
            let stderr = String::from_utf8_lossy(&result.stderr);
            let message: Vec<&str> = stderr
                .lines()
                .filter_map(|l| l.strip_prefix("reference: "))
                .collect();
            if message.is_empty() {
                bail!(
                    "the PyTorch reference ({}) failed:\n{}",
                    script.display(),
                    stderr.trim_end()
                );
            }
            bail!(
                "the PyTorch reference could not be built: {}",
                message.join(" ")
            );
        }
        eprint!("{}", String::from_utf8_lossy(&result.stdout));
        eprintln!(
            "compare: reference built in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// Runs `command` to its end, showing the stderr lines that start with
/// `progress: ` as they come (the reference's layers: minutes at 7B) and
/// keeping the rest, with its stdout, in the output.
fn with_progress(mut command: std::process::Command) -> std::io::Result<std::process::Output> {
    use std::io::BufRead;
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn()?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut kept = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            match line.strip_prefix("progress: ") {
                Some(shown) => eprintln!("  {shown}"),
                None => kept.push_str(&(line + "\n")),
            }
        }
        kept
    });
    let mut output = child.wait_with_output()?;
    output.stderr = reader.join().unwrap_or_default().into_bytes();
    Ok(output)
}
