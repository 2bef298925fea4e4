//! verify's "any architecture" section: comparisons with no hand-written
//! manifest, llama.cpp's nodes paired with transformers' tensors by value.
//! Tiny random models of five architectures (one a mixture of experts)
//! from their Hugging Face checkpoints; a real divergence of llama.cpp's
//! found at the node; the pairs against the three hand-written manifests,
//! checkpoint by checkpoint; qwen2 from PyPI, paired in every layer.
//!
//! Each comparison runs each side once, over the ~20-token matching prompt:
//! the real models are paired in every layer (the whole graph) and compared
//! in a few; the `real` group compares every checkpoint of their manifests.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_compare::auto::{compare_auto, figures, Auto};
use llorch_checkpoint_compare::{Options, Outcome};
use llorch_checkpoint_matching::against::Verdict;
use llorch_checkpoint_spec::record::FlashAttnMode;

use super::ctx::Ctx;
use super::report::Report;
use crate::llama_cpp::tree::TreeArg;
use crate::models::model::{from_hf, tiny, tiny_saved_by, Outtype, SavedBy};
use crate::models::prompts::MATCHING_PROMPT;
use crate::runs::sides::{LlamaCpp, PyTorch};

/// The tiny architectures verify compares end to end: five of the eight
/// `cargo xtask model --tiny` makes, one a mixture of experts, each a
/// different kind of graph (QK norms, biases and LayerNorm, parallel
/// attention with one KV head, a shared-expert-less MoE).
const TINY: [&str; 5] = ["qwen3", "mistral", "starcoder2", "falcon", "qwen3_moe"];

pub fn checks(report: &mut Report, ctx: &Ctx<'_>) {
    report.section("any architecture: nodes paired with transformers' tensors by value, no manifest written by hand");
    let work = ctx.work.join("matching");
    // Each check's runs go once it held: qwen2's alone take 3.6 GB.
    let check = |report: &mut Report, name: &str, dirs: &[&str], result: Result<String>, t| {
        if report.check(name, t, result) {
            for dir in dirs {
                let _ = std::fs::remove_dir_all(work.join(dir));
            }
        }
    };
    for arch in TINY {
        let t = Instant::now();
        check(
            report,
            &format!("tiny random {arch} from its Hugging Face checkpoint, every layer: paired, drafted, within the f32 weights' tolerance"),
            &[arch],
            tiny_compare(ctx, arch),
            t,
        );
    }
    let t = Instant::now();
    check(
        report,
        "a tiny qwen3 saved by the converter's transformers (4.57.6) and the same saved by the reference's (5.x): \
         both convert and compare, to the same figures",
        &["qwen3-saved-by-4", "qwen3-saved-by-5"],
        saved_by_both(ctx),
        t,
    );
    let t = Instant::now();
    check(
        report,
        "a qwen3_moe whose config says not to renormalise the top-k routing weights (llama.cpp's qwen3moe always does): \
         the first diverging node is found, and the renormalisation among the unpaired nodes it is computed from",
        &["qwen3_moe-no-renorm", "qwen3_moe-diverging"],
        diverging_moe(ctx),
        t,
    );
    for name in [None, Some("smollm2-135m"), Some("gemma3-270m")] {
        let t = Instant::now();
        let dir = format!("against-{}", name.unwrap_or("gpt2"));
        check(
            report,
            &format!(
                "{}: the pairs hold every checkpoint of the hand-written manifest, in every layer, \
                 with the same reference and layout; compared in the first and last",
                name.unwrap_or("the synthetic GPT-2")
            ),
            &[dir.as_str()],
            against_hand_written(ctx, name),
            t,
        );
    }
    let t = Instant::now();
    check(
        report,
        "qwen2 (Qwen2.5-Coder-0.5B Q4_K_M from PyPI), no manifest: paired in every layer, within the quantized weights' tolerance in layers 0, 12 and the last",
        &["qwen2"],
        qwen2(ctx),
        t,
    );
}

fn llama<'a>(ctx: &Ctx<'a>) -> LlamaCpp<'a> {
    LlamaCpp::on(ctx.project, TreeArg::default(), Some(FlashAttnMode::Off))
}

fn auto(against: Option<PathBuf>, draft: Option<PathBuf>) -> Auto {
    Auto { draft, against }
}

/// Every layer of a converted Hugging Face checkpoint against the checkpoint.
fn hf_compare(
    ctx: &Ctx<'_>,
    hf: &Path,
    out: &Path,
    draft: Option<PathBuf>,
) -> Result<(Outcome, String)> {
    let gguf = from_hf(ctx.project, hf, Outtype::F32, false)?;
    let opts = Options {
        layers: Some("all".into()),
        hf: Some(hf.to_path_buf()),
        ..Options::new(Path::new(""), &gguf, MATCHING_PROMPT, out.to_path_buf())
    };
    let (outcome, matched) = compare_auto(
        &llama(ctx),
        &PyTorch::new(ctx.project),
        &opts,
        &auto(None, draft),
    )?;
    let line = figures(&matched, &outcome);
    Ok((outcome, line))
}

fn tiny_compare(ctx: &Ctx<'_>, arch: &str) -> Result<String> {
    let hf = tiny(ctx.project, arch, 0)?;
    let out = ctx.work.join("matching").join(arch);
    let draft = out.join("drafted.yaml");
    let (outcome, line) = hf_compare(ctx, &hf, &out, Some(draft.clone()))?;
    if let Some(why) = &outcome.failure {
        anyhow::bail!("{why}\n{line}");
    }
    // The drafted manifest is a manifest: it parses, with an entry for the
    // attention probabilities, the layer output and the logits among them.
    let drafted = llorch_checkpoint_spec::manifest::Manifest::load(&draft)?;
    let capture = |c: &llorch_checkpoint_spec::manifest::Checkpoint| {
        c.reference
            .as_ref()
            .map_or(String::new(), |r| r.capture.clone())
    };
    let scores = drafted
        .checkpoints
        .iter()
        .any(|c| c.op.as_deref() == Some("SOFT_MAX"));
    let layer_out = drafted
        .checkpoints
        .iter()
        .any(|c| capture(c).ends_with(".0"));
    let logits = drafted
        .checkpoints
        .iter()
        .any(|c| c.layer.is_none() && c.shape.iter().any(|d| d.to_string() == "n_vocab"));
    ensure!(
        scores && layer_out && logits,
        "the drafted manifest {} lacks the scores ({scores}), the layer output ({layer_out}) or the logits ({logits})",
        draft.display()
    );
    Ok(format!(
        "{line}; drafted {} ({} checkpoints)",
        draft.display(),
        drafted.checkpoints.len()
    ))
}

/// Checkpoints are saved by transformers 4 and 5 alike, and their files
/// differ (5 names its tokenizer class `TokenizersBackend`, which the
/// converter's 4.57.6 does not know): the same seed saved by each converts
/// and compares, and the two comparisons say the same.
fn saved_by_both(ctx: &Ctx<'_>) -> Result<String> {
    let mut lines = Vec::new();
    for (by, name) in [(SavedBy::Converter, "4"), (SavedBy::Reference, "5")] {
        let hf = tiny_saved_by(ctx.project, "qwen3", 0, by)?;
        let out = ctx
            .work
            .join("matching")
            .join(format!("qwen3-saved-by-{name}"));
        let (outcome, line) = hf_compare(ctx, &hf, &out, None)?;
        if let Some(why) = &outcome.failure {
            anyhow::bail!("saved by transformers {name}: {why}\n{line}");
        }
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(hf.join("llorch-tiny.json"))?)?;
        lines.push((
            saved["transformers"].as_str().unwrap_or("?").to_string(),
            line,
        ));
    }
    ensure!(
        lines[0].0.starts_with("4.") && lines[1].0.starts_with("5."),
        "the two were saved by transformers {} and {}",
        lines[0].0,
        lines[1].0
    );
    ensure!(
        lines[0].1 == lines[1].1,
        "saved by {}: {}\nsaved by {}: {}",
        lines[0].0,
        lines[0].1,
        lines[1].0,
        lines[1].1
    );
    Ok(format!(
        "saved by {} and by {}, each: {}",
        lines[0].0, lines[1].0, lines[1].1
    ))
}

/// transformers renormalises Qwen3-MoE's top-k weights only where the
/// config says so; llama.cpp's qwen3moe graph always does, and the
/// converter writes no key for it.
fn diverging_moe(ctx: &Ctx<'_>) -> Result<String> {
    let hf = tiny(ctx.project, "qwen3_moe", 0)?;
    let copy = ctx.work.join("matching").join("qwen3_moe-no-renorm");
    if copy.exists() {
        std::fs::remove_dir_all(&copy)?;
    }
    std::fs::create_dir_all(&copy)?;
    for entry in std::fs::read_dir(&hf)? {
        let path = entry?.path();
        std::fs::copy(&path, copy.join(path.file_name().context("a file")?))?;
    }
    let config = copy.join("config.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
    json["norm_topk_prob"] = false.into();
    std::fs::write(&config, serde_json::to_vec_pretty(&json)?)?;
    let (outcome, line) = hf_compare(
        ctx,
        &copy,
        &ctx.work.join("matching").join("qwen3_moe-diverging"),
        None,
    )?;
    ensure!(
        outcome.failure.is_some(),
        "the divergence went unseen: {line}"
    );
    let diverging = outcome
        .text
        .lines()
        .find(|l| l.starts_with("FIRST DIVERGING NODE"))
        .context("no first diverging node named")?;
    ensure!(
        diverging.contains("layer 0") && diverging.contains("ffn_moe_weights_norm-0"),
        "{diverging}"
    );
    Ok(format!("{diverging} ({line})"))
}

/// The matcher on a model with a hand-written manifest (`None`: the
/// synthetic GPT-2): each of its checkpoints in every layer must be a pair.
fn against_hand_written(ctx: &Ctx<'_>, name: Option<&str>) -> Result<String> {
    let chosen = crate::models::model::choose(ctx.project, name, None)?;
    let manifest = chosen.manifest.context("no hand-written manifest")?;
    let out = ctx
        .work
        .join("matching")
        .join(format!("against-{}", name.unwrap_or("gpt2")));
    let opts = Options {
        layers: Some("0,-1".into()),
        ..Options::new(Path::new(""), &chosen.model, MATCHING_PROMPT, out)
    };
    let (outcome, matched) = compare_auto(
        &llama(ctx),
        &PyTorch::new(ctx.project),
        &opts,
        &auto(Some(manifest), None),
    )?;
    let rows = outcome
        .against
        .as_ref()
        .context("no comparison with the manifest")?;
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| !matches!(r.verdict, Verdict::Same | Verdict::Alias { .. }))
        .map(|r| format!("{}: {:?}", r.key, r.verdict))
        .collect();
    let same = rows.iter().filter(|r| r.verdict == Verdict::Same).count();
    ensure!(
        bad.is_empty(),
        "{} of {} not paired alike: {}",
        bad.len(),
        rows.len(),
        bad.join("; ")
    );
    Ok(format!(
        "{} checkpoints: {same} the same tensor in the same layout, {} the same values under another name; {}",
        rows.len(),
        rows.len() - same,
        figures(&matched, &outcome)
    ))
}

/// The first, a middle and the last of qwen2's 24 layers.
const QWEN2_LAYERS: &str = "0,12,-1";

fn qwen2(ctx: &Ctx<'_>) -> Result<String> {
    let chosen = crate::models::model::choose(ctx.project, Some("qwen2.5-coder-0.5b"), None)?;
    ensure!(
        chosen.manifest.is_none(),
        "qwen2 has a manifest now: compare it by matching all the same"
    );
    let out = ctx.work.join("matching").join("qwen2");
    let opts = Options {
        layers: Some(QWEN2_LAYERS.into()),
        ..Options::new(Path::new(""), &chosen.model, MATCHING_PROMPT, out)
    };
    let (outcome, matched) = compare_auto(
        &llama(ctx),
        &PyTorch::new(ctx.project),
        &opts,
        &auto(None, None),
    )?;
    let line = figures(&matched, &outcome);
    match outcome.failure {
        Some(why) => anyhow::bail!("{why}\n{line}"),
        None => Ok(line),
    }
}
