//! Each node's own error, the flow `cargo xtask replay` and verify share:
//! the extractor captures every node with its operands as the op saw them
//! (`--tensors GLOB --operands`), `xtask/python/replay.py` computes each op
//! again in f64 from those operands (weights dequantized exactly from the
//! GGUF), and the comparison library holds llama.cpp's value of each node
//! to what its kernel's documented roundings allow.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use llorch_checkpoint_compare::replay::{self, Replay};
use llorch_checkpoint_spec::files::write_atomically;

use crate::llama_cpp::build::{self, Backend};
use crate::llama_cpp::tree::Tree;
use crate::project::Project;
use crate::runs::extractor::ExtractorRun;
use crate::step::Step;

/// One replay: what runs, where, and into which directory.
pub struct Job<'a> {
    pub model: &'a Path,
    pub tree: &'a Tree,
    pub backend: Backend,
    pub prompt: &'a str,
    /// A glob over node names.
    pub nodes: &'a str,
    /// Further extractor flags (-fa, -ngl, -t, -c, --kv-type ...).
    pub extra: &'a [String],
    /// run/, replayed/, replay.json, replay.html.
    pub out: &'a Path,
}

/// What a replay found and the files it wrote.
pub struct Replayed {
    pub judged: Replay,
    pub report: PathBuf,
    pub page: PathBuf,
}

/// Capture, replay in f64, judge, report.
pub fn replay(project: &Project, job: &Job<'_>) -> Result<Replayed> {
    let (run, replayed) = (job.out.join("run"), job.out.join("replayed"));
    capture(project, job, &run)?;
    replay_in_f64(project, &run, job.model, &replayed)?;
    let judged = replay::judge(&run, &replayed)?;
    let title = format!(
        "each node's own error: {} on {} ({})",
        job.model
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        job.tree.record.describe(),
        job.backend.name()
    );
    let (report, page) = (job.out.join("replay.json"), job.out.join("replay.html"));
    write_atomically(&report, &serde_json::to_vec_pretty(&judged)?)?;
    write_atomically(&page, judged.html(&title).as_bytes())?;
    Ok(Replayed {
        judged,
        report,
        page,
    })
}

/// The extractor's run of every node asked, with its operands.
fn capture(project: &Project, job: &Job<'_>, run: &Path) -> Result<()> {
    let exe = build::ensure_extractor(project, job.backend, job.tree)?;
    let mut extractor = ExtractorRun::new(&exe, job.model, run)
        .user_threads()
        .env(build::backend_env(project, job.backend, job.tree))
        .tensors(job.nodes)
        .arg("--operands")
        .prompt(job.prompt);
    if let Some(n) = job.backend.default_gpu_layers() {
        if !crate::flags::has(job.extra, &["--n-gpu-layers", "--ngl"]) {
            extractor = extractor.arg(format!("--n-gpu-layers={n}"));
        }
    }
    let extractor = extractor.args(job.extra);
    let step = Step::start(project, "replay", "capturing every node with its operands")?;
    step.run("llorch-checkpoint-extractor", extractor.expression())
        .context("the extractor failed")?;
    step.finish(&format!("run in {}", project.shown(run)));
    Ok(())
}

/// Each node's op in f64, by `xtask/python/replay.py` in the project's Python.
fn replay_in_f64(project: &Project, run: &Path, model: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    let python = crate::models::python::ensure(project)
        .context("the replay needs the project's Python environment (numpy and gguf from PyPI)")?;
    let script = project.root().join("xtask/python/replay.py");
    let step = Step::start(project, "replay", "each node's op in f64")?;
    let args: Vec<std::ffi::OsString> = vec![
        script.into(),
        "--run".into(),
        run.into(),
        "--model".into(),
        model.into(),
        "--out".into(),
        out.into(),
    ];
    let python = duct::cmd(python, args).env("PYTHONDONTWRITEBYTECODE", "1");
    step.run("replay.py", python)
        .context("the f64 replay failed")?;
    step.finish(&format!("in {}", project.shown(out)));
    Ok(())
}

/// What a comparison ran, for replaying the node of its first divergence
/// on the same graph.
pub struct Compared<'a> {
    pub model: &'a Path,
    pub tree: &'a Tree,
    pub backend: Backend,
    pub prompt: &'a str,
    pub flash_attn: Option<llorch_checkpoint_spec::record::FlashAttnMode>,
}

/// The comparison's first checkpoint over tolerance, its node replayed in
/// f64 from llama.cpp's own operands: the kernel's error, or a graph that
/// computes something other than the reference there. `None` when every
/// checkpoint passed.
pub fn explain_divergence(
    project: &Project,
    outcome: &llorch_checkpoint_compare::Outcome,
    compared: &Compared<'_>,
) -> Result<Option<String>> {
    let Some(at) = outcome.rows.iter().position(|r| !r.pass) else {
        return Ok(None);
    };
    let row = &outcome.rows[at];
    let record = llorch_checkpoint_spec::record::RunRecord::read(&outcome.run)?;
    let cp = record
        .checkpoint(&row.file)
        .with_context(|| format!("the run has no checkpoint {}", row.file))?;
    let extra: Vec<String> = compared
        .flash_attn
        .map(|fa| format!("--flash-attn={}", fa.name()))
        .into_iter()
        .collect();
    let out = outcome.report.with_file_name("explain");
    // The node and the nodes it may have been computed over in place (its
    // layer's, its operands): an operand overwritten is not replayable.
    let mut nodes = vec![glob::Pattern::escape(&cp.tensor)];
    nodes.extend(row.layer.map(|l| format!("*-{l}")));
    nodes.extend(cp.operands.iter().map(|o| glob::Pattern::escape(&o.name)));
    let nodes = nodes.join(",");
    let job = Job {
        model: compared.model,
        tree: compared.tree,
        backend: compared.backend,
        prompt: compared.prompt,
        nodes: &nodes,
        extra: &extra,
        out: &out,
    };
    let judged = replay(project, &job)?.judged;
    let (params, operands) = replayed_node(&out.join("run"), &cp.tensor, &cp.op, cp.graph_index)?;
    let layer = row.layer.map(|l| format!(" layer {l}")).unwrap_or_default();
    let reference = outcome
        .entries
        .iter()
        .find(|e| e.id == row.id && e.layer == row.layer)
        .map_or("?", |e| e.capture.as_str());
    let before = outcome.rows[at.saturating_sub(2)..at]
        .iter()
        .map(|r| {
            (
                format!(
                    "{}{}",
                    r.id,
                    r.layer.map(|l| format!("@{l}")).unwrap_or_default()
                ),
                r.verdict().nmse,
            )
        })
        .collect();
    let divergence = replay::Divergence {
        checkpoint: format!("{}{layer}", row.id),
        node: &cp.tensor,
        op: &cp.op,
        graph_index: cp.graph_index,
        reference,
        before,
        operands,
    };
    Ok(replay::explain(&judged, &divergence, &params))
}

/// The op parameters and operands the replay's capture recorded for the node.
fn replayed_node(
    run: &Path,
    name: &str,
    op: &str,
    index: Option<usize>,
) -> Result<(Vec<i32>, Vec<String>)> {
    let record = llorch_checkpoint_spec::record::RunRecord::read(run)?;
    let node = record
        .checkpoints
        .iter()
        .filter(|c| c.operand_of.is_none() && c.tensor == name && c.op == op)
        .find(|c| index.is_none_or(|i| c.graph_index == Some(i)));
    Ok(node.map_or((Vec::new(), Vec::new()), |c| {
        let operands = c.operands.iter().map(|o| o.name.clone()).collect();
        (c.op_params.clone(), operands)
    }))
}
