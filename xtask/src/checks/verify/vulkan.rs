//! verify's Vulkan section: llama.cpp's Vulkan backend built and run on
//! whatever Vulkan device the machine has (Mesa's llvmpipe where there is no
//! GPU), every checkpoint read from device memory and compared with the CPU
//! backend's run of the same tree, all layers on the device and split.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_compare::{compare, Options};
use llorch_checkpoint_spec::record::{FlashAttnMode, RunRecord};

use super::ctx::Ctx;
use super::report::Report;
use crate::llama_cpp::build::{self, Backend};
use crate::llama_cpp::tree::Tree;
use crate::llama_cpp::vulkan;
use crate::models::prompts::{words_of_english, PERF_PROMPT};
use crate::runs::sides::{run_self_test, LlamaCpp, PyTorch};
use crate::runs::two_trees::{diff_trees, Runs, Side};

/// The NMSE within which a Vulkan checkpoint of the f32 GPT-2 counts as the
/// CPU's: its kernels sum in another order and round differently to f16
/// (the product with the f16 V cache); the worst measured on the pin is
/// 1.5e-5 (docs/gpu-and-rpc.md, "Vulkan").
pub const MAX_NMSE: f64 = 1e-4;

pub fn checks(report: &mut Report, ctx: &Ctx<'_>) {
    report.section(
        "vulkan: llama.cpp's Vulkan backend on this machine's device, against its CPU backend",
    );
    let t = Instant::now();
    let missing = vulkan::missing();
    if !missing.is_empty() {
        report.check(
            "the Vulkan backend's prerequisites are installed",
            t,
            Err(anyhow::anyhow!(
                "missing: {}; install them (Debian, as root): {}",
                missing.join(", "),
                vulkan::install_command(ctx.project)
            )),
        );
        return;
    }
    let t = Instant::now();
    let built = Tree::pinned(ctx.project)
        .and_then(|tree| build::ensure_extractor(ctx.project, Backend::Vulkan, &tree));
    if !report.check(
        "llama.cpp's Vulkan backend builds (the pin, the headers vendor/vulkan.yaml names where the system's are older)",
        t,
        built.map(|_| format!("headers: {}", vulkan::headers_in_use(ctx.project))),
    ) {
        return;
    }
    let work = ctx.work.join("vulkan");
    let t = Instant::now();
    report.check(
        "GPT-2, nine checkpoints of every layer read from the Vulkan device's memory, against the CPU backend's",
        t,
        against_cpu(ctx, &ctx.model, &ctx.manifest, PERF_PROMPT, None, &work.join("gpt2")),
    );
    let t = Instant::now();
    report.check(
        "GPT-2 split, -ngl 6 and a 20-word prompt (under 32 tokens): layers 0-6 on the CPU, bitwise the CPU build's; 7-11 and the output read from the device",
        t,
        against_cpu(ctx, &ctx.model, &ctx.manifest, &short_prompt(), Some(6), &work.join("gpt2-split")),
    );
    let t = Instant::now();
    report.check(
        "GPT-2 on Vulkan matches PyTorch (f64) within the manifest's tolerance; a 1e-2 perturbation is caught",
        t,
        run_self_test(
            ctx.project,
            &LlamaCpp::new(ctx.project).on_backend(Backend::Vulkan),
            &PyTorch::new(ctx.project),
        ),
    );
    report.tidy(&ctx.project.work_dir().join("compare-self-test"));
    let t = Instant::now();
    report.check(
        "SmolLM2 (Q4_1), every layer on Vulkan, against transformers (f64): within the manifest's NMSE limits; same next token, or a near tie",
        t,
        real_against_f64(ctx, "smollm2-135m", &work.join("smollm2")),
    );
    report.tidy(&work);
    let t = Instant::now();
    report.check(
        "GPT-2 and SmolLM2 replayed node by node on Vulkan: each node of the device's kernels within what its arithmetic allows",
        t,
        replayed_on_the_device(ctx, &work),
    );
    report.tidy(&work);
}

/// `replay --backend vulkan` of GPT-2 and SmolLM2 (every node, every layer).
fn replayed_on_the_device(ctx: &Ctx<'_>, work: &Path) -> Result<String> {
    let gpt2 = super::replay::every_node_within(
        ctx,
        &ctx.model,
        Backend::Vulkan,
        &[],
        &work.join("replay-gpt2"),
    )?;
    let (smollm2, _) =
        crate::models::model::model_and_manifest(ctx.project, Some("smollm2-135m"), None)?;
    let smollm2 = super::replay::every_node_within(
        ctx,
        &smollm2,
        Backend::Vulkan,
        &[],
        &work.join("replay-smollm2"),
    )?;
    Ok(format!("GPT-2: {gpt2}; SmolLM2: {smollm2}"))
}

/// One model's every layer on the CPU backend and on Vulkan (`ngl` layers
/// of it, or all), compared checkpoint by checkpoint: every checkpoint there,
/// each read from the buffer of the backend that computed it, within
/// [`MAX_NMSE`]; its figures (bitwise-equal count, worst NMSE and where,
/// checkpoints per buffer).
pub fn against_cpu(
    ctx: &Ctx<'_>,
    model: &Path,
    manifest: &Path,
    prompt: &str,
    ngl: Option<u32>,
    out: &Path,
) -> Result<String> {
    let pin = Tree::pinned(ctx.project)?;
    let mut extra = vec!["--flash-attn=off".to_string()];
    if let Some(n) = ngl {
        extra.push(format!("--n-gpu-layers={n}"));
    }
    let runs = Runs {
        model,
        manifest,
        prompt,
        layers: Some("all"),
        extra: &extra,
        max_nmse: MAX_NMSE,
        out,
    };
    let cpu = Side::cpu(&pin);
    let on_vulkan = Side {
        tree: &pin,
        backend: Backend::Vulkan,
    };
    let outcome = diff_trees(ctx.project, [cpu, on_vulkan], &runs)?;
    let record = RunRecord::read(&out.join("b"))?;
    ensure!(
        record.backend == "vulkan",
        "the run's backend is {:?}, not vulkan (devices: {:?})",
        record.backend,
        record.devices
    );
    let expected = record.manifest(manifest)?.checkpoints.len();
    ensure!(
        record.checkpoints.len() == expected,
        "{} of {expected} checkpoints on Vulkan",
        record.checkpoints.len()
    );
    let buffers = per_buffer(&record);
    let on_device: usize = buffers
        .iter()
        .filter(|(b, _)| on_the_device(b))
        .map(|(_, n)| n)
        .sum();
    ensure!(
        on_device > 0,
        "no checkpoint was read from a Vulkan buffer: {buffers:?}"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&outcome.report)?)?;
    if let Some(n) = ngl {
        check_split(&record, n, &json)?;
    }
    ensure!(outcome.pass, "beyond NMSE {MAX_NMSE:e}:\n{}", outcome.table);
    let (worst, at) = worst(&json)?;
    let device = record
        .devices
        .iter()
        .find(|d| d.name.starts_with("Vulkan"))
        .map_or("?".to_string(), |d| d.description.clone());
    Ok(format!(
        "{} checkpoints on {device}: {} bitwise the CPU's, worst NMSE {worst:.2e} ({at}); by buffer {buffers:?}; {} bytes fetched from the device",
        record.checkpoints.len(),
        json["bitwise_equal"],
        record.checkpoints.iter().map(|c| c.fetched_bytes).sum::<u64>()
    ))
}

/// A buffer in the device's memory (`Vulkan0`), not the host memory the
/// Vulkan build gives the CPU backend (`Vulkan_Host`).
fn on_the_device(buffer: &str) -> bool {
    buffer.starts_with("Vulkan") && !buffer.ends_with("_Host")
}

fn per_buffer(record: &RunRecord) -> BTreeMap<String, usize> {
    let mut buffers = BTreeMap::new();
    for c in &record.checkpoints {
        *buffers.entry(c.buffer.clone()).or_insert(0) += 1;
    }
    buffers
}

/// A prompt short enough (under 32 tokens) that llama.cpp leaves a CPU
/// layer's matrix products on the CPU: with a longer one it runs them on
/// the device too, copying their weights there (its op offload).
fn short_prompt() -> String {
    words_of_english(20)
}

/// With `-ngl n`, llama.cpp puts the last `n` layers on the device, the
/// output counted as one. The checkpoints of the others ran on the CPU
/// backend, which the Vulkan build shares with the CPU build: bitwise its
/// run; those of the device's layers must come from a Vulkan buffer.
fn check_split(record: &RunRecord, n: u32, json: &serde_json::Value) -> Result<()> {
    let n_layer = u32::try_from(record.model.n_layer)?;
    let first_on_device = (n_layer + 1).saturating_sub(n);
    let rows = json["checkpoints"].as_array().context("checkpoints")?;
    let bitwise = |file: &str| {
        rows.iter()
            .any(|r| r["file"] == file && r["stats"]["bitwise_equal"] == true)
    };
    for c in &record.checkpoints {
        let layer = c.layer.context("a layer's checkpoint")?;
        match layer < first_on_device {
            true => ensure!(
                bitwise(&c.file),
                "{} of layer {layer} (on the CPU, read from {}) differs from the CPU build's",
                c.id,
                c.buffer
            ),
            false => ensure!(
                on_the_device(&c.buffer),
                "{} of layer {layer} was read from {}, though layers {first_on_device}.. are on the device",
                c.id,
                c.buffer
            ),
        }
    }
    Ok(())
}

/// A catalogue model, every layer on Vulkan, against transformers in f64.
/// The manifest's NMSE limits must hold; its element bounds were measured
/// on the CPU backend, whose products keep f32 sums where llvmpipe's Vulkan
/// kernels sum in f16: elements beyond them are counted and named, not
/// failed (docs/gpu-and-rpc.md has the figures).
fn real_against_f64(ctx: &Ctx<'_>, name: &str, out: &Path) -> Result<String> {
    let (model, manifest) =
        crate::models::model::model_and_manifest(ctx.project, Some(name), None)?;
    let llama = LlamaCpp::on(ctx.project, Default::default(), Some(FlashAttnMode::Off))
        .on_backend(Backend::Vulkan);
    let outcome = compare(
        &llama,
        &PyTorch::new(ctx.project),
        &Options {
            layers: Some("all".into()),
            ..Options::new(&manifest, &model, PERF_PROMPT, out.to_path_buf())
        },
    )?;
    let over_nmse: Vec<String> = outcome
        .rows
        .iter()
        .filter(|r| r.verdict().nmse.is_nan() || r.verdict().nmse > r.tolerance.nmse)
        .map(|r| {
            format!(
                "{} layer {:?}: NMSE {:.2e}",
                r.id,
                r.layer,
                r.verdict().nmse
            )
        })
        .collect();
    ensure!(
        over_nmse.is_empty(),
        "over the manifest's NMSE limit: {}",
        over_nmse.join(", ")
    );
    ensure!(
        outcome.next_token.agrees(),
        "{}; but the {}",
        outcome.summary,
        outcome.next_token.describe()
    );
    let record = RunRecord::read(&out.join("llama"))?;
    ensure!(
        record.backend == "vulkan",
        "the run's backend is {:?}",
        record.backend
    );
    let beyond = outcome.rows.iter().filter(|r| !r.pass).count();
    Ok(format!(
        "every NMSE within the manifest's limit; {}; {}; {beyond} with elements beyond the CPU-measured element bound{}",
        outcome.summary,
        outcome.next_token.describe(),
        outcome.failure.map(|f| format!(" (first: {f})")).unwrap_or_default()
    ))
}

/// The largest NMSE of the comparison's checkpoints, and which.
fn worst(json: &serde_json::Value) -> Result<(f64, String)> {
    let rows = json["checkpoints"].as_array().context("checkpoints")?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r["stats"]["nmse"].as_f64().unwrap_or(f64::INFINITY),
                r["file"].as_str().unwrap_or("?").to_string(),
            )
        })
        .fold(
            (0.0, String::from("none")),
            |w, r| if r.0 > w.0 { r } else { w },
        ))
}
