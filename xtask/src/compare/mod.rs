//! `cargo xtask compare`: every checkpoint of a llama.cpp run against PyTorch.
//!
//! 1. The extractor runs the manifest on the model (prompt pass, fresh cache).
//! 2. `xtask/python/reference.py` (in the project's venv, see `python.rs`)
//!    loads the same GGUF into transformers' model for its architecture (eager
//!    attention), feeds it the run's token ids in float32 and float64 (and f64 with
//!    llama.cpp's approximations emulated), captures what each checkpoint's
//!    `reference:` names and applies its layout ops. Nothing is per checkpoint
//!    in code: the manifest says which tensor and which transform.
//! 3. Here: per checkpoint and layer, max abs/rel error, NMSE (and dB), cosine
//!    similarity and the share of elements outside `atol + rtol*|ref|`, against
//!    each reference; the verdict against f64 with the manifest's tolerance; the
//!    first checkpoint (graph order: layer, then manifest order) that exceeds it
//!    is named with its worst element.
//! 4. `--attribution` reruns llama.cpp with an f32 KV cache and with one thread,
//!    and says per checkpoint which share of the error is storage precision,
//!    llama.cpp's own approximation (GELU table, f16 attention products) or f32
//!    arithmetic.
//! 5. A terminal table, `report.json` and `errors.svg` in `--out`.

mod attribution;
mod candidate;
mod html;
mod metrics;
mod overrides;
mod reference;
mod report;
mod self_test;
mod sequential;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_spec::format::Format;
use llorch_checkpoint_spec::manifest::{Manifest, Op, Tolerance};
use llorch_checkpoint_spec::record::RunRecord;
use xshell::cmd;

use crate::build::Backend;
use crate::extract::ensure_extractor;
use crate::project::Project;
pub use self_test::self_test;

#[derive(clap::Args)]
pub struct Compare {
    /// Checkpoint manifest with `reference:` entries [default: the catalogue model's, else manifests/gpt2.yaml].
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// A GGUF path or a model of vendor/models.yaml, e.g. smollm2-135m [default: the synthetic GPT-2 of `cargo xtask model`].
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value = "Hello world")]
    prompt: String,
    /// Output directory (runs, reference tensors, report.json, errors.svg) [default: target/llorch/compare].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The layers to compare instead of the manifest's: `all`, or numbers like `0,5,29`.
    #[arg(long, value_name = "all|N,N,...")]
    layers: Option<String>,
    /// Compare this existing run directory (run.json + checkpoint files) instead of running the extractor.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Also rerun llama.cpp with an f32 KV cache and with -t 1, and attribute the error.
    #[arg(long)]
    attribution: bool,
    /// Check the comparison itself: a copy of the run with one element changed by 1e-2 must fail, naming it.
    #[arg(long)]
    self_test: bool,
    /// A third side: a directory of another implementation's tensors (named as the extractor
    /// names them, .bin or .npy, with run.json or tokens.json), compared with llama.cpp and f64.
    #[arg(long, value_name = "DIR")]
    candidate: Option<PathBuf>,
    /// Override tolerances for checkpoints whose id or node name matches: 'ffn_*=atol:1e-2,nmse:1e-4'.
    #[arg(long = "tolerance", value_name = "GLOB=atol:X,rtol:Y,nmse:Z")]
    tolerances: Vec<overrides::Override>,
    /// Stop at the first checkpoint (graph order) over its tolerance.
    #[arg(long)]
    fail_fast: bool,
    /// Detail these checkpoints in report.html too (heatmap, histogram), besides the failing ones:
    /// a glob over ids or `id@layer`, e.g. '07_ffn_out@*'.
    #[arg(long, value_name = "GLOB", value_parser = |s: &str| glob::Pattern::new(s).map_err(|e| e.to_string()))]
    show: Option<glob::Pattern>,
    /// Instead: run the prompt as one batch and one token at a time, and compare every
    /// checkpoint position by position (no PyTorch needed).
    #[arg(long, conflicts_with_all = ["candidate", "attribution", "run", "self_test"])]
    sequential: bool,
}

/// The reference variants the script computes. `f64` is the truth the verdict uses.
const F32: &str = "f32";
const F64: &str = "f64";
const F64_GELU: &str = "f64+gelu_table";
const F64_GGML: &str = "f64+gelu_table+f16_attn";
const VARIANTS: &[&str] = &[F32, F64, F64_GELU, F64_GGML];

/// One checkpoint of one layer, in graph order, with what it is compared with.
#[derive(Clone, Debug)]
pub struct Entry {
    id: String,
    layer: Option<u32>,
    /// The file axis of the heads (the manifest's `n_head` or `n_head_kv`), for report.html.
    head_axis: Option<usize>,
    stem: String,
    capture: String,
    ops: Vec<Op>,
    tolerance: Tolerance,
}

impl Entry {
    fn key(&self) -> String {
        match self.layer {
            Some(l) => format!("{}@{l}", self.id),
            None => self.id.clone(),
        }
    }
}

/// The manifest's checkpoints in graph order, `--tolerance` applied; each
/// must name its reference.
fn entries(manifest: &Manifest, overrides: &[overrides::Override]) -> Result<Vec<Entry>> {
    manifest
        .graph_order()
        .into_iter()
        .map(|cp| {
            let reference = cp.reference.as_ref().with_context(|| {
                format!("checkpoint `{}` has no `reference:` (which PyTorch tensor it corresponds to); add one to compare it", cp.id)
            })?;
            let n = cp.shape.len();
            let head_axis = cp
                .shape
                .iter()
                .position(|d| matches!(d.to_string().trim(), "n_head" | "n_head_kv"))
                .map(|ggml_axis| n - 1 - ggml_axis);
            Ok(Entry {
                id: cp.id.clone(),
                layer: cp.layer,
                head_axis,
                stem: cp.file_stem.clone(),
                capture: reference.capture.clone(),
                ops: reference.ops.clone(),
                tolerance: overrides::apply(overrides, &cp.id, &cp.tensor, cp.tolerance),
            })
        })
        .collect()
}

/// The run record of a run directory `compare` can read.
fn read_run(dir: &Path) -> Result<RunRecord> {
    let record = RunRecord::read(dir)?;
    ensure!(
        record.format == Format::Bin,
        "{}: compare reads .bin checkpoints; rerun the extractor with --format bin",
        dir.join("run.json").display()
    );
    Ok(record)
}

pub struct Outcome {
    pub report: PathBuf,
    pub picture: PathBuf,
    /// `report.html`: the page a person reads.
    pub html: PathBuf,
    pub summary: String,
    pub failure: Option<String>,
    /// The greedy next token after the prompt: llama.cpp's, and the f64 reference's.
    pub next_token: (Option<i32>, Option<i64>),
}

impl Compare {
    pub fn run(self, project: &Project) -> Result<()> {
        if self.self_test {
            let line = self_test(project)?;
            println!("self-test passed: {line}");
            return Ok(());
        }
        let out = self
            .out
            .clone()
            .map(std::path::absolute)
            .transpose()?
            .unwrap_or_else(|| project.work_dir().join("compare"));
        let (model, manifest) = crate::catalogue::model_and_manifest(
            project,
            self.model.as_deref(),
            self.manifest.as_deref(),
        )?;
        let opts = Options {
            manifest,
            layers: self.layers,
            candidate: self.candidate.map(std::path::absolute).transpose()?,
            overrides: self.tolerances,
            fail_fast: self.fail_fast,
            show: self.show,
            model: Some(model),
            prompt: self.prompt,
            out,
            run: self.run.map(std::path::absolute).transpose()?,
            attribution: self.attribution,
            quiet: false,
        };
        if self.sequential {
            return sequential::batch_vs_sequential(project, &opts);
        }
        let outcome = compare(project, &opts)?;
        println!(
            "\nreport: {}\npicture: {}\npage: {}",
            outcome.report.display(),
            outcome.picture.display(),
            outcome.html.display()
        );
        match outcome.failure {
            Some(why) => bail!("{why}"),
            None => Ok(()),
        }
    }
}

pub struct Options {
    pub manifest: PathBuf,
    /// `--candidate`: another implementation's tensors.
    pub candidate: Option<PathBuf>,
    /// `--tolerance` overrides.
    pub overrides: Vec<overrides::Override>,
    pub fail_fast: bool,
    /// `--show`: checkpoints report.html details even when they pass.
    pub show: Option<glob::Pattern>,
    /// `--layers` for the extractor: `all` or `0,5,29`.
    pub layers: Option<String>,
    pub model: Option<PathBuf>,
    pub prompt: String,
    pub out: PathBuf,
    /// An existing run directory instead of a fresh extractor run.
    pub run: Option<PathBuf>,
    pub attribution: bool,
    pub quiet: bool,
}

impl Options {
    /// A plain comparison of `model` (or the default GPT-2) on `prompt`.
    pub fn new(manifest: &Path, model: Option<&Path>, prompt: &str, out: PathBuf) -> Options {
        Options {
            manifest: manifest.to_path_buf(),
            candidate: None,
            overrides: Vec::new(),
            fail_fast: false,
            show: None,
            layers: None,
            model: model.map(Path::to_path_buf),
            prompt: prompt.into(),
            out,
            run: None,
            attribution: false,
            quiet: true,
        }
    }
}

/// The extractor (built on first use) on the compare's manifest and prompt.
pub struct Extractor<'a> {
    project: &'a Project,
    opts: &'a Options,
    exe: std::cell::OnceCell<PathBuf>,
}

impl Extractor<'_> {
    pub fn new<'a>(project: &'a Project, opts: &'a Options) -> Extractor<'a> {
        Extractor {
            project,
            opts,
            exe: std::cell::OnceCell::new(),
        }
    }

    /// One run of `model` into `dir`, with `extra` flags.
    pub fn run(&self, model: &Path, dir: &Path, extra: &[&str]) -> Result<()> {
        let exe = match self.exe.get() {
            Some(exe) => exe,
            None => {
                let built = ensure_extractor(self.project, Backend::Cpu)?;
                self.exe.get_or_init(|| built)
            }
        };
        let sh = self.project.shell()?;
        let (prompt, manifest) = (&self.opts.prompt, &self.opts.manifest);
        let layers = &crate::extract::layer_args(self.opts.layers.as_deref());
        let out = cmd!(
            sh,
            "{exe} -m {model} --manifest {manifest} -p {prompt} -n 0 --out {dir} {layers...} {extra...}"
        )
        .quiet()
        .ignore_status()
        .output()?;
        ensure!(
            out.status.success(),
            "the extractor failed:\n{}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        Ok(())
    }
}

/// The whole comparison; `Err` when it could not be made, `failure` when it was and a tolerance is exceeded.
pub fn compare(project: &Project, opts: &Options) -> Result<Outcome> {
    // Every checkpoint must name its reference: checked before anything runs.
    entries(&Manifest::load(&opts.manifest)?, &opts.overrides)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let model = match &opts.model {
        Some(m) => m.clone(),
        None => crate::model::default_model(project)?,
    };
    let extractor = Extractor::new(project, opts);
    let run = match &opts.run {
        Some(dir) => dir.clone(),
        None => {
            let dir = opts.out.join("llama");
            extractor.run(&model, &dir, &["-t", "2"])?;
            dir
        }
    };
    let record = read_run(&run)?;
    // The checkpoints as the run expanded them (`--layers`).
    let entries = entries(&record.manifest(&opts.manifest)?, &opts.overrides)?;
    if let Some(dir) = &opts.candidate {
        candidate::check_tokens(dir, &record.tokens)?;
    }
    let reference = opts.out.join("reference");
    let t = Instant::now();
    let info = reference::build_reference(project, &model, &run, &record, &entries, &reference)?;
    if !opts.quiet {
        eprintln!(
            "compare: reference built in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let rows = metrics::score_run(&run, &reference, &entries, opts.fail_fast)?;
    let mut text = header(&record, &info);
    text.push_str(&report::table(&rows));
    let attribution = match opts.attribution {
        true => {
            let (table, json) = attribution::measure(
                project, &extractor, &model, &opts.out, &run, &reference, &entries, &rows,
            )?;
            text.push_str(&table);
            Some(json)
        }
        false => None,
    };
    let candidate_rows = opts
        .candidate
        .as_ref()
        .map(|dir| candidate::score(dir, &run, &reference, &entries));
    if let Some(c) = &candidate_rows {
        text.push_str(&candidate::table(c, &rows));
    }
    let failure = metrics::first_failure(&rows);
    let passed = rows.iter().filter(|r| r.pass).count();
    let summary = format!(
        "{passed} of {} checkpoints within tolerance of the f64 reference",
        rows.len()
    );
    writeln!(text, "\n{summary}")?;
    if let Some(f) = &failure {
        writeln!(text, "FIRST FAILURE: {f}")?;
    }
    if !opts.quiet {
        print!("{text}");
    }
    report::write_reports(
        opts,
        report::Findings {
            model,
            run,
            reference,
            record,
            info,
            entries,
            rows,
            candidate_rows,
            attribution,
            failure,
            text,
            summary,
        },
    )
}

/// The table's first line: both sides, the prompt, the next tokens.
fn header(record: &RunRecord, info: &reference::Info) -> String {
    format!(
        "\nllama.cpp (kv cache {}, {} threads) vs PyTorch {} ({}), {} prompt tokens; next token: llama.cpp {}, PyTorch f32 {}, f64 {}\n",
        record.kv_type,
        record.threads,
        info.model,
        record.model.architecture,
        record.tokens.len(),
        record.next_token.unwrap_or(-1),
        info.next_token.get(F32).copied().unwrap_or(-1),
        info.next_token.get(F64).copied().unwrap_or(-1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Manifest {
        Manifest::parse(&format!("architecture: gpt2\n{text}")).unwrap()
    }

    #[test]
    fn entries_come_in_graph_order_and_each_needs_a_reference() {
        let m = manifest("layers: [0, 1]\ncheckpoints:\n  - {id: a, tensor: 'x-{layer}', shape: [1], file: 'a{layer}', reference: {capture: 'h.{layer}.ln_1'}}\n  - {id: b, tensor: 'y-{layer}', shape: [1], file: 'b{layer}', reference: {capture: 'h.{layer}.mlp'}}\n");
        let keys: Vec<_> = entries(&m, &[])
            .unwrap()
            .iter()
            .map(|e| (e.key(), e.capture.clone()))
            .collect();
        assert_eq!(
            keys,
            [
                ("a@0".into(), "h.0.ln_1".into()),
                ("b@0".into(), "h.0.mlp".into()),
                ("a@1".into(), "h.1.ln_1".into()),
                ("b@1".into(), "h.1.mlp".into())
            ]
        );
        let m = manifest("checkpoints:\n  - {id: c, tensor: t, shape: [1], file: f}\n");
        let err = entries(&m, &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("checkpoint `c` has no `reference:`"),
            "{err}"
        );
    }

    #[test]
    fn a_run_record_of_a_future_schema_is_refused_naming_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = serde_json::to_value(llorch_checkpoint_spec::record::example()).unwrap();
        record["schema_version"] = 99.into();
        std::fs::write(dir.path().join("run.json"), record.to_string()).unwrap();
        let err = format!("{:#}", read_run(dir.path()).unwrap_err());
        assert!(err.contains("schema version 99 is newer"), "{err}");
    }
}
