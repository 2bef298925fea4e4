//! `cargo xtask diff-trees`: the same model, manifest, layers and prompt
//! through two llama.cpp trees (the pin, or directories), or one tree on two
//! backends, checkpoint by checkpoint. This is how a llama.cpp change, or a
//! device's kernels, show in the numbers.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::flags::{self, LlamaFlags};
use crate::llama_cpp::build::Backend;
use crate::llama_cpp::tree::Tree;
use crate::models::model::ModelArgs;
use crate::project::Project;
use crate::runs::two_trees::{diff_trees, Runs, Side};

#[derive(clap::Args)]
pub struct DiffTrees {
    #[command(flatten)]
    input: ModelArgs,
    /// The llama.cpp tree under test (a directory; only read) [default: the pin].
    #[arg(long = "llama-cpp", value_name = "DIR")]
    llama_cpp: Option<PathBuf>,
    /// The reference tree [default: the pin].
    #[arg(long, value_name = "DIR")]
    against: Option<PathBuf>,
    /// The backend the tree under test runs on.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// The backend the reference tree runs on.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    against_backend: Backend,
    /// The layers to compare instead of the manifest's: `all`, or numbers like `0,5,29`.
    #[arg(long, value_name = "all|N,N,...", allow_hyphen_values = true)]
    layers: Option<String>,
    /// The NMSE above which a checkpoint is reported as differing beyond noise (exit 1).
    #[arg(long, default_value_t = 1e-4)]
    max_nmse: f64,
    /// Output directory: a/ and b/ (the two runs), report.json, report.html [default: target/llorch/diff-trees].
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    llama: LlamaFlags,
    /// Further flags for both extractor runs (after `--`), e.g. `-- --kv-type f32`; -fa, -ngl,
    /// -t and -c there replace those before it.
    #[arg(last = true)]
    extractor_args: Vec<String>,
}

/// What diff-trees gives both runs itself: after `--` these are refused,
/// naming its own flag.
const OWN: &[(&[&str], &str)] = &[
    (&["-m", "--model"], "`--model`"),
    (
        &["--manifest", "--tensors"],
        "`--manifest` (diff-trees compares a manifest's checkpoints)",
    ),
    (
        &["-p", "--prompt", "-f", "--file", "--tokens"],
        "`--prompt`",
    ),
    (
        &["--out"],
        "diff-trees' own `--out` (the directory of both runs)",
    ),
    (&["--layers"], "`--layers`"),
];

impl DiffTrees {
    pub fn run(mut self, project: &Project) -> Result<()> {
        self.llama.take_from(&mut self.extractor_args)?;
        flags::refuse_own(&self.extractor_args, OWN)?;
        let mut extra = self.llama.to_args();
        extra.extend(self.extractor_args.iter().cloned());
        let out = match &self.out {
            Some(dir) => std::path::absolute(dir)?,
            None => project.work_dir().join("diff-trees"),
        };
        let (model, manifest) = self.input.resolve(project)?;
        if self.llama_cpp.is_none()
            && self.against.is_none()
            && self.backend == self.against_backend
        {
            bail!(
                "nothing to compare: give the tree under test (--llama-cpp DIR), or a backend to compare \
                 with the reference's (e.g. --backend vulkan --against-backend cpu)"
            );
        }
        let tree = |dir: &Option<PathBuf>| match dir {
            Some(dir) => Tree::local(dir),
            None => Tree::pinned(project),
        };
        let (reference, test) = (tree(&self.against)?, tree(&self.llama_cpp)?);
        let runs = Runs {
            model: &model,
            manifest: &manifest,
            prompt: self.input.prompt(),
            layers: self.layers.as_deref(),
            extra: &extra,
            max_nmse: self.max_nmse,
            out: &out,
        };
        let sides = [
            Side {
                tree: &reference,
                backend: self.against_backend,
            },
            Side {
                tree: &test,
                backend: self.backend,
            },
        ];
        let outcome = diff_trees(project, sides, &runs)?;
        print!("{}", outcome.table);
        println!(
            "\nreport: {}\npage: {}",
            outcome.report.display(),
            outcome.page.display()
        );
        match outcome.pass {
            true => Ok(()),
            false => bail!("the two sides differ beyond NMSE {:e}", self.max_nmse),
        }
    }
}
