//! `cargo xtask extract`: builds what is missing, runs the extractor, prints a table.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use llorch_checkpoint_spec::record::RunRecord;

use crate::flags::{self, LlamaFlags};
use crate::llama_cpp::build::{self, Backend};
use crate::llama_cpp::tree::TreeArg;
use crate::models::model::ModelArgs;
use crate::project::Project;
use crate::runs::extractor::ExtractorRun;
use crate::step::Step;

#[derive(clap::Args)]
pub struct Extract {
    #[command(flatten)]
    input: ModelArgs,
    /// Read the prompt from this file (as it is: no newline is stripped) instead of --prompt.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "PROMPT_FILE",
        conflicts_with = "tokens"
    )]
    prompt_file: Option<PathBuf>,
    /// The prompt as token ids (`15496,995`) instead of --prompt.
    #[arg(long, value_name = "ID,ID,...")]
    tokens: Option<String>,
    #[command(flatten)]
    pub llama: LlamaFlags,
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    #[command(flatten)]
    tree: TreeArg,
    /// Output directory [default: checkpoints/ in the project root].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The layers to extract instead of the manifest's: `all`, or numbers like `0,5,29` (negative from the last: -1).
    #[arg(long, value_name = "all|N,N,...", allow_hyphen_values = true)]
    pub layers: Option<String>,
    /// Any further extractor flags (after `--`), e.g. `-- --kv-type f32 --format npy`. The flags
    /// extract has itself (-m, --manifest, -p, -f, --tokens, --out, --layers, -fa, -ngl, -t, -c)
    /// may be given there too and win; `--tensors GLOB` replaces the manifest.
    #[arg(last = true)]
    extractor_args: Vec<String>,
}

/// Extractor flags that print and exit without a run to tabulate.
const ONLY_PRINTS: &[&str] = &[
    "--list-nodes",
    "--system-info",
    "-h",
    "--help",
    "-V",
    "--version",
];

impl Extract {
    pub fn run(mut self, project: &Project) -> Result<()> {
        self.take_overrides()?;
        // Paths given on the command line are the caller's; defaults are the project's.
        let out = self
            .out
            .take()
            .map(std::path::absolute)
            .transpose()?
            .unwrap_or_else(|| project.root().join("checkpoints"));
        // The model first: writing it builds the CPU extractor, and the
        // extractor we run must be the one for the requested backend.
        let (model, manifest) = self.input.resolve(project)?;
        let tree = self.tree.resolve(project)?;
        let exe = build::ensure_extractor(project, self.backend, &tree)?;
        let by_manifest = !flags::has(&self.extractor_args, &["--tensors"]);
        if by_manifest && self.llama.flash_attn.is_none() {
            self.llama.flash_attn =
                flags::every_checkpoint("extract", &manifest, &project.shown(&manifest))?;
        }
        if self.llama.n_gpu_layers.is_none() {
            self.llama.n_gpu_layers = self.backend.default_gpu_layers();
        }
        let mut run = ExtractorRun::new(&exe, &model, &out)
            .user_threads()
            .env(build::backend_env(project, self.backend, &tree));
        if by_manifest {
            run = run.manifest(&manifest);
        }
        run = match (&self.prompt_file, &self.tokens) {
            (Some(file), _) => run.prompt_file(&std::path::absolute(file)?),
            (None, Some(ids)) => run.token_list(ids),
            (None, None) => run.prompt(self.input.prompt()),
        };
        if let Some(layers) = &self.layers {
            run = run.layers(layers);
        }
        let run = run.args(self.llama.to_args()).args(&self.extractor_args);
        if flags::has(&self.extractor_args, ONLY_PRINTS) {
            return run
                .expression()
                .run()
                .map(drop)
                .context("the extractor failed");
        }
        let step = Step::start(project, "extract", "running the extractor")?;
        step.run("llorch-checkpoint-extractor", run.expression())
            .context("the extractor failed")?;
        let record = RunRecord::read(&out)?;
        step.finish(&format!(
            "{} checkpoints and run.json in {} (its log: {})",
            record.checkpoints.len(),
            project.shown(&out),
            project.shown(&project.work_dir().join("logs/extract.log"))
        ));
        print_table(&out, &project.shown(&out))
    }

    /// The flags of extract's own given after `--` replace those before it.
    fn take_overrides(&mut self) -> Result<()> {
        let rest = &mut self.extractor_args;
        self.llama.take_from(rest)?;
        if let Some(v) = flags::take(rest, &["-m", "--model"]) {
            self.input.model = Some(v);
        }
        if let Some(v) = flags::take(rest, &["--manifest"]) {
            self.input.manifest = Some(v.into());
        }
        if let Some(v) = flags::take(rest, &["--out"]) {
            self.out = Some(v.into());
        }
        if let Some(v) = flags::take(rest, &["--layers"]) {
            self.layers = Some(v);
        }
        if let Some(v) = flags::take(rest, &["-p", "--prompt"]) {
            (self.input.prompt, self.prompt_file, self.tokens) = (Some(v), None, None);
        }
        if let Some(v) = flags::take(rest, &["-f", "--file"]) {
            (self.prompt_file, self.tokens) = (Some(v.into()), None);
        }
        if let Some(v) = flags::take(rest, &["--tokens"]) {
            (self.prompt_file, self.tokens) = (None, Some(v));
        }
        Ok(())
    }
}

fn print_table(dir: &Path, shown: &str) -> Result<()> {
    let record = RunRecord::read(dir)?;
    // Names as wide as the widest: unnamed nodes are `cache_k_l0 (view)`.
    let width = |names: &mut dyn Iterator<Item = usize>| names.max().unwrap_or(0).max(16);
    let id_w = width(&mut record.checkpoints.iter().map(|c| c.id.len()));
    let tensor_w = width(&mut record.checkpoints.iter().map(|c| c.tensor.len()));
    println!(
        "\n{:<id_w$} {:<tensor_w$} {:<5} {:<6} {:>16} {:>11} {:>11} {:>12}  file",
        "checkpoint", "tensor", "dtype", "buffer", "shape", "min", "max", "mean"
    );
    for cp in &record.checkpoints {
        let shape = format!("{:?}", cp.shape);
        println!(
            "{:<id_w$} {:<tensor_w$} {:<5} {:<6} {:>16} {:>11.5} {:>11.5} {:>12.5e}  {}",
            cp.id,
            cp.tensor,
            cp.source_dtype,
            cp.buffer,
            shape,
            cp.min.unwrap_or(f32::NAN),
            cp.max.unwrap_or(f32::NAN),
            cp.mean.unwrap_or(f64::NAN),
            cp.file
        );
    }
    println!(
        "\n{} checkpoints in {}/ ({} prompt tokens, prompt decode {:.1} ms)",
        record.checkpoints.len(),
        shown,
        record.tokens.len(),
        record.prompt_decode_ms
    );
    if let Some(absent) = record.absent_summary() {
        println!("absent from this graph: {absent}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_refuses_a_run_record_of_a_future_schema_naming_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = llorch_checkpoint_spec::record::example();
        let future = llorch_checkpoint_spec::record::SCHEMA_VERSION + 1;
        record.schema_version = future;
        std::fs::write(dir.path().join("run.json"), record.to_json()).unwrap();
        let err = format!("{:#}", print_table(dir.path(), "dir").unwrap_err());
        assert!(
            err.contains(&format!("schema version {future} is newer")),
            "{err}"
        );
    }
}
