//! One model, manifest, layers and prompt through two sides (a llama.cpp
//! tree on a backend: two trees, or one tree on two backends), and their
//! runs compared checkpoint by checkpoint (`llorch-checkpoint-diff`):
//! `diff-trees` and verify's tree and backend checks run it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::llama_cpp::build::{self, Backend};
use crate::llama_cpp::tree::Tree;
use crate::project::Project;
use crate::runs::extractor::ExtractorRun;
use crate::step::Step;

/// A llama.cpp tree on a backend.
#[derive(Clone, Copy)]
pub struct Side<'a> {
    pub tree: &'a Tree,
    pub backend: Backend,
}

impl Side<'_> {
    pub fn cpu(tree: &Tree) -> Side<'_> {
        Side {
            tree,
            backend: Backend::Cpu,
        }
    }

    fn describe(&self) -> String {
        format!("{} on {}", self.tree.record.describe(), self.backend.name())
    }
}

/// What both sides run.
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

/// Builds what is missing, runs both sides' extractors, compares the runs
/// (`llorch-checkpoint-diff`, the pin's build of it).
pub fn diff_trees(
    project: &Project,
    [reference, test]: [Side<'_>; 2],
    runs: &Runs<'_>,
) -> Result<Outcome> {
    let sides = [(reference, runs.out.join("a")), (test, runs.out.join("b"))];
    for (side, dir) in &sides {
        let exe = build::ensure_extractor(project, side.backend, side.tree)?;
        extract(project, &exe, side, runs, dir)?;
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

fn extract(
    project: &Project,
    exe: &Path,
    side: &Side<'_>,
    runs: &Runs<'_>,
    dir: &Path,
) -> Result<()> {
    let mut run = ExtractorRun::new(exe, runs.model, dir)
        .user_threads()
        .env(build::backend_env(project, side.backend, side.tree))
        .manifest(runs.manifest)
        .prompt(runs.prompt);
    if let Some(layers) = runs.layers {
        run = run.layers(layers);
    }
    if let Some(n) = side.backend.default_gpu_layers() {
        if !crate::flags::has(runs.extra, &["--n-gpu-layers", "--ngl"]) {
            run = run.arg(format!("--n-gpu-layers={n}"));
        }
    }
    let run = run.args(runs.extra);
    let step = Step::start(project, "extract", &format!("on {}", side.describe()))?;
    step.run("llorch-checkpoint-extractor", run.expression())
        .with_context(|| format!("the extractor on {} failed", side.describe()))?;
    step.finish(&format!("run in {}", dir.display()));
    Ok(())
}
