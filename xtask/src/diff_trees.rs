//! `cargo xtask diff-trees`: the same model, manifest, layers and prompt
//! through two llama.cpp trees (the pin, or directories), checkpoint by
//! checkpoint. This is how a llama.cpp change shows in the numbers.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::build::{self, Backend};
use crate::flags::layer_arg;
use crate::flags::{self, LlamaFlags};
use crate::model::ModelArgs;
use crate::project::Project;
use crate::step::Step;
use crate::tree::Tree;

#[derive(clap::Args)]
pub struct DiffTrees {
    #[command(flatten)]
    input: ModelArgs,
    /// The llama.cpp tree under test (a directory; only read).
    #[arg(long = "llama-cpp", value_name = "DIR")]
    llama_cpp: PathBuf,
    /// The reference tree [default: the pin].
    #[arg(long, value_name = "DIR")]
    against: Option<PathBuf>,
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
        let reference = match &self.against {
            Some(dir) => Tree::local(dir)?,
            None => Tree::pinned(project)?,
        };
        let test = Tree::local(&self.llama_cpp)?;
        let runs = Runs {
            model: &model,
            manifest: &manifest,
            prompt: &self.input.prompt,
            layers: self.layers.as_deref(),
            extra: &extra,
            max_nmse: self.max_nmse,
            out: &out,
        };
        let outcome = diff_trees(project, [&reference, &test], &runs)?;
        print!("{}", outcome.table);
        println!(
            "\nreport: {}\npage: {}",
            outcome.report.display(),
            outcome.page.display()
        );
        match outcome.pass {
            true => Ok(()),
            false => bail!("the two trees differ beyond NMSE {:e}", self.max_nmse),
        }
    }
}

/// What both trees run.
pub struct Runs<'a> {
    pub model: &'a Path,
    pub manifest: &'a Path,
    pub prompt: &'a str,
    pub layers: Option<&'a str>,
    /// Further extractor flags, the same for both.
    pub extra: &'a [String],
    pub max_nmse: f64,
    /// a/ and b/ (the runs), report.json and report.html.
    pub out: &'a Path,
}

pub struct Outcome {
    pub table: String,
    pub report: PathBuf,
    pub page: PathBuf,
    /// Every checkpoint and the logits within `max_nmse`.
    pub pass: bool,
}

/// Builds what is missing, runs both trees' extractors, compares the runs
/// (`llorch-checkpoint-diff`, the pin's build of it).
pub fn diff_trees(
    project: &Project,
    [reference, test]: [&Tree; 2],
    runs: &Runs<'_>,
) -> Result<Outcome> {
    let sides = [(reference, runs.out.join("a")), (test, runs.out.join("b"))];
    for (tree, dir) in &sides {
        let exe = build::ensure_extractor(project, Backend::Cpu, tree)?;
        extract(project, &exe, tree, runs, dir)?;
    }
    let diff = project.root().join("target/release/llorch-checkpoint-diff");
    let (report, page) = (runs.out.join("report.json"), runs.out.join("report.html"));
    let args: Vec<std::ffi::OsString> = vec![
        "compare".into(),
        sides[0].1.clone().into(),
        sides[1].1.clone().into(),
        "--manifest".into(),
        runs.manifest.into(),
        "--max-nmse".into(),
        runs.max_nmse.to_string().into(),
        "--json".into(),
        report.clone().into(),
        "--html".into(),
        page.clone().into(),
    ];
    let result = duct::cmd(&diff, args)
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .with_context(|| format!("cannot run {}", diff.display()))?;
    if !report.is_file() {
        bail!(
            "{} failed: {}",
            diff.display(),
            String::from_utf8_lossy(&result.stderr).trim()
        );
    }
    Ok(Outcome {
        table: String::from_utf8_lossy(&result.stdout).into_owned(),
        report,
        page,
        pass: result.status.success(),
    })
}

fn extract(project: &Project, exe: &Path, tree: &Tree, runs: &Runs<'_>, dir: &Path) -> Result<()> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "-m".into(),
        runs.model.into(),
        "--manifest".into(),
        runs.manifest.into(),
        "-p".into(),
        runs.prompt.into(),
        "--out".into(),
        dir.into(),
    ];
    args.extend(runs.layers.map(layer_arg).map(Into::into));
    args.extend(runs.extra.iter().map(Into::into));
    let step = Step::start(
        project,
        "extract",
        &format!("on {}", tree.record.describe()),
    )?;
    step.run("llorch-checkpoint-extractor", duct::cmd(exe, args))
        .with_context(|| format!("the extractor on {} failed", tree.root.display()))?;
    step.finish(&format!("run in {}", dir.display()));
    Ok(())
}
