//! The worked example of testing your own engine against llama.cpp:
//! `extractor/golden/example`, a GPT-2 layer 0 in plain Rust, built as its
//! own workspace with the library as a path dependency; its tests against a
//! fresh run, then its candidate through `compare --candidate`.

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_compare::{compare, Options};
use llorch_checkpoint_spec::record::FlashAttnMode;
use xshell::cmd;

use super::ctx::Ctx;
use crate::runs::extractor::ExtractorRun;
use crate::runs::sides::{LlamaCpp, PyTorch};

/// Thirteen tokens: a causal mask with something to mask.
const PROMPT: &str = "The quick brown fox jumps over the lazy dog, then sleeps.";

pub fn example_engine(ctx: &Ctx<'_>) -> Result<String> {
    let (sh, project) = (&ctx.sh, ctx.project);
    let model = crate::models::model::default_model(project)?;
    let manifest = project.root().join("manifests/gpt2.yaml");
    let (run, candidate) = (
        ctx.work.join("engine-run"),
        ctx.work.join("engine-candidate"),
    );
    // Flash attention off: the scores exist, and V is cached transposed.
    ExtractorRun::new(&ctx.exe, &model, &run)
        .manifest(&manifest)
        .prompt(PROMPT)
        .generate(0)
        .flash_attn(FlashAttnMode::Off)
        .run(sh)?;
    if candidate.exists() {
        std::fs::remove_dir_all(&candidate)?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let example = project.root().join("extractor/golden/example");
    let target = project.root().join("target");
    let dir = sh.push_dir(example);
    let out = cmd!(sh, "{cargo} test --quiet -- --nocapture --test-threads 1")
        .env("CARGO_TARGET_DIR", &target)
        .env("LLORCH_RUN", &run)
        .env("LLORCH_CANDIDATE", &candidate)
        .quiet()
        .ignore_status()
        .output()?;
    drop(dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && text.contains("test result: ok. 2 passed"),
        "the example engine's tests failed:\n{}",
        tail(&text, 40)
    );
    // From the verdict on: --quiet's progress dots may lead the line.
    let line = |has: &str| {
        let l = text.lines().find(|l| l.contains(has))?;
        Some(l[l.find("checkpoint ")?..].to_string())
    };
    let ffn = line("checkpoint 06_ffn layer 0").context("no 06_ffn verdict printed")?;
    let wrong = line("DIVERGES").context("no failing verdict printed")?;
    let outcome = compare(
        &LlamaCpp::new(project),
        &PyTorch::new(project),
        &Options {
            run: Some(run),
            candidate: Some(candidate),
            ..Options::new(&manifest, &model, PROMPT, ctx.work.join("engine-compare"))
        },
    )?;
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&outcome.report)?)?;
    for pair in ["llama_cpp", "f64"] {
        let first = &report["candidate"][format!("first_divergence_from_{pair}")];
        ensure!(
            first.is_null(),
            "compare --candidate finds the example engine diverging from {pair}: {first}"
        );
    }
    let nmse = ffn
        .split("NMSE ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or("?");
    Ok(format!(
        "2 tests passed: nine checkpoints of layer 0 within the candidate default (06_ffn NMSE {nmse}); \
         the unscaled variant fails first: {wrong}; compare --candidate: no divergence from llama.cpp or f64"
    ))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
