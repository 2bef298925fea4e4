//! verify's Vulkan section: llama.cpp's Vulkan backend built and run on
//! whatever Vulkan device the machine has (Mesa's llvmpipe where there is no
//! GPU), every checkpoint read from device memory and compared with the CPU
//! backend's run of the same tree, all layers on the device and split.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_spec::record::RunRecord;

use super::ctx::Ctx;
use super::report::Report;
use crate::llama_cpp::build::{self, Backend};
use crate::llama_cpp::tree::Tree;
use crate::llama_cpp::vulkan;
use crate::models::prompts::PERF_PROMPT;
use crate::runs::two_trees::{diff_trees, Runs, Side};

/// The NMSE within which a Vulkan checkpoint counts as the CPU's: its
/// kernels sum in another order, and round activations to f16 where the
/// CPU's keep f32 (matrix products of f16 weights); measured worst on the
/// pin: see docs/vulkan.md.
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
        built.map(|_| format!("{} driver(s): {}", vulkan::drivers().len(), driver_names())),
    ) {
        return;
    }
    let work = ctx.work.join("vulkan");
    let t = Instant::now();
    report.check(
        "GPT-2, nine checkpoints of every layer read from the Vulkan device's memory, against the CPU backend's",
        t,
        against_cpu(ctx, &ctx.model, &ctx.manifest, None, &work.join("gpt2")),
    );
    let t = Instant::now();
    report.check(
        "GPT-2 split, -ngl 6: the last 6 layers on the device, the rest on the CPU; each checkpoint where it ran, against the CPU backend's",
        t,
        against_cpu(ctx, &ctx.model, &ctx.manifest, Some(6), &work.join("gpt2-split")),
    );
    report.tidy(&work);
}

fn driver_names() -> String {
    vulkan::drivers()
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(", ")
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
        prompt: PERF_PROMPT,
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
        .filter(|(b, _)| b.starts_with("Vulkan"))
        .map(|(_, n)| n)
        .sum();
    ensure!(
        on_device > 0,
        "no checkpoint was read from a Vulkan buffer: {buffers:?}"
    );
    if let Some(n) = ngl {
        check_split(&record, n)?;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&outcome.report)?)?;
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

fn per_buffer(record: &RunRecord) -> BTreeMap<String, usize> {
    let mut buffers = BTreeMap::new();
    for c in &record.checkpoints {
        *buffers.entry(c.buffer.clone()).or_insert(0) += 1;
    }
    buffers
}

/// With `-ngl n`, llama.cpp puts the last `n` layers on the device: their
/// checkpoints must all come from a Vulkan buffer, and some of the others'
/// from the CPU's (a matrix product of a long prompt may still run on the
/// device: llama.cpp offloads it there).
fn check_split(record: &RunRecord, n: u32) -> Result<()> {
    let n_layer = u32::try_from(record.model.n_layer)?;
    let first_on_device = n_layer.saturating_sub(n);
    for c in &record.checkpoints {
        let layer = c.layer.context("a layer's checkpoint")?;
        ensure!(
            layer < first_on_device || c.buffer.starts_with("Vulkan"),
            "{} of layer {layer} was read from {}, though layers {first_on_device}.. are on the device",
            c.id,
            c.buffer
        );
    }
    ensure!(
        record
            .checkpoints
            .iter()
            .any(|c| c.layer.is_some_and(|l| l < first_on_device) && c.buffer == "CPU"),
        "no checkpoint of layers 0-{} was read from the CPU's buffer",
        first_on_device.saturating_sub(1)
    );
    Ok(())
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
