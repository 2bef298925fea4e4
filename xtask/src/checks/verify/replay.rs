//! verify's replay section: each node's own error. Every node of the four
//! real graphs and of tiny random models (random weights through ggml's own
//! kernels) replayed in f64 from llama.cpp's operands, each within what its
//! kernel's roundings allow and none unknown; and a kernel made wrong on
//! purpose in a copy of the pin, which the replay names at every layer and
//! nowhere else while the comparison with transformers still passes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_compare::auto::{compare_auto, Auto};
use llorch_checkpoint_compare::replay::Replay as Judged;
use llorch_checkpoint_compare::{compare, Options};
use llorch_checkpoint_spec::record::FlashAttnMode;

use super::ctx::Ctx;
use super::report::Report;
use crate::llama_cpp::build::{self, Backend};
use crate::llama_cpp::tree::{Tree, TreeArg};
use crate::models::model::{choose, from_hf, model_and_manifest, tiny, Outtype};
use crate::models::prompts::MATCHING_PROMPT;
use crate::runs::replay::{explain_divergence, replay, Compared, Job};
use crate::runs::sides::{LlamaCpp, PyTorch};

/// The prompt of every replay here (10 to 11 tokens).
pub const PROMPT: &str = "Hello world, this is a test of each node";

/// The architectures replayed on tiny random models: norms, rope, GQA,
/// parallel attention, GELU, a mixture of experts.
const TINY: &[&str] = &["llama", "qwen3", "qwen3_moe", "falcon", "starcoder2"];

/// The deliberate bug: rope's frequency base 5% off in the CPU kernel.
const ROPE_LINE: &str = "const float theta_scale = powf(freq_base, -2.0f/n_dims);";
const ROPE_OFF: &str = "const float theta_scale = powf(freq_base * 1.05f, -2.0f/n_dims);";

/// `drop_build`: the wrong tree, its llama.cpp build and extractor go once
/// the section ran (the full tier: its disk peak; a rerun builds them again).
pub fn checks(report: &mut Report, ctx: &Ctx<'_>, drop_build: bool) {
    report.section("replay: each node's op in f64 from llama.cpp's own operands");
    let work = ctx.work.join("replay");
    let t = Instant::now();
    report.check(
        "the op reference's unit tests: each op against values computed by hand, each allowance against ggml's roundings emulated",
        t,
        unit_tests(ctx),
    );
    let t = Instant::now();
    report.check(
        "GPT-2 (f32), every node, flash attention on and off: each within its explanation, none unknown",
        t,
        gpt2(ctx, &work),
    );
    for name in ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"] {
        let t = Instant::now();
        let result = choose(ctx.project, Some(name), None)
            .and_then(|c| every_node_within(ctx, &c.model, Backend::Cpu, &[], &work.join(name)));
        report.check(
            &format!(
                "{name}, every node of every layer: each within its explanation, none unknown"
            ),
            t,
            result,
        );
        report.tidy(&work);
    }
    let t = Instant::now();
    report.check(
        &format!("tiny random {} (random weights through ggml's kernels): every node within its explanation, none unknown", TINY.join(", ")),
        t,
        tiny_models(ctx, &work),
    );
    report.tidy(&work);
    let t = Instant::now();
    report.check(
        "a kernel made wrong (ROPE's frequency base 5% off in a copy of the pin): the replay flags every layer's ROPE and nothing else; the comparison with transformers still passes",
        t,
        wrong_kernel(ctx, &work),
    );
    let t = Instant::now();
    report.check(
        "compare --explain: the first divergence is the kernel's on the tree above (a tolerance tight enough to fail the rotated Q), the graph's on tiny granite_swa (its sliding-window softmax, within its allowance)",
        t,
        explained(ctx, &work),
    );
    report.tidy(&work);
    if drop_build {
        drop_wrong_tree(report, ctx);
    }
}

fn drop_wrong_tree(report: &mut Report, ctx: &Ctx<'_>) {
    let dir = ctx.project.work_dir().join("trees/rope-off");
    if let Ok(tree) = Tree::local(&dir) {
        report.tidy(&build::default_build_dir(ctx.project, Backend::Cpu, &tree));
        report.tidy(&ctx.project.extractor_dir(&tree.id));
    }
    report.tidy(&dir);
}

/// `compare --explain` on both kinds of divergence.
fn explained(ctx: &Ctx<'_>, work: &Path) -> Result<String> {
    let (model, manifest) = model_and_manifest(ctx.project, Some("smollm2-135m"), None)?;
    let tree = Tree::local(&wrong_tree(ctx)?)?;
    let llama = LlamaCpp::on(
        ctx.project,
        TreeArg {
            llama_cpp: Some(tree.root.clone()),
        },
        Some(FlashAttnMode::Off),
    );
    let options = Options {
        layers: Some("0".into()),
        overrides: vec!["03_*=nmse:1e-5".parse().map_err(anyhow::Error::msg)?],
        ..Options::new(&manifest, &model, PROMPT, work.join("explain-kernel"))
    };
    let outcome = compare(&llama, &PyTorch::new(ctx.project), &options)?;
    let compared = Compared {
        model: &model,
        tree: &tree,
        backend: Backend::Cpu,
        prompt: PROMPT,
        flash_attn: Some(FlashAttnMode::Off),
    };
    let kernel =
        explain_divergence(ctx.project, &outcome, &compared)?.context("the comparison passed")?;
    ensure!(
        kernel.contains("is the kernel's") && kernel.contains("(ROPE #"),
        "{kernel}"
    );
    let graph = graph_divergence(ctx, work)?;
    ensure!(
        graph.contains("is not its kernel's") && graph.contains("SOFT_MAX"),
        "{graph}"
    );
    let short = |s: &str| s.split(':').next().unwrap_or_default().to_string();
    Ok(format!("{}; {}", short(&kernel), short(&graph)))
}

/// Tiny granite_swa against transformers without a manifest, explained.
fn graph_divergence(ctx: &Ctx<'_>, work: &Path) -> Result<String> {
    let hf = tiny(ctx.project, "granite_swa", 0)?;
    let gguf = from_hf(ctx.project, &hf, Outtype::F32, false)?;
    let options = Options {
        layers: Some("all".into()),
        hf: Some(hf),
        ..Options::new(
            Path::new(""),
            &gguf,
            MATCHING_PROMPT,
            work.join("explain-graph"),
        )
    };
    let llama = LlamaCpp::on(ctx.project, TreeArg::default(), Some(FlashAttnMode::Off));
    let auto = Auto {
        draft: None,
        against: None,
    };
    let (outcome, _) = compare_auto(&llama, &PyTorch::new(ctx.project), &options, &auto)?;
    let tree = Tree::pinned(ctx.project)?;
    let compared = Compared {
        model: &gguf,
        tree: &tree,
        backend: Backend::Cpu,
        prompt: MATCHING_PROMPT,
        flash_attn: Some(FlashAttnMode::Off),
    };
    explain_divergence(ctx.project, &outcome, &compared)?
        .context("tiny granite_swa agrees with transformers")
}

fn unit_tests(ctx: &Ctx<'_>) -> Result<String> {
    let (ok, text) = crate::models::python::run_quietly(
        ctx.project,
        &["-m", "unittest", "test_replay_ops"],
        &ctx.project.root().join("xtask/python"),
        ("LLORCH_UNUSED", Path::new("")),
    )?;
    ensure!(ok, "{text}");
    Ok(text
        .lines()
        .find(|l| l.starts_with("Ran "))
        .unwrap_or("ran")
        .to_string())
}

fn gpt2(ctx: &Ctx<'_>, work: &Path) -> Result<String> {
    let on = every_node_within(ctx, &ctx.model, Backend::Cpu, &[], &work.join("gpt2"))?;
    let off = ["--flash-attn=off".to_string()];
    let off = every_node_within(ctx, &ctx.model, Backend::Cpu, &off, &work.join("gpt2-off"))?;
    Ok(format!("on: {on}; off: {off}"))
}

/// Replays `model` on the pin: every node within its explanation, and none
/// the reference does not know or could not read (ggml's skipped nodes aside).
pub fn every_node_within(
    ctx: &Ctx<'_>,
    model: &Path,
    backend: Backend,
    extra: &[String],
    out: &Path,
) -> Result<String> {
    let tree = Tree::pinned(ctx.project)?;
    let judged = run(ctx, model, &tree, backend, extra, out)?;
    let flagged: Vec<String> = judged
        .flagged()
        .map(|n| format!("{} #{}", n.op, n.index))
        .collect();
    ensure!(
        flagged.is_empty(),
        "beyond their explanation: {}",
        flagged.join(", ")
    );
    let missing: Vec<String> = judged
        .not_replayed()
        .into_iter()
        .filter(|((status, _), _)| status != "not computed")
        .map(|((status, why), nodes)| format!("{status}: {} node(s): {why}", nodes.len()))
        .collect();
    ensure!(missing.is_empty(), "not replayed: {}", missing.join("; "));
    Ok(summary(&judged))
}

fn run(
    ctx: &Ctx<'_>,
    model: &Path,
    tree: &Tree,
    backend: Backend,
    extra: &[String],
    out: &Path,
) -> Result<Judged> {
    let job = Job {
        model,
        tree,
        backend,
        prompt: PROMPT,
        nodes: "*",
        extra,
        out,
    };
    Ok(replay(ctx.project, &job)?.judged)
}

/// Ops rounded correctly, whose allowance (half an ulp) a node can use whole.
const ROUNDED_ONCE: &[&str] = &["ADD", "SUB", "MUL", "DIV"];

/// `N nodes, M op types`, and the op that used most of its allowance.
fn summary(judged: &Judged) -> String {
    let replayed = judged
        .nodes
        .iter()
        .filter(|n| n.status == "replayed")
        .count();
    let worst = judged
        .ops
        .iter()
        .filter(|o| o.replayed > 0 && !ROUNDED_ONCE.contains(&o.op.as_str()))
        .max_by(|a, b| a.worst_ratio.total_cmp(&b.worst_ratio));
    format!(
        "{replayed} of {} nodes, {} op types; the most of an allowance used beside one rounding: {}",
        judged.nodes.len(),
        judged.ops.iter().filter(|o| o.replayed > 0).count(),
        worst.map_or("-".into(), |o| format!(
            "{} {:.1}%",
            o.op,
            100.0 * o.worst_ratio
        ))
    )
}

fn tiny_models(ctx: &Ctx<'_>, work: &Path) -> Result<String> {
    let mut done = Vec::new();
    for arch in TINY {
        let hf = tiny(ctx.project, arch, 0)?;
        let gguf = from_hf(ctx.project, &hf, Outtype::F32, false)?;
        let found = every_node_within(ctx, &gguf, Backend::Cpu, &[], &work.join(arch))
            .with_context(|| format!("tiny {arch}"))?;
        done.push(format!(
            "{arch}: {}",
            found.split(',').next().unwrap_or_default()
        ));
    }
    Ok(done.join("; "))
}

/// The pin copied once into target/llorch/trees, its rope kernel made wrong.
fn wrong_tree(ctx: &Ctx<'_>) -> Result<PathBuf> {
    let dir = ctx.project.work_dir().join("trees/rope-off");
    let ops = Path::new("ggml/src/ggml-cpu/ops.cpp");
    if dir.join(ops).is_file() {
        return Ok(dir);
    }
    let pinned = Tree::pinned(ctx.project)?.root;
    let staged = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staged);
    std::fs::create_dir_all(dir.parent().context("a tree's parent")?)?;
    copy_dir(&pinned, &staged)?;
    let text = std::fs::read_to_string(staged.join(ops))?;
    if !text.contains(ROPE_LINE) {
        bail!(
            "the pinned {} has no `{ROPE_LINE}`: update the deliberate bug to the new tree",
            ops.display()
        );
    }
    std::fs::write(staged.join(ops), text.replace(ROPE_LINE, ROPE_OFF))?;
    std::fs::rename(&staged, &dir)?;
    Ok(dir)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()?;
    ensure!(
        status.success(),
        "cp -r {} {} failed",
        from.display(),
        to.display()
    );
    Ok(())
}

fn wrong_kernel(ctx: &Ctx<'_>, work: &Path) -> Result<String> {
    let dir = wrong_tree(ctx)?;
    let tree = Tree::local(&dir)?;
    let (model, manifest) = model_and_manifest(ctx.project, Some("smollm2-135m"), None)?;
    let judged = run(
        ctx,
        &model,
        &tree,
        Backend::Cpu,
        &[],
        &work.join("rope-off"),
    )?;
    let ropes = judged
        .nodes
        .iter()
        .filter(|n| n.op == "ROPE" && n.status == "replayed")
        .count();
    let flagged: Vec<_> = judged.flagged().collect();
    let others: Vec<String> = flagged
        .iter()
        .filter(|n| n.op != "ROPE")
        .map(|n| format!("{} #{}", n.op, n.index))
        .collect();
    ensure!(
        others.is_empty(),
        "flagged beside ROPE: {}",
        others.join(", ")
    );
    ensure!(
        flagged.len() == ropes && ropes > 0,
        "{} of {ropes} ROPE nodes flagged",
        flagged.len()
    );
    let layers: std::collections::BTreeSet<_> = flagged.iter().filter_map(|n| n.layer).collect();
    let least = flagged
        .iter()
        .map(|n| n.worst_ratio)
        .fold(f64::INFINITY, f64::min);
    let llama = LlamaCpp::on(
        ctx.project,
        TreeArg {
            llama_cpp: Some(dir),
        },
        Some(FlashAttnMode::Off),
    );
    let options = Options {
        layers: Some("all".into()),
        ..Options::new(&manifest, &model, PROMPT, work.join("rope-off-compare"))
    };
    let outcome = compare(&llama, &PyTorch::new(ctx.project), &options)?;
    ensure!(
        outcome.failure.is_none(),
        "the comparison fails: {}",
        outcome.summary
    );
    Ok(format!(
        "replay: {} ROPE nodes flagged (layers {}..={}, each at least {least:.0}x its allowance), nothing else; compare: {}",
        flagged.len(),
        layers.first().copied().unwrap_or(0),
        layers.last().copied().unwrap_or(0),
        outcome.summary
    ))
}
