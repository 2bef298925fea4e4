//! verify's section for a user's own llama.cpp: an older tree of
//! `vendor/trees.yaml`, given as a plain read-only directory, built and run
//! beside the pin and compared with it checkpoint by checkpoint, its files
//! unchanged after; a tree too old refused by name before anything builds;
//! a fork whose GGUF API still lives in `ggml.h` served, one without
//! `ggml-backend.h` refused by name.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_spec::record::RunRecord;

use super::ctx::Ctx;
use super::report::Report;
use crate::llama_cpp::build::{self, Backend};
use crate::llama_cpp::fetch;
use crate::llama_cpp::hashes::content_sha256;
use crate::llama_cpp::tree::Tree;
use crate::models::prompts::PERF_PROMPT;
use crate::runs::two_trees::{diff_trees, Runs, Side};

/// The tree verify builds: the newest before the pin.
const OLDER: &str = "llama-cpp-sys-2-0.1.150";
/// A tree whose API is older than the extractor supports.
const TOO_OLD: &str = "llama-cpp-sys-2-0.1.100";

/// `drop_build`: the tree's llama.cpp build and extractor go once the
/// section passed (the full tier: its disk peak; a rerun builds them again).
pub fn tree_checks(report: &mut Report, ctx: &Ctx<'_>, drop_build: bool) {
    report.section(&format!(
        "your own llama.cpp: {OLDER} as a plain read-only directory"
    ));
    let t = Instant::now();
    report.check(
        "a fork with GGUF's API in ggml.h (no gguf.h) gets its bindings; one without ggml-backend.h is refused naming it",
        t,
        headers_in_their_homes(ctx),
    );
    let Some((dir, before, tree)) = fetched_and_built(report, ctx) else {
        return;
    };
    runs_against_the_pin(report, ctx, &tree);
    let t = Instant::now();
    report.check(
        "its files are byte-identical after all this (content sha256)",
        t,
        content_sha256(&dir).and_then(|after| {
            ensure!(
                after == before,
                "the tree changed: {before} before, {after} after"
            );
            Ok(format!("{} before and after", &after[..16]))
        }),
    );
    let t = Instant::now();
    report.check(
        &format!("{TOO_OLD} is refused before building, naming what it lacks"),
        t,
        too_old_is_refused(ctx),
    );
    for name in ["gpt2", "smollm2"] {
        report.tidy(&ctx.work.join(format!("trees-{name}")));
    }
    if drop_build {
        report.tidy(&build::default_build_dir(ctx.project, Backend::Cpu, &tree));
        report.tidy(&ctx.project.extractor_dir(&tree.id));
    }
}

/// The older tree fetched, hashed and built with an extractor: its
/// directory, its content sha256 before anything ran, the tree.
fn fetched_and_built(report: &mut Report, ctx: &Ctx<'_>) -> Option<(PathBuf, String, Tree)> {
    let t = Instant::now();
    let fetched = fetch::other_tree(ctx.project, OLDER).and_then(|dir| {
        let hash = content_sha256(&dir)?;
        Ok((dir, hash))
    });
    let (dir, before) = report_ok(
        report,
        "the tree is fetched and hashed",
        t,
        fetched,
        |(dir, hash)| format!("{} (content sha256 {})", dir.display(), &hash[..16]),
    )?;
    let t = Instant::now();
    let built = Tree::local(&dir).and_then(|tree| {
        let exe = build::ensure_extractor(ctx.project, Backend::Cpu, &tree)?;
        Ok((tree, exe))
    });
    let (tree, _) = report_ok(
        report,
        "llama.cpp and an extractor build on it, bindings from its headers",
        t,
        built,
        |(_, exe)| {
            format!(
                "{} in {:.0} s (0 when already built)",
                exe.display(),
                t.elapsed().as_secs_f64()
            )
        },
    )?;
    Some((dir, before, tree))
}

/// The synthetic GPT-2's nine checkpoints and SmolLM2's every layer, on
/// the tree and on the pin.
fn runs_against_the_pin(report: &mut Report, ctx: &Ctx<'_>, tree: &Tree) {
    let t = Instant::now();
    report.check(
        "all nine GPT-2 checkpoints on it, each within NMSE 1e-6 of the pin's",
        t,
        against_pin(ctx, tree, &ctx.model, &ctx.manifest, None, "gpt2", 1e-6),
    );
    let t = Instant::now();
    let smollm2 = crate::models::model::model_and_manifest(ctx.project, Some("smollm2-135m"), None);
    report.info(
        "SmolLM2 every layer, the pin against it (flash attention off)",
        t,
        smollm2.and_then(|(model, manifest)| {
            against_pin(
                ctx,
                tree,
                &model,
                &manifest,
                Some("all"),
                "smollm2",
                f64::INFINITY,
            )
        }),
    );
}

/// Logs `result` as a check and hands on its value.
fn report_ok<T>(
    report: &mut Report,
    name: &str,
    t: Instant,
    result: Result<T>,
    said: impl Fn(&T) -> String,
) -> Option<T> {
    match result {
        Ok(value) => {
            report.check(name, t, Ok(said(&value)));
            Some(value)
        }
        Err(err) => {
            report.check(name, t, Err(err));
            None
        }
    }
}

/// The pin against `tree` (`cargo xtask diff-trees`): its summary lines.
fn against_pin(
    ctx: &Ctx<'_>,
    tree: &Tree,
    model: &Path,
    manifest: &Path,
    layers: Option<&str>,
    name: &str,
    max_nmse: f64,
) -> Result<String> {
    let pin = Tree::pinned(ctx.project)?;
    let out = ctx.work.join(format!("trees-{name}"));
    let extra = ["--flash-attn".to_string(), "off".to_string()];
    let runs = Runs {
        model,
        manifest,
        prompt: PERF_PROMPT,
        layers,
        extra: &extra,
        max_nmse,
        out: &out,
    };
    let outcome = diff_trees(ctx.project, [Side::cpu(&pin), Side::cpu(tree)], &runs)?;
    let b = RunRecord::read(&out.join("b"))?;
    let expected = b.manifest(manifest)?.checkpoints.len();
    ensure!(
        b.checkpoints.len() == expected,
        "{} of {expected} checkpoints on the tree",
        b.checkpoints.len()
    );
    ensure!(outcome.pass, "beyond NMSE {max_nmse:e}:\n{}", outcome.table);
    let summary: Vec<&str> = outcome.table.lines().rev().take(2).collect();
    Ok(format!("{}; {}", summary[1], summary[0]))
}

fn too_old_is_refused(ctx: &Ctx<'_>) -> Result<String> {
    let dir = fetch::other_tree(ctx.project, TOO_OLD)?;
    let tree = Tree::local(&dir)?;
    let err = match crate::llama_cpp::bindgen::for_tree(ctx.project, &tree) {
        Ok(_) => anyhow::bail!("{TOO_OLD} was accepted"),
        Err(err) => format!("{err:#}"),
    };
    ensure!(
        err.contains("too old") && err.contains("llama_get_memory") && err.contains("0.1.120"),
        "unexpected message: {err}"
    );
    Ok(err.lines().next().context("a message")?.to_string())
}

/// Headers-only trees made from the pin's: GGUF's declarations moved into
/// `ggml.h` (as before upstream split them out, and in forks of then), and
/// `ggml-backend.h` removed. Only bindgen runs on them.
fn headers_in_their_homes(ctx: &Ctx<'_>) -> Result<String> {
    let pin = fetch::ensure_tree(ctx.project, false)?;
    let fork = ctx.work.join("fork-headers");
    let _ = std::fs::remove_dir_all(&fork);
    for dir in ["include", "ggml/include"] {
        std::fs::create_dir_all(fork.join(dir))?;
        for entry in std::fs::read_dir(pin.join(dir))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "h") {
                std::fs::copy(
                    &path,
                    fork.join(dir).join(path.file_name().context("a name")?),
                )?;
            }
        }
    }
    std::fs::write(fork.join("CMakeLists.txt"), "# headers only\n")?;
    let (ggml_h, gguf_h) = (
        fork.join("ggml/include/ggml.h"),
        fork.join("ggml/include/gguf.h"),
    );
    let joined = std::fs::read_to_string(&ggml_h)? + &std::fs::read_to_string(&gguf_h)?;
    std::fs::write(&ggml_h, joined)?;
    std::fs::remove_file(&gguf_h)?;
    // Its llama.h has no gguf.h to include either.
    let llama_h = fork.join("include/llama.h");
    let text = std::fs::read_to_string(&llama_h)?.replace("#include \"gguf.h\"", "");
    std::fs::write(&llama_h, text)?;
    let tree = Tree::local(&fork)?;
    let bindings =
        crate::llama_cpp::bindgen::for_tree(ctx.project, &tree)?.context("no bindings")?;
    let text = std::fs::read_to_string(&bindings)?;
    let gguf = text.matches("pub fn gguf_").count();
    ensure!(gguf > 0, "the fork's bindings have no gguf_ function");
    let _ = std::fs::remove_dir_all(ctx.project.extractor_dir(&tree.id));
    std::fs::remove_file(fork.join("ggml/include/ggml-backend.h"))?;
    let err = match crate::llama_cpp::bindgen::for_tree(ctx.project, &Tree::local(&fork)?) {
        Ok(_) => anyhow::bail!("a tree without ggml-backend.h was accepted"),
        Err(err) => format!("{err:#}"),
    };
    ensure!(
        err.contains("ggml/include/ggml-backend.h"),
        "unexpected message: {err}"
    );
    std::fs::remove_dir_all(&fork)?;
    Ok(format!(
        "{gguf} gguf_ functions bound from ggml.h; without ggml-backend.h: {}",
        err.lines().next().unwrap_or_default()
    ))
}
