//! The checks behind `cargo xtask verify`'s lines: each returns its figures,
//! or an error that says what is wrong.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_compare::sides::{Extraction, Extractor};
use llorch_checkpoint_compare::{compare, Options};
use llorch_checkpoint_spec::files::copy_run;
use llorch_checkpoint_spec::record::{median, RunRecord};
use xshell::{cmd, Shell};

use super::ctx::Ctx;
use crate::llama_cpp::build::{self, Backend};
use crate::llama_cpp::tree::Tree;
use crate::llama_cpp::tree::TreeArg;
use crate::models::prompts::{words_of_english, PERF_PROMPT};
use crate::project::Project;
use crate::runs::sides::{LlamaCpp, PyTorch};
use llorch_checkpoint_spec::record::FlashAttnMode;

/// A fresh CMake build directory and a fresh cargo target directory: nothing reused.
pub fn clean_build(project: &Project, work: &Path) -> Result<String> {
    let fresh = work.join("clean-build");
    let t = Instant::now();
    let tree = Tree::pinned(project)?;
    let lib_dir = build::build_llama(project, Backend::Cpu, &tree, Some(fresh.join("llama")))?;
    let llama_secs = t.elapsed().as_secs_f64();
    let active = fresh.join("active-build.json");
    build::ActiveBuild {
        backend: Backend::Cpu,
        lib_dir: &lib_dir,
        include_dirs: tree.include_dirs(),
        bindings: None,
        tree: &tree.record,
    }
    .write(&active)?;
    let sh = project.shell()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = fresh.join("target");
    let t = Instant::now();
    {
        let _a = sh.push_env("LLORCH_ACTIVE_BUILD", &active);
        let _b = sh.push_env("CARGO_TARGET_DIR", &target);
        cmd!(
            sh,
            "{cargo} build --quiet --release --package llorch-checkpoint-extractor"
        )
        .quiet()
        .run()?;
    }
    let extractor_secs = t.elapsed().as_secs_f64();
    let exe = target.join("release/llorch-checkpoint-extractor");
    let info = cmd!(sh, "{exe} --version").read()?;
    let _ = std::fs::remove_dir_all(&fresh);
    Ok(format!(
        "llama.cpp {llama_secs:.0} s, extractor {extractor_secs:.0} s; {info} runs"
    ))
}

/// `--system-info` lists the CPU features ggml was compiled with: AMX must
/// not be among them unless the user asked for it (`build.rs`, `AMX_ENV`).
pub fn no_amx(sh: &Shell, exe: &Path) -> Result<String> {
    let info = cmd!(sh, "{exe} --system-info").quiet().read()?;
    let cpu = info
        .lines()
        .find(|l| l.contains("CPU :"))
        .context("--system-info lists no CPU features")?
        .trim()
        .to_string();
    if build::amx_wanted() {
        return Ok(format!("{} is set: AMX allowed; {cpu}", build::AMX_ENV));
    }
    ensure!(
        !cpu.contains("AMX"),
        "ggml was built with AMX kernels: {cpu}"
    );
    Ok(cpu)
}

pub fn validate(sh: &Shell, validator: &Path, dir: &Path, manifest: &Path) -> Result<String> {
    let out = cmd!(sh, "{validator} {dir} --manifest {manifest}")
        .quiet()
        .ignore_status()
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text.lines().last().unwrap_or_default().to_string())
}

/// `extractor/python`'s tests in the project's Python environment, the
/// real-run one on `run`: every checkpoint read back as run.json records it.
pub fn python_module(project: &Project, run: &Path) -> Result<String> {
    let (ok, text) = crate::models::python::run_quietly(
        project,
        &["-m", "unittest", "-v"],
        &project.root().join("extractor/python"),
        ("LLORCH_TEST_RUN", run),
    )?;
    ensure!(ok, "{text}");
    ensure!(
        !text.contains("skipped"),
        "a test was skipped with a run to read:\n{text}"
    );
    let ran = text
        .lines()
        .find(|l| l.starts_with("Ran "))
        .unwrap_or("ran");
    let read = RunRecord::read(run)?.checkpoints.len();
    Ok(format!("{ran}; {read} checkpoints of a real run read back"))
}

/// run.json lists each checkpoint of the manifest (as the run expanded it)
/// exactly once, and none is absent from the graph.
pub fn seen_once(manifest: &Path, record: &RunRecord) -> Result<String> {
    if let Some(absent) = record.absent_summary() {
        bail!("absent from the graph: {absent}");
    }
    let expected = record.manifest(manifest)?.checkpoints.len();
    let mut keys: Vec<(&str, Option<u32>)> = record
        .checkpoints
        .iter()
        .map(|c| (c.id.as_str(), c.layer))
        .collect();
    keys.sort();
    keys.dedup();
    ensure!(
        keys.len() == record.checkpoints.len() && record.checkpoints.len() == expected,
        "run.json lists {} checkpoints ({} distinct), the manifest {}",
        record.checkpoints.len(),
        keys.len(),
        expected
    );
    Ok(format!("{expected} of {expected}, each once"))
}

/// The defects the validator must catch, and the words its message must use.
pub const CORRUPTIONS: &[(&str, &str)] = &[
    ("a truncated file", "truncated data"),
    ("a wrong n_dims", "n_dims is"),
    ("a negative dimension", "is negative"),
    ("trailing bytes", "trailing bytes"),
];

pub fn corrupted_copy_rejected(
    ctx: &Ctx<'_>,
    run: &Path,
    defect: &str,
    expect: &str,
) -> Result<String> {
    let (sh, validator, manifest, work) = (&ctx.sh, &ctx.validator, &ctx.manifest, &ctx.work);
    let copy = work.join("corrupt");
    copy_run(run, &copy)?;
    let record = RunRecord::read(run)?;
    let victim = &record
        .checkpoints
        .first()
        .context("the run has no checkpoint")?
        .file;
    let path = copy.join(victim);
    let mut bytes = std::fs::read(&path)?;
    match defect {
        "a truncated file" => bytes.truncate(bytes.len() - 7),
        "a wrong n_dims" => bytes[0..4].copy_from_slice(&9i32.to_le_bytes()),
        "a negative dimension" => bytes[4..12].copy_from_slice(&(-3i64).to_le_bytes()),
        _ => bytes.extend_from_slice(&[0; 8]),
    }
    std::fs::write(&path, &bytes)?;
    let out = cmd!(sh, "{validator} {copy} --manifest {manifest}")
        .quiet()
        .ignore_status()
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .unwrap_or_default()
        .to_string();
    ensure!(
        !out.status.success(),
        "the validator accepted a copy with {defect}"
    );
    ensure!(
        line.contains(victim.as_str()) && line.contains(expect),
        "the message does not name {victim} and `{expect}`: {line}"
    );
    Ok(line.trim_start_matches("FAIL").trim().to_string())
}

/// The steady-state cost of capture: one run with `--repeat`, which decodes
/// the prompt `runs` more times each way in one process, alternating a
/// context with no eval callback and the capturing one; medians compared.
pub fn overhead_ratio(ctx: &Ctx<'_>, runs: usize, bound: f64) -> Result<String> {
    let out = ctx.work.join("perf");
    ctx.run(&out)
        .prompt(PERF_PROMPT)
        .generate(0)
        .repeat(runs)
        .run(&ctx.sh)
        .context("the performance run failed")?;
    let record = RunRecord::read(&out)?;
    let steady = record
        .steady
        .context("run.json has no steady-state figures")?;
    let ratio = steady.ratio();
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        format!("{:.1} ms ({lo:.1}-{hi:.1})", median(v))
    };
    let figures = format!(
        "steady-state prompt decode {} with, {} without ({runs} alternating passes each, {} tokens): ratio {ratio:.3}; first pass {:.1} ms",
        spread(&steady.with_ms),
        spread(&steady.without_ms),
        record.tokens.len(),
        record.prompt_decode_ms
    );
    ensure!(ratio <= bound, "{figures}, above {bound}");
    Ok(figures)
}

pub fn throughput(ctx: &Ctx<'_>) -> Result<String> {
    let out = ctx.work.join("all-layers");
    let baseline = ctx.work.join("all-layers-baseline");
    let all_layers = |dir: &Path| ctx.run(dir).layers("all").prompt(PERF_PROMPT).generate(0);
    all_layers(&out)
        .run(&ctx.sh)
        .context("the all-layers run failed")?;
    all_layers(&baseline)
        .no_extract()
        .run(&ctx.sh)
        .context("the all-layers baseline run failed")?;
    let record = RunRecord::read(&out)?;
    let without_ms = RunRecord::read(&baseline)?.prompt_decode_ms;
    let without_rss = RunRecord::read(&baseline)?.peak_rss_mb.unwrap_or(f64::NAN);
    let bytes: u64 = record
        .checkpoints
        .iter()
        .map(|c| {
            std::fs::metadata(out.join(&c.file))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let mb = bytes as f64 / 1e6;
    let extra_secs = (record.prompt_decode_ms - without_ms).max(1.0) / 1e3;
    let rss = record.peak_rss_mb.unwrap_or(f64::NAN);
    Ok(format!(
        "{} checkpoints, {mb:.1} MB: decode {:.0} ms with, {without_ms:.0} ms without (one run each), \
         {:.0} MB per extra second; peak RSS {rss:.0} MB with, {without_rss:.0} MB without",
        record.checkpoints.len(),
        record.prompt_decode_ms,
        mb / extra_secs
    ))
}

/// The real model's layers 0, 7 and the last against transformers, on a prompt of
/// 100-odd tokens: every checkpoint within tolerance, the same greedy token.
pub fn real_model_compare(ctx: &Ctx<'_>, flash_attn: FlashAttnMode) -> Result<String> {
    let (project, model, manifest, work) = (ctx.project, &ctx.model, &ctx.manifest, &ctx.work);
    // Off: every checkpoint, scores too, in real-compare/ (the candidate check reads it).
    let dir = match flash_attn {
        FlashAttnMode::Off => work.join("real-compare"),
        other => work.join(format!("real-compare-flash-attn-{}", other.name())),
    };
    let outcome = compare(
        &LlamaCpp::on(project, TreeArg::default(), Some(flash_attn)),
        &PyTorch::new(project),
        &Options {
            layers: Some("0,7,-1".into()),
            ..Options::new(manifest, model, PERF_PROMPT, dir.clone())
        },
    )?;
    if let Some(why) = outcome.failure {
        anyhow::bail!("{why}");
    }
    let next = &outcome.next_token;
    ensure!(
        next.agrees(),
        "{}; but the {}",
        outcome.summary,
        next.describe()
    );
    let absent = RunRecord::read(&dir.join("llama"))?.absent_summary();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference/reference.json"))?)?;
    let loaded = match reference["loaded_from_saved"].as_bool() {
        Some(true) => "from its saved copy",
        _ => "from the GGUF",
    };
    Ok(format!(
        "{}; {}; absent: {}; transformers' model loaded {loaded} in {:.1} s ({})",
        outcome.summary,
        next.describe(),
        absent.as_deref().unwrap_or("none"),
        reference["load_seconds"].as_f64().unwrap_or(f64::NAN),
        outcome.report.display()
    ))
}

/// Another implementation's tensors, simulated: a copy of the compared run
/// with layer 7's FFN output scaled by 1.01. With the default tolerance of
/// a candidate against llama.cpp, its first divergence from llama.cpp must
/// be that checkpoint, named with its element.
pub fn candidate_caught(ctx: &Ctx<'_>) -> Result<String> {
    let (project, model, manifest, work) = (ctx.project, &ctx.model, &ctx.manifest, &ctx.work);
    let run = work.join("real-compare/llama");
    let candidate = work.join("candidate");
    let victim = scaled_copy(&run, &candidate, "ffn_out-7")?;
    let out = work.join("candidate-compare");
    compare(
        &LlamaCpp::new(project),
        &PyTorch::new(project),
        &Options {
            run: Some(run),
            candidate: Some(candidate),
            ..Options::new(manifest, model, PERF_PROMPT, out.clone())
        },
    )?;
    first_divergence_at(&out, &victim, "layer 7")
}

/// A copy of run `run` in `candidate` with node `node`'s checkpoint scaled
/// by 1.01; its file name.
fn scaled_copy(run: &Path, candidate: &Path, node: &str) -> Result<String> {
    let victim = RunRecord::read(run)?
        .checkpoint_by_tensor(node)
        .with_context(|| format!("the compared run has no {node}"))?
        .file
        .clone();
    copy_run(run, candidate)?;
    let t = llorch_checkpoint_spec::format::read(&candidate.join(&victim))?;
    let scaled: Vec<f32> = t.data.iter().map(|x| x * 1.01).collect();
    llorch_checkpoint_spec::format::write_file(&candidate.join(&victim), &t.shape, &scaled)?;
    Ok(victim)
}

/// The first divergence from llama.cpp that compare's `out/report.json`
/// names, which must be `victim`'s at `layer`.
fn first_divergence_at(out: &Path, victim: &str, layer: &str) -> Result<String> {
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json"))?)?;
    let first = report["candidate"]["first_divergence_from_llama_cpp"]
        .as_str()
        .context("the candidate did not diverge from llama.cpp at all")?
        .to_string();
    ensure!(
        first.contains(&format!("({victim})"))
            && first.contains(layer)
            && first.contains("element ["),
        "the first divergence is not {victim}'s: {first}"
    );
    Ok(first)
}

/// The candidate-vs-llama.cpp default on the synthetic GPT-2, all 12 layers:
/// a second correct llama.cpp run (f32 KV cache, one thread) as the
/// candidate agrees within it at every checkpoint, and the same run with
/// layer 7's FFN output scaled by 1.01 is caught there.
pub fn candidate_default_fits(ctx: &Ctx<'_>) -> Result<String> {
    let project = ctx.project;
    let model = crate::models::model::default_model(project)?;
    let manifest = project.root().join("manifests/gpt2.yaml");
    let work = ctx.work.join("candidate-default");
    let (llama, torch) = (LlamaCpp::new(project), PyTorch::new(project));
    let second = work.join("second-run");
    let opts = Options {
        layers: Some("all".into()),
        ..Options::new(&manifest, &model, PERF_PROMPT, work.join("compare"))
    };
    llama.extract(&Extraction {
        threads: 1,
        kv_f32: true,
        ..opts.extraction(&second)
    })?;
    let outcome = compare(
        &llama,
        &torch,
        &Options {
            candidate: Some(second.clone()),
            ..opts.clone()
        },
    )?;
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&outcome.report)?)?;
    let candidate = &report["candidate"];
    ensure!(
        candidate["first_divergence_from_llama_cpp"].is_null(),
        "a correct llama.cpp run diverges from llama.cpp: {}",
        candidate["first_divergence_from_llama_cpp"]
    );
    let nmse = |r: &serde_json::Value| {
        r["vs_llama"]["metrics"]["nmse"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let rows = candidate["checkpoints"]
        .as_array()
        .context("no candidate rows")?;
    let worst = rows
        .iter()
        .max_by(|a, b| nmse(a).total_cmp(&nmse(b)))
        .context("no candidate rows")?;
    let scaled = work.join("scaled");
    let victim = scaled_copy(&second, &scaled, "ffn_out-7")?;
    let out = work.join("compare-scaled");
    compare(
        &llama,
        &torch,
        &Options {
            run: Some(outcome.run.clone()),
            candidate: Some(scaled),
            out: out.clone(),
            ..opts
        },
    )?;
    let first = first_divergence_at(&out, &victim, "layer 7")?;
    Ok(format!(
        "{} checkpoints of an f32-cache, 1-thread run within the default, the closest call {} layer {} \
         (NMSE {:.2e}); scaled: {first}",
        rows.len(),
        worst["id"].as_str().unwrap_or("?"),
        worst["layer"],
        nmse(worst)
    ))
}

/// The model run twice, with the manifest's checkpoints captured and with no
/// eval callback: the logits of every pass must have the same bits.
pub fn logits_unchanged(ctx: &Ctx<'_>) -> Result<String> {
    let (with, without) = (ctx.work.join("real-with"), ctx.work.join("real-without"));
    for (dir, flags) in [(&with, &[][..]), (&without, &["--no-extract"][..])] {
        ctx.run(dir)
            .prompt(PERF_PROMPT)
            .generate(2)
            .args(flags)
            .run(&ctx.sh)?;
    }
    let (a, b) = (RunRecord::read(&with)?, RunRecord::read(&without)?);
    ensure!(
        a.logits.sha256 == b.logits.sha256,
        "logits differ with extraction: {} vs {}",
        a.logits.sha256,
        b.logits.sha256
    );
    Ok(format!(
        "{} checkpoints captured; logits.bin of 3 passes sha256 {} in both; generated {:?}",
        a.checkpoints.len(),
        &a.logits.sha256[..16],
        a.generated
    ))
}

/// Gemma 3's interleaved attention, seen in its scores: a prompt longer than
/// the 512-token window, layers 0 (sliding) and 5 (global). On layer 0 every
/// probability of a key 512 or more positions behind its query is exactly 0
/// (and rows still sum to 1); on layer 5 such keys get weight.
pub fn sliding_window_masks(ctx: &Ctx<'_>) -> Result<String> {
    const WINDOW: usize = 512;
    let out = ctx.work.join("sliding-window");
    ctx.run(&out)
        .layers("0,5")
        .prompt(&words_of_english(470))
        .generate(0)
        .flash_attn(FlashAttnMode::Off)
        .run(&ctx.sh)?;
    let record = RunRecord::read(&out)?;
    let scores = |layer: u32| -> Result<llorch_checkpoint_spec::format::Tensor> {
        let c = record
            .checkpoints
            .iter()
            .find(|c| c.tensor == format!("kq_soft_max-{layer}"))
            .context("the manifest has no scores checkpoint")?;
        llorch_checkpoint_spec::format::read(&out.join(&c.file))
    };
    // File shape [1, n_head, n_tokens, n_kv]: for head h, query i, key j.
    let beyond = |t: &llorch_checkpoint_spec::format::Tensor| -> (usize, usize, f32) {
        let (heads, n, n_kv) = (
            t.shape[1] as usize,
            t.shape[2] as usize,
            t.shape[3] as usize,
        );
        let (mut count, mut nonzero, mut worst_sum) = (0, 0, 0f32);
        for h in 0..heads {
            for i in 0..n {
                let row = &t.data[(h * n + i) * n_kv..(h * n + i + 1) * n_kv];
                worst_sum = worst_sum.max((row.iter().sum::<f32>() - 1.0).abs());
                for (j, &p) in row.iter().enumerate().take(i + 1) {
                    if i - j >= WINDOW {
                        count += 1;
                        nonzero += (p != 0.0) as usize;
                    }
                }
            }
        }
        (count, nonzero, worst_sum)
    };
    let (sliding, global) = (scores(0)?, scores(5)?);
    let n = sliding.shape[2];
    ensure!(
        n as usize > WINDOW,
        "the prompt is only {n} tokens, not past the window"
    );
    let (count, nonzero, sum_err) = beyond(&sliding);
    ensure!(
        count > 0 && nonzero == 0 && sum_err < 1e-4,
        "layer 0 (sliding): {nonzero} of {count} probabilities beyond the window are not 0 (rows sum to 1 within {sum_err:e})"
    );
    let (g_count, g_nonzero, _) = beyond(&global);
    ensure!(
        g_nonzero > 0,
        "layer 5 (global): all {g_count} probabilities beyond 512 positions are 0: is it sliding too?"
    );
    Ok(format!(
        "{n} tokens: layer 0 has all {count} probabilities beyond the window at 0 (rows sum to 1 within {sum_err:.1e}); \
         layer 5 gives {g_nonzero} of {g_count} such keys weight"
    ))
}
