//! `cargo xtask extract`: builds what is missing, runs the extractor, prints a table.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use llorch_checkpoint_spec::record::RunRecord;

use crate::build::{self, Backend};
use crate::model::ModelArgs;
use crate::project::Flavour;
use crate::project::Project;
use crate::step::Step;
use crate::tree::{Tree, TreeArg};

#[derive(clap::Args)]
pub struct Extract {
    #[command(flatten)]
    input: ModelArgs,
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
    /// Further flags for the extractor (after `--`), e.g. `-- --kv-type f32 --format npy`.
    #[arg(last = true)]
    extractor_args: Vec<String>,
}

impl Extract {
    pub fn run(self, project: &Project) -> Result<()> {
        // Paths given on the command line are the caller's; defaults are the project's.
        let out = self
            .out
            .map(std::path::absolute)
            .transpose()?
            .unwrap_or_else(|| project.root().join("checkpoints"));
        // The model first: writing it builds the CPU extractor, and the
        // extractor we run must be the one for the requested backend.
        let (model, manifest) = self.input.resolve(project)?;
        let tree = self.tree.resolve(project)?;
        let exe = build::ensure_extractor(project, self.backend, &tree)?;
        let args = [
            "-m".into(),
            model.into_os_string(),
            "--manifest".into(),
            manifest.into(),
        ]
        .into_iter()
        .chain([
            "-p".into(),
            self.input.prompt.into(),
            "--out".into(),
            out.clone().into(),
        ])
        .chain(self.layers.as_deref().map(layer_arg).map(Into::into))
        .chain(self.extractor_args.into_iter().map(Into::into));
        let step = Step::start(project, "extract", "running the extractor")?;
        step.run("llorch-checkpoint-extractor", duct::cmd(&exe, args))
            .context("the extractor failed")?;
        let record = RunRecord::read(&out)?;
        step.finish(&format!(
            "{} checkpoints and run.json in {} (its log: {})",
            record.checkpoints.len(),
            out.display(),
            project.work_dir().join("logs/extract.log").display()
        ));
        print_table(&out, &project.shown(&out))
    }
}

/// The extractor's `--layers` flag for `layers`, as one argument so that
/// `-1` is not taken for a flag.
pub fn layer_arg(layers: &str) -> String {
    format!("--layers={layers}")
}

/// Builds llama.cpp and the extractor on the pin for `backend` (a no-op when up to date).
pub fn ensure_extractor(project: &Project, backend: Backend) -> Result<PathBuf> {
    build::ensure_extractor(project, backend, &Tree::pinned(project, Flavour::Patched)?)
}

fn print_table(dir: &Path, shown: &str) -> Result<()> {
    let record = RunRecord::read(dir)?;
    println!(
        "\n{:<16} {:<16} {:<5} {:<6} {:>16} {:>11} {:>11} {:>12}  file",
        "checkpoint", "tensor", "dtype", "buffer", "shape", "min", "max", "mean"
    );
    for cp in &record.checkpoints {
        let shape = format!("{:?}", cp.shape);
        println!(
            "{:<16} {:<16} {:<5} {:<6} {:>16} {:>11.5} {:>11.5} {:>12.5e}  {}",
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
        record.schema_version = 5;
        std::fs::write(dir.path().join("run.json"), record.to_json()).unwrap();
        let err = format!("{:#}", print_table(dir.path(), "dir").unwrap_err());
        assert!(err.contains("schema version 5 is newer"), "{err}");
    }
}
