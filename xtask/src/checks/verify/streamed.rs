//! verify's "real sizes" section, on models small enough to hold both ways:
//! the reference streamed layer by layer writes bitwise the tensors of the
//! whole-model one, and `--replay-layers` feeds each layer llama.cpp's input
//! of it, so that a layer's local error is what it adds.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_compare::auto::replay::layer_errors;
use llorch_checkpoint_compare::auto::{compare_auto, Auto};
use llorch_checkpoint_compare::{Options, Outcome};
use llorch_checkpoint_matching::sides::tensor_files;
use llorch_checkpoint_report::findings::{F32, F64, F64_REPLAY};
use llorch_checkpoint_spec::format::read_values;
use llorch_checkpoint_spec::record::FlashAttnMode;

use super::ctx::Ctx;
use super::report::Report;
use crate::llama_cpp::tree::TreeArg;
use crate::models::model::{from_hf, tiny, Outtype};
use crate::models::prompts::MATCHING_PROMPT;
use crate::runs::sides::{LlamaCpp, PyTorch};

/// Four dense architectures whose weights transformers loads under their own
/// names (a streamed reference refuses those it fuses, such as MoE experts).
const STREAMED: [&str; 4] = ["llama", "qwen3", "falcon", "starcoder2"];

pub fn checks(report: &mut Report, ctx: &Ctx<'_>) {
    report.section("real sizes: the reference streamed layer by layer, and each layer replayed from llama.cpp's input");
    let work = ctx.work.join("streamed");
    for arch in STREAMED {
        let t = Instant::now();
        report.check(
            &format!("tiny {arch}: the streamed reference's every tensor, f32 and f64, bitwise the whole-model reference's"),
            t,
            bitwise(ctx, Source::Tiny(arch), &work.join(arch)),
        );
    }
    let t = Instant::now();
    report.check(
        "SmolLM2-135M from its GGUF alone: the reference streamed from its saved copy, every tensor bitwise the whole-model reference's",
        t,
        bitwise(ctx, Source::Gguf("smollm2-135m"), &work.join("smollm2")),
    );
    let t = Instant::now();
    report.check(
        "tiny llama --replay-layers: layer 0 is the f64 pass's bitwise, layer 1 starts from llama.cpp's layer-0 output, and its local error is below the error it inherits",
        t,
        replayed(ctx, &work.join("replay")),
    );
    let t = Instant::now();
    report.check(
        "tiny llama --max-disk below what the comparison would write: refused after llama.cpp's graph run, with the figures, its files removed",
        t,
        over_budget(ctx, &work.join("budget")),
    );
    let t = Instant::now();
    report.check(
        "the synthetic GPT-2 by matching, every layer, --keep failing: the first and last layer's files kept, the rest dropped, the run's record listing exactly what it holds, report.json every checkpoint",
        t,
        keep_failing(ctx, &work.join("keep")),
    );
    let _ = std::fs::remove_dir_all(&work);
}

fn keep_failing(ctx: &Ctx<'_>, out: &Path) -> Result<String> {
    let opts = Options {
        layers: Some("all".into()),
        keep_failing: true,
        ..Options::new(
            Path::new(""),
            &ctx.model,
            MATCHING_PROMPT,
            out.to_path_buf(),
        )
    };
    let llama = LlamaCpp::on(ctx.project, TreeArg::default(), Some(FlashAttnMode::Off));
    let auto = Auto {
        draft: None,
        against: None,
    };
    let (outcome, _) = compare_auto(&llama, &PyTorch::new(ctx.project), &opts, &auto)?;
    let record = llorch_checkpoint_spec::record::RunRecord::read(&out.join("llama"))?;
    let files: Vec<_> = std::fs::read_dir(out.join("llama"))?
        .flatten()
        .filter(|e| {
            e.path().extension().is_some_and(|x| x == "bin") && e.file_name() != "logits.bin"
        })
        .collect();
    let layers: std::collections::BTreeSet<_> =
        record.checkpoints.iter().map(|c| c.layer).collect();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json"))?)?;
    let reported = report["checkpoints"].as_array().map_or(0, Vec::len);
    ensure!(
        files.len() == record.checkpoints.len()
            && record
                .checkpoints
                .iter()
                .all(|c| out.join("llama").join(&c.file).is_file()),
        "{} files beside a run.json listing {}",
        files.len(),
        record.checkpoints.len()
    );
    ensure!(
        record.checkpoints.len() < outcome.entries.len()
            && reported == outcome.entries.len()
            && !out.join("auto/reference").exists(),
        "kept {} of {} checkpoints, report.json has {reported}",
        record.checkpoints.len(),
        outcome.entries.len()
    );
    Ok(format!(
        "{} of {} checkpoints kept their files (layers {:?} and those outside them); report.json has all {reported}",
        record.checkpoints.len(),
        outcome.entries.len(),
        layers
    ))
}

fn over_budget(ctx: &Ctx<'_>, out: &Path) -> Result<String> {
    let opts = |o: &mut Options| o.max_disk = Some(1_000_000);
    let err = match compare_with(ctx, Source::Tiny("llama"), out, opts) {
        Ok(_) => anyhow::bail!("a comparison over --max-disk 1 MB ran"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains("over --max-disk 1 MB") && err.contains("graph run alone took"),
        "the refusal does not say what it needed: {err}"
    );
    ensure!(
        !out.join("auto").exists(),
        "the refused comparison left {}",
        out.join("auto").display()
    );
    Ok(err.lines().next().unwrap_or_default().to_string())
}

fn compare(
    ctx: &Ctx<'_>,
    source: Source<'_>,
    out: &Path,
    stream: bool,
    replay: bool,
) -> Result<Outcome> {
    compare_with(ctx, source, out, |o| {
        o.stream_reference = stream;
        o.replay_layers = replay;
    })
}

/// What a check compares: a tiny model from its Hugging Face checkpoint, or
/// a catalogue GGUF alone (whose streamed reference reads its saved copy).
#[derive(Clone, Copy)]
enum Source<'a> {
    Tiny(&'a str),
    Gguf(&'a str),
}

fn compare_with(
    ctx: &Ctx<'_>,
    source: Source<'_>,
    out: &Path,
    set: impl Fn(&mut Options),
) -> Result<Outcome> {
    let (gguf, hf) = match source {
        Source::Tiny(arch) => {
            let hf = tiny(ctx.project, arch, 0)?;
            (from_hf(ctx.project, &hf, Outtype::F32, false)?, Some(hf))
        }
        Source::Gguf(name) => (crate::models::catalogue::fetch(ctx.project, name)?, None),
    };
    let mut opts = Options {
        layers: Some("all".into()),
        hf,
        ..Options::new(Path::new(""), &gguf, MATCHING_PROMPT, out.to_path_buf())
    };
    set(&mut opts);
    let llama = LlamaCpp::on(ctx.project, TreeArg::default(), Some(FlashAttnMode::Off));
    let auto = Auto {
        draft: None,
        against: None,
    };
    let (outcome, _) = compare_auto(&llama, &PyTorch::new(ctx.project), &opts, &auto)?;
    Ok(outcome)
}

/// Both references over the same tokens; every tensor of each variant compared byte for byte.
fn bitwise(ctx: &Ctx<'_>, source: Source<'_>, out: &Path) -> Result<String> {
    compare(ctx, source, &out.join("whole"), false, false)?;
    compare(ctx, source, &out.join("streamed"), true, false)?;
    let mut tensors = 0;
    for variant in [F32, F64] {
        let dir = |mode: &str| out.join(mode).join("auto/reference").join(variant);
        let (whole, streamed) = (
            tensor_files(&dir("whole"))?,
            tensor_files(&dir("streamed"))?,
        );
        ensure!(
            whole.len() == streamed.len(),
            "{variant}: the whole-model reference made {} tensors, the streamed one {}",
            whole.len(),
            streamed.len()
        );
        for (name, file) in &whole {
            let other = streamed
                .get(name)
                .with_context(|| format!("{variant}: the streamed reference made no `{name}`"))?;
            ensure!(
                std::fs::read(file)? == std::fs::read(other)?,
                "{variant}: `{name}` differs between the whole-model and the streamed reference"
            );
            tensors += 1;
        }
    }
    Ok(format!(
        "{tensors} tensors (f32 and f64) equal byte for byte"
    ))
}

fn replayed(ctx: &Ctx<'_>, out: &Path) -> Result<String> {
    let outcome = compare(ctx, Source::Tiny("llama"), out, false, true)?;
    let reference = out.join("auto/reference");
    let (f64_files, replay_files) = (
        tensor_files(&reference.join(F64))?,
        tensor_files(&reference.join(F64_REPLAY))?,
    );
    // Layer 0 is not replayed: the same arithmetic from the same embedding.
    let layer0 = f64_files
        .keys()
        .filter(|n| n.starts_with("model.layers.0.") || n.as_str() == "model.layers.0");
    let mut same = 0;
    for name in layer0 {
        let other = replay_files
            .get(name)
            .with_context(|| format!("the replay made no `{name}`"))?;
        ensure!(
            std::fs::read(&f64_files[name])? == std::fs::read(other)?,
            "layer 0's `{name}` differs in the replay"
        );
        same += 1;
    }
    // Layer 1 is fed llama.cpp's output of layer 0, as f64.
    let fed = read_values(
        replay_files
            .get("model.layers.1:input")
            .context("the replay recorded no input of layer 1")?,
    )?;
    let given = read_values(&out.join("auto/layer-inputs/layer-1.npy"))?;
    ensure!(
        fed.data == given.data,
        "layer 1's input in the replay is not llama.cpp's layer-0 output"
    );
    let layers = layer_errors(&outcome.rows);
    let l1 = layers
        .iter()
        .find(|l| l.layer == 1)
        .context("no layer 1 compared")?;
    ensure!(
        l1.local_db < l1.accumulated_db,
        "layer 1: local {:.1} dB is not below accumulated {:.1} dB",
        l1.local_db,
        l1.accumulated_db
    );
    Ok(format!(
        "{same} layer-0 tensors bitwise; layer 1 NMSE {:.1} dB accumulated, {:.1} dB local",
        l1.accumulated_db, l1.local_db
    ))
}
