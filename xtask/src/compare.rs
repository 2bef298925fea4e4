//! `cargo xtask compare`: every checkpoint of a llama.cpp run against a PyTorch GPT-2.
//!
//! 1. The extractor runs the manifest on the model (prompt pass, fresh cache).
//! 2. `xtask/python/gpt2_reference.py` (in the project's venv, see `python.rs`)
//!    loads the same GGUF into Hugging Face's `GPT2Model` (eager attention),
//!    feeds it the run's token ids in float32 and float64 (and f64 with
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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use xshell::cmd;

use crate::build::Backend;
use crate::extract::ensure_extractor;
use crate::project::Project;

#[derive(clap::Args)]
pub struct Compare {
    /// Checkpoint manifest with `reference:` entries [default: manifests/gpt2.yaml].
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// GGUF model [default: the synthetic GPT-2 of `cargo xtask model`].
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "Hello world")]
    prompt: String,
    /// Output directory (runs, reference tensors, report.json, errors.svg) [default: target/llorch/compare].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Compare this existing run directory (run.json + checkpoint files) instead of running the extractor.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Also rerun llama.cpp with an f32 KV cache and with -t 1, and attribute the error.
    #[arg(long)]
    attribution: bool,
    /// Check the comparison itself: a copy of the run with one element changed by 1e-2 must fail, naming it.
    #[arg(long)]
    self_test: bool,
}

/// The reference variants the script computes. `f64` is the truth the verdict uses.
const F32: &str = "f32";
const F64: &str = "f64";
const F64_GELU: &str = "f64+gelu_table";
const F64_GGML: &str = "f64+gelu_table+f16_attn";
const VARIANTS: &[&str] = &[F32, F64, F64_GELU, F64_GGML];

/// Used where a checkpoint gives no `tolerance:`: f32 arithmetic on O(1) values.
const DEFAULT_TOLERANCE: Tolerance = Tolerance {
    atol: 1e-4,
    rtol: 1e-3,
    nmse: 1e-6,
};

// ---------------------------------------------------------------- manifest ---

/// xtask's view of a manifest: only what the comparison needs (the extractor validates the rest).
#[derive(Deserialize)]
struct RawManifest {
    #[serde(default)]
    layers: Vec<u32>,
    checkpoints: Vec<RawCheckpoint>,
}

#[derive(Deserialize)]
struct RawCheckpoint {
    id: String,
    tensor: String,
    file: String,
    #[serde(default)]
    layers: Option<Vec<u32>>,
    #[serde(default)]
    reference: Option<Reference>,
    #[serde(default)]
    tolerance: Option<Tolerance>,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct Reference {
    /// `h.{layer}.<module>`, `present.{layer}.key|value` or `attentions.{layer}`.
    capture: String,
    #[serde(default)]
    ops: Vec<Op>,
}

/// The layout ops, applied in order to the captured tensor (row-major, batch first).
/// In YAML: `drop_batch`, `{slice: {axis: -1, start: 0, len: n_embd}}`,
/// `{reshape: [n_tokens, n_head, head_dim]}`, `{permute: [0, 2, 1, 3]}`.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(try_from = "serde_yaml::Value")]
enum Op {
    /// Remove the leading batch dimension (must be 1).
    DropBatch,
    Slice {
        axis: i64,
        start: Dim,
        len: Dim,
    },
    Reshape(Vec<Dim>),
    Permute(Vec<i64>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SliceArgs {
    axis: i64,
    start: Dim,
    len: Dim,
}

impl TryFrom<serde_yaml::Value> for Op {
    type Error = String;

    fn try_from(value: serde_yaml::Value) -> Result<Op, String> {
        const KNOWN: &str =
            "drop_batch, {slice: {axis, start, len}}, {reshape: [dims]}, {permute: [axes]}";
        if value.as_str() == Some("drop_batch") {
            return Ok(Op::DropBatch);
        }
        let single = value
            .as_mapping()
            .filter(|m| m.len() == 1)
            .and_then(|m| m.iter().next());
        let Some((name, args)) = single.and_then(|(k, v)| Some((k.as_str()?, v.clone()))) else {
            return Err(format!("unknown op {value:?}; known: {KNOWN}"));
        };
        let err = |e: serde_yaml::Error| format!("op `{name}`: {e}");
        Ok(match name {
            "slice" => {
                let a: SliceArgs = serde_yaml::from_value(args).map_err(err)?;
                Op::Slice {
                    axis: a.axis,
                    start: a.start,
                    len: a.len,
                }
            }
            "reshape" => Op::Reshape(serde_yaml::from_value(args).map_err(err)?),
            "permute" => Op::Permute(serde_yaml::from_value(args).map_err(err)?),
            other => return Err(format!("unknown op `{other}`; known: {KNOWN}")),
        })
    }
}

/// A dimension: a number, a symbol of the run (`n_embd`), or a product (`2*n_embd`).
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
enum Dim {
    Fixed(i64),
    Expr(String),
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Each element: |test - ref| <= atol + rtol * |ref| (numpy.isclose).
    atol: f64,
    rtol: f64,
    /// And over the tensor: NMSE = mean((test-ref)^2) / var(ref) <= nmse.
    nmse: f64,
}

/// One checkpoint of one layer, expanded.
#[derive(Clone, Debug)]
struct Entry {
    id: String,
    layer: Option<u32>,
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

fn load_manifest(path: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    parse_manifest(&text).with_context(|| format!("manifest {}", path.display()))
}

/// Expands layers in graph order: layer by layer, manifest order within a layer.
fn parse_manifest(text: &str) -> Result<Vec<Entry>> {
    let raw: RawManifest = serde_yaml::from_str(text)?;
    let mut entries = Vec::new();
    for (index, cp) in raw.checkpoints.iter().enumerate() {
        let reference = cp.reference.clone().with_context(|| {
            format!("checkpoint `{}` has no `reference:` (which PyTorch tensor it corresponds to); add one to compare it", cp.id)
        })?;
        let layers: Vec<Option<u32>> = if cp.tensor.contains("{layer}") {
            cp.layers
                .clone()
                .unwrap_or_else(|| raw.layers.clone())
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        let tolerance = cp.tolerance.unwrap_or(DEFAULT_TOLERANCE);
        ensure!(
            tolerance.atol >= 0.0 && tolerance.rtol >= 0.0 && tolerance.nmse >= 0.0,
            "checkpoint `{}`: negative tolerance",
            cp.id
        );
        for layer in layers {
            let expand = |s: &str| {
                layer.map_or_else(|| s.to_string(), |l| s.replace("{layer}", &l.to_string()))
            };
            entries.push((
                layer,
                index,
                Entry {
                    id: cp.id.clone(),
                    layer,
                    stem: expand(&cp.file),
                    capture: expand(&reference.capture),
                    ops: reference.ops.clone(),
                    tolerance,
                },
            ));
        }
    }
    entries.sort_by_key(|(layer, index, _)| (*layer, *index));
    Ok(entries.into_iter().map(|(_, _, e)| e).collect())
}

/// Resolves `n_embd`, `2*n_embd`, `7` against the run's symbols.
fn resolve(dim: &Dim, symbols: &BTreeMap<String, i64>) -> Result<i64> {
    match dim {
        Dim::Fixed(n) => Ok(*n),
        Dim::Expr(expr) => expr
            .split('*')
            .map(str::trim)
            .try_fold(1i64, |acc, factor| {
                let v = match factor.parse::<i64>() {
                    Ok(n) => n,
                    Err(_) => *symbols.get(factor).with_context(|| {
                        format!(
                            "unknown symbol `{factor}` in `{expr}`; known: {}",
                            symbols.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    })?,
                };
                Ok(acc * v)
            }),
    }
}

/// The ops as the Python script reads them: symbols resolved to numbers.
fn resolve_ops(ops: &[Op], symbols: &BTreeMap<String, i64>) -> Result<Vec<serde_json::Value>> {
    ops.iter()
        .map(|op| {
            Ok(match op {
                Op::DropBatch => serde_json::json!({ "op": "drop_batch" }),
                Op::Slice { axis, start, len } => {
                    serde_json::json!({ "op": "slice", "axis": axis, "start": resolve(start, symbols)?, "len": resolve(len, symbols)? })
                }
                Op::Reshape(dims) => {
                    let shape = dims.iter().map(|d| resolve(d, symbols)).collect::<Result<Vec<_>>>()?;
                    serde_json::json!({ "op": "reshape", "shape": shape })
                }
                Op::Permute(axes) => serde_json::json!({ "op": "permute", "axes": axes }),
            })
        })
        .collect()
}

// ------------------------------------------------------------------ files ---

/// A checkpoint or reference tensor, row-major, as f64.
#[derive(Debug, Clone, PartialEq)]
struct Tensor {
    shape: Vec<usize>,
    data: Vec<f64>,
}

/// A checkpoint (`.bin`) or a reference tensor (`.npy`, f4 or f8), through the
/// same format crate the extractor writes them with.
fn read_tensor(path: &Path) -> Result<Tensor> {
    let (shape, data) = llorch_checkpoint_format::read_f64(path)?;
    Ok(Tensor {
        shape: shape.into_iter().map(|d| d as usize).collect(),
        data,
    })
}

// ---------------------------------------------------------------- metrics ---

/// How far a llama.cpp checkpoint is from a reference.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Metrics {
    pub max_abs: f64,
    /// max |test-ref| / |ref| over elements with ref != 0 (inf if ref == 0 != test).
    pub max_rel: f64,
    /// mean((test-ref)^2) / var(ref).
    pub nmse: f64,
    pub nmse_db: f64,
    pub cosine: f64,
    /// Elements with |test-ref| > atol + rtol*|ref|, and their share.
    pub n_outside: usize,
    pub outside: f64,
    /// max |test-ref| / (atol + rtol*|ref|): above 1 means outside.
    pub worst_ratio: f64,
    /// The element with the largest ratio (flat, row-major).
    pub worst: usize,
}

pub fn metrics(test: &[f64], reference: &[f64], tol: &Tolerance) -> Metrics {
    assert_eq!(test.len(), reference.len());
    let n = test.len().max(1) as f64;
    let mean_ref = reference.iter().sum::<f64>() / n;
    let (mut max_abs, mut max_rel, mut sq, mut var, mut dot, mut tt, mut rr) =
        (0f64, 0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
    let (mut n_outside, mut worst_ratio, mut worst) = (0usize, 0f64, 0usize);
    for (i, (&t, &r)) in test.iter().zip(reference).enumerate() {
        let d = (t - r).abs();
        max_abs = max_abs.max(d);
        if r != 0.0 {
            max_rel = max_rel.max(d / r.abs());
        } else if d != 0.0 {
            max_rel = f64::INFINITY;
        }
        sq += d * d;
        var += (r - mean_ref) * (r - mean_ref);
        dot += t * r;
        tt += t * t;
        rr += r * r;
        let allowed = tol.atol + tol.rtol * r.abs();
        let ratio = if allowed > 0.0 {
            d / allowed
        } else if d > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        if d > allowed || d.is_nan() {
            n_outside += 1;
        }
        if ratio > worst_ratio || (d.is_nan() && !worst_ratio.is_nan()) {
            worst_ratio = if d.is_nan() { f64::NAN } else { ratio };
            worst = i;
        }
    }
    let nmse = if var > 0.0 {
        sq / var
    } else if sq > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    let cosine = if tt > 0.0 && rr > 0.0 {
        dot / (tt.sqrt() * rr.sqrt())
    } else if tt == rr {
        1.0
    } else {
        0.0
    };
    Metrics {
        max_abs,
        max_rel,
        nmse,
        nmse_db: 10.0 * nmse.log10(),
        cosine,
        n_outside,
        outside: n_outside as f64 / n,
        worst_ratio,
        worst,
    }
}

impl Metrics {
    pub fn passes(&self, tol: &Tolerance) -> bool {
        self.n_outside == 0 && self.nmse <= tol.nmse
    }
}

/// Row-major flat index -> multi-index.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        index[i] = flat % d.max(1);
        flat /= d.max(1);
    }
    index
}

// ------------------------------------------------------------------ run it ---

#[derive(Deserialize)]
struct RunRecord {
    tokens: Vec<i64>,
    symbols: BTreeMap<String, i64>,
    #[serde(default)]
    kv_type: Option<String>,
    #[serde(default)]
    threads: Option<i64>,
    #[serde(default)]
    format: Option<String>,
}

fn read_run(dir: &Path) -> Result<RunRecord> {
    let path = dir.join("run.json");
    let bytes =
        std::fs::read(&path).with_context(|| format!("no run record at {}", path.display()))?;
    let record: RunRecord = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a run record", path.display()))?;
    ensure!(
        record.format.as_deref().unwrap_or("bin") == "bin",
        "{}: compare reads .bin checkpoints; rerun the extractor with --format bin",
        path.display()
    );
    Ok(record)
}

/// What one run scored, per checkpoint (graph order) and reference variant.
#[derive(Serialize)]
struct Row {
    id: String,
    layer: Option<u32>,
    file: String,
    shape: Vec<usize>,
    tolerance: Tolerance,
    /// Variant -> metrics.
    against: BTreeMap<String, Metrics>,
    pass: bool,
    /// The worst element against f64: index, llama.cpp's value, the reference's.
    worst_index: Vec<usize>,
    worst_test: f64,
    worst_ref: f64,
}

fn score_run(run: &Path, reference: &Path, entries: &[Entry]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for e in entries {
        let file = format!("{}.bin", e.stem);
        let test = read_tensor(&run.join(&file))?;
        let mut against = BTreeMap::new();
        for variant in VARIANTS {
            let r = read_tensor(&reference.join(variant).join(format!("{}.npy", e.stem)))?;
            ensure!(
                r.shape == test.shape,
                "{}: the reference has shape {:?}, the checkpoint file {:?}: fix the `reference:` ops of `{}` in the manifest",
                file,
                r.shape,
                test.shape,
                e.id
            );
            against.insert(
                variant.to_string(),
                metrics(&test.data, &r.data, &e.tolerance),
            );
        }
        let m = against[F64];
        let r64 = read_tensor(&reference.join(F64).join(format!("{}.npy", e.stem)))?;
        rows.push(Row {
            id: e.id.clone(),
            layer: e.layer,
            file,
            worst_index: unravel(m.worst, &test.shape),
            worst_test: test.data[m.worst],
            worst_ref: r64.data[m.worst],
            shape: test.shape,
            tolerance: e.tolerance,
            pass: m.passes(&e.tolerance),
            against,
        });
    }
    Ok(rows)
}

/// The verdict: `None` when every checkpoint is within tolerance, or the first
/// one (graph order) that is not, with its worst element.
fn first_failure(rows: &[Row]) -> Option<String> {
    let row = rows.iter().find(|r| !r.pass)?;
    let m = row.against[F64];
    let t = row.tolerance;
    let layer = row.layer.map(|l| format!(" layer {l}")).unwrap_or_default();
    Some(format!(
        "checkpoint {}{layer} ({}) exceeds its tolerance against the f64 reference: element {:?} is {:.7} in llama.cpp, {:.7} in PyTorch \
         (|diff| {:.3e} > atol {:.0e} + rtol {:.0e}*|ref|); {} of {} elements outside, NMSE {:.3e} (limit {:.0e})",
        row.id,
        row.file,
        row.worst_index,
        row.worst_test,
        row.worst_ref,
        (row.worst_test - row.worst_ref).abs(),
        t.atol,
        t.rtol,
        m.n_outside,
        row.shape.iter().product::<usize>(),
        m.nmse,
        t.nmse
    ))
}

pub struct Outcome {
    pub report: PathBuf,
    pub picture: PathBuf,
    pub summary: String,
    pub failure: Option<String>,
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
        let manifest = self
            .manifest
            .clone()
            .map(std::path::absolute)
            .transpose()?
            .unwrap_or_else(|| project.root().join("manifests/gpt2.yaml"));
        let model = self.model.clone().map(std::path::absolute).transpose()?;
        let run = self.run.clone().map(std::path::absolute).transpose()?;
        let outcome = compare(
            project,
            &Options {
                manifest,
                model,
                prompt: self.prompt,
                out,
                run,
                attribution: self.attribution,
                quiet: false,
            },
        )?;
        println!(
            "\nreport: {}\npicture: {}",
            outcome.report.display(),
            outcome.picture.display()
        );
        match outcome.failure {
            Some(why) => bail!("{why}"),
            None => Ok(()),
        }
    }
}

pub struct Options {
    pub manifest: PathBuf,
    pub model: Option<PathBuf>,
    pub prompt: String,
    pub out: PathBuf,
    /// An existing run directory instead of a fresh extractor run.
    pub run: Option<PathBuf>,
    pub attribution: bool,
    pub quiet: bool,
}

/// The whole comparison; `Err` when it could not be made, `failure` when it was and a tolerance is exceeded.
pub fn compare(project: &Project, opts: &Options) -> Result<Outcome> {
    let entries = load_manifest(&opts.manifest)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let model = match &opts.model {
        Some(m) => m.clone(),
        None => crate::model::default_model(project)?,
    };
    let exe_cell = std::cell::OnceCell::new();
    let extractor = || -> Result<PathBuf> {
        if exe_cell.get().is_none() {
            let _ = exe_cell.set(ensure_extractor(project, Backend::Cpu)?);
        }
        Ok(exe_cell.get().cloned().expect("set above"))
    };
    let sh = project.shell()?;
    let (prompt, manifest) = (&opts.prompt, &opts.manifest);
    let extract = |dir: &Path, extra: &[&str]| -> Result<()> {
        let exe = extractor()?;
        let out = cmd!(
            sh,
            "{exe} -m {model} --manifest {manifest} -p {prompt} -n 0 --out {dir} {extra...}"
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
    };
    let default_run = match &opts.run {
        Some(dir) => dir.clone(),
        None => {
            let dir = opts.out.join("llama");
            extract(&dir, &["-t", "2"])?;
            dir
        }
    };
    let record = read_run(&default_run)?;
    let reference = opts.out.join("reference");
    let t = Instant::now();
    build_reference(project, &model, &default_run, &record, &entries, &reference)?;
    if !opts.quiet {
        eprintln!(
            "compare: reference built in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let rows = score_run(&default_run, &reference, &entries)?;

    let mut text = String::new();
    let setting = format!(
        "kv cache {}, {} threads",
        record.kv_type.as_deref().unwrap_or("?"),
        record.threads.unwrap_or(0)
    );
    writeln!(
        text,
        "\nllama.cpp ({setting}) vs PyTorch GPT2Model, tokens {:?}",
        record.tokens
    )?;
    text.push_str(&table(&rows));

    let mut attribution = None;
    if opts.attribution {
        let kv32 = opts.out.join("llama-kv-f32");
        extract(&kv32, &["-t", "2", "--kv-type", "f32"])?;
        let t1 = opts.out.join("llama-t1");
        extract(&t1, &["-t", "1"])?;
        let kv_rows = score_run(&kv32, &reference, &entries)?;
        let t1_rows = score_run(&t1, &reference, &entries)?;
        let threads_equal: Vec<bool> = entries
            .iter()
            .map(|e| {
                let f = format!("{}.bin", e.stem);
                std::fs::read(default_run.join(&f)).ok() == std::fs::read(t1.join(&f)).ok()
            })
            .collect();
        let (table, json) = attribution_table(&rows, &kv_rows, &t1_rows, &threads_equal);
        text.push_str(&table);
        attribution = Some(json);
    }
    let failure = first_failure(&rows);
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
    let picture = opts.out.join("errors.svg");
    std::fs::write(&picture, svg(&rows, &opts.manifest))?;
    let report = opts.out.join("report.json");
    let json = serde_json::json!({
        "manifest": opts.manifest, "model": model, "prompt": opts.prompt, "tokens": record.tokens, "run": default_run,
        "reference_variants": VARIANTS, "verdict_against": F64, "pass": failure.is_none(), "first_failure": failure,
        "checkpoints": rows, "attribution": attribution, "picture": picture,
    });
    std::fs::write(&report, serde_json::to_vec_pretty(&json)?)?;
    Ok(Outcome {
        report,
        picture,
        summary,
        failure,
    })
}

/// Runs the Python reference; a missing package or a broken venv ends in one paragraph with the fix.
fn build_reference(
    project: &Project,
    model: &Path,
    run: &Path,
    record: &RunRecord,
    entries: &[Entry],
    out: &Path,
) -> Result<()> {
    let n_tokens = record.symbols.get("n_tokens").copied().unwrap_or(0);
    let n_kv = record.symbols.get("n_kv").copied().unwrap_or(0);
    ensure!(
        n_kv == n_tokens && n_tokens == record.tokens.len() as i64,
        "the run is not a prompt pass from a fresh cache (n_tokens {n_tokens}, n_kv {n_kv}): compare covers that case only"
    );
    let mut checkpoints = Vec::new();
    for e in entries {
        // The shape the ops must give: the checkpoint file's.
        let shape = read_tensor(&run.join(format!("{}.bin", e.stem)))?.shape;
        checkpoints.push(serde_json::json!({
            "key": e.key(), "stem": e.stem, "capture": e.capture, "shape": shape,
            "ops": resolve_ops(&e.ops, &record.symbols).with_context(|| format!("checkpoint `{}`", e.id))?,
        }));
    }
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out)?;
    let job = out.join("job.json");
    let body = serde_json::json!({ "gguf": model, "tokens": record.tokens, "out": out, "variants": VARIANTS, "threads": 2, "checkpoints": checkpoints });
    std::fs::write(&job, serde_json::to_vec_pretty(&body)?)?;
    // LLORCH_REFERENCE_PYTHON: another interpreter (to check what happens without torch).
    let python = match std::env::var_os("LLORCH_REFERENCE_PYTHON") {
        Some(p) => Ok(PathBuf::from(p)),
        None => crate::python::ensure(project),
    };
    let python = python.context(
        "the PyTorch reference needs the project's Python environment (torch, transformers, numpy from PyPI, about 5.6 GB). \
         `cargo xtask compare` creates it in target/llorch/pyenv; where PyPI cannot be reached it cannot, and nothing can be compared",
    )?;
    let script = project.root().join("xtask/python/gpt2_reference.py");
    let sh = project.shell()?;
    let result = cmd!(sh, "{python} {script} {job}")
        .quiet()
        .ignore_status()
        .output()
        .context("cannot start the project's Python")?;
    if !result.status.success() {
        let stderr = String::from_utf8_lossy(&result.stderr);
        let message = stderr
            .lines()
            .filter(|l| l.starts_with("gpt2_reference: "))
            .map(|l| l.trim_start_matches("gpt2_reference: "))
            .collect::<Vec<_>>();
        if message.is_empty() {
            bail!(
                "the PyTorch reference ({}) failed:\n{}",
                script.display(),
                stderr.trim_end()
            );
        }
        bail!(
            "the PyTorch reference could not be built: {}",
            message.join(" ")
        );
    }
    eprint!("{}", String::from_utf8_lossy(&result.stdout));
    Ok(())
}

// ------------------------------------------------------------------ report ---

fn layer_text(l: Option<u32>) -> String {
    l.map_or("-".into(), |l| l.to_string())
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<14} {:>3}  {:>9} {:>9} {:>7} {:>10}  | {:>9} {:>9} {:>9} {:>7} {:>12} {:>7}  {:<5} tolerance (atol, rtol, nmse)",
        "checkpoint", "l", "f32:maxab", "nmse", "dB", "cos-1", "f64:maxab", "max rel", "nmse", "dB", "cos-1", "outside", ""
    );
    for r in rows {
        let (a, b) = (r.against[F32], r.against[F64]);
        let t = r.tolerance;
        let _ = writeln!(
            s,
            "{:<14} {:>3}  {:>9.2e} {:>9.2e} {:>7.1} {:>10.2e}  | {:>9.2e} {:>9.2e} {:>9.2e} {:>7.1} {:>12.2e} {:>6.2}%  {:<5} {:.0e}, {:.0e}, {:.0e}",
            r.id,
            layer_text(r.layer),
            a.max_abs,
            a.nmse,
            a.nmse_db,
            1.0 - a.cosine,
            b.max_abs,
            b.max_rel,
            b.nmse,
            b.nmse_db,
            1.0 - b.cosine,
            100.0 * b.outside,
            if r.pass { "ok" } else { "FAIL" },
            t.atol,
            t.rtol,
            t.nmse
        );
    }
    s
}

/// Per checkpoint: how the error against f64 moves with the settings llama.cpp
/// controls, and against references that emulate llama.cpp's approximations.
fn attribution_table(
    base: &[Row],
    kv32: &[Row],
    t1: &[Row],
    threads_equal: &[bool],
) -> (String, serde_json::Value) {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nattribution: NMSE against the f64 reference (dB; lower is closer)"
    );
    let _ = writeln!(
        s,
        "{:<14} {:>3}  {:>9} {:>9} {:>9} {:>12} {:>12}  {:<9}  the error is mostly",
        "checkpoint", "l", "default", "kv f32", "-t 1", "def vs ggml", "kv32 vs gelu", "-t1 == -t2"
    );
    let mut json = Vec::new();
    for (((b, k), t), &same) in base.iter().zip(kv32).zip(t1).zip(threads_equal) {
        let db = |m: &Metrics| m.nmse_db;
        let def = b.against[F64];
        let kv = k.against[F64];
        let emulated = b.against[F64_GGML];
        let kv_gelu = k.against[F64_GELU];
        let verdict = explain(&def, &kv, &emulated, &kv_gelu);
        let _ = writeln!(
            s,
            "{:<14} {:>3}  {:>9.1} {:>9.1} {:>9.1} {:>12.1} {:>12.1}  {:<9}  {}",
            b.id,
            layer_text(b.layer),
            db(&def),
            db(&kv),
            db(&t.against[F64]),
            db(&emulated),
            db(&kv_gelu),
            if same { "bitwise" } else { "DIFFERS" },
            verdict
        );
        json.push(serde_json::json!({
            "id": b.id, "layer": b.layer, "default_vs_f64": def, "kv_f32_vs_f64": kv, "threads1_vs_f64": t.against[F64],
            "default_vs_f64_emulating_ggml": emulated, "kv_f32_vs_f64_emulating_gelu_table": kv_gelu,
            "threads_bitwise_equal": same, "explanation": verdict,
        }));
    }
    let _ = writeln!(
        s,
        "  default: f16 KV cache, 2 threads. ggml: f64 with ggml's GELU f16 table and f16 attention products \
         (Q, K, V, probabilities rounded to f16) emulated. gelu: f64 with the GELU table emulated."
    );
    (s, serde_json::Value::Array(json))
}

/// Which part of the error a checkpoint's numbers point at. A factor of 10 in
/// NMSE (10 dB) counts as "explains".
fn explain(
    default: &Metrics,
    kv32: &Metrics,
    emulated: &Metrics,
    kv32_vs_gelu: &Metrics,
) -> String {
    const DB: f64 = 10.0;
    let storage = default.nmse_db - kv32.nmse_db >= DB;
    let gelu = kv32.nmse_db - kv32_vs_gelu.nmse_db >= DB;
    let emulation = default.nmse_db - emulated.nmse_db >= DB;
    match (storage, gelu) {
        (true, true) => "f16 KV cache (storage), then ggml's GELU f16 table (approximation)".into(),
        (true, false) if emulation => {
            "f16 KV cache: storage and the f16 attention products it implies".into()
        }
        (true, false) => "f16 KV cache (storage precision)".into(),
        (false, true) => "ggml's GELU f16 lookup table (llama.cpp's approximation)".into(),
        (false, false) if emulation => {
            "llama.cpp's f16 approximations (emulated reference agrees)".into()
        }
        (false, false) if default.nmse_db < -120.0 => "f32 rounding only".into(),
        (false, false) => "carried from earlier layers: no single setting explains 10 dB".into(),
    }
}

/// Two heat maps, checkpoints x layers: NMSE (dB) against f64, and the worst
/// element's share of its tolerance (>= 1 fails, outlined red). Log colour scales.
fn svg(rows: &[Row], manifest: &Path) -> String {
    let mut ids: Vec<&str> = Vec::new();
    let mut layers: Vec<Option<u32>> = Vec::new();
    for r in rows {
        if !ids.contains(&r.id.as_str()) {
            ids.push(&r.id);
        }
        if !layers.contains(&r.layer) {
            layers.push(r.layer);
        }
    }
    layers.sort();
    let (cw, ch, left, top) = (46.0, 26.0, 120.0, 70.0);
    let panel_w = cw * layers.len() as f64;
    let gap = 90.0;
    let width = left + 2.0 * panel_w + gap + 40.0;
    let height = top + ch * ids.len() as f64 + 90.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "llama.cpp vs PyTorch GPT-2 (f64), {}",
        manifest
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        xml(&title)
    );
    let panels: [(&str, Box<dyn Fn(&Row) -> f64>, f64, f64); 2] = [
        (
            "NMSE, dB (llama.cpp practice: fail above -20 dB)",
            Box::new(|r: &Row| r.against[F64].nmse_db),
            -160.0,
            -20.0,
        ),
        (
            "worst |diff| as % of its tolerance atol + rtol|ref| (log colour; >= 100% fails)",
            Box::new(|r: &Row| r.against[F64].worst_ratio.log10()),
            -4.0,
            1.0,
        ),
    ];
    for (p, (name, value, lo, hi)) in panels.iter().enumerate() {
        let x0 = left + p as f64 * (panel_w + gap);
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{}" font-size="12">{}</text>"#,
            top - 30.0,
            xml(name)
        );
        for (j, l) in layers.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                x0 + cw * (j as f64 + 0.5),
                top - 8.0,
                layer_text(*l)
            );
        }
        for (i, id) in ids.iter().enumerate() {
            let y = top + ch * i as f64;
            if p == 0 {
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                    left - 6.0,
                    y + ch * 0.65,
                    xml(id)
                );
            }
            for (j, l) in layers.iter().enumerate() {
                let Some(r) = rows.iter().find(|r| r.id == *id && r.layer == *l) else {
                    continue;
                };
                let v = value(r);
                let x = x0 + cw * j as f64;
                let stroke = if r.pass {
                    r#"stroke="white""#
                } else {
                    r#"stroke="red" stroke-width="3""#
                };
                let _ = writeln!(
                    s,
                    r#"<rect x="{x}" y="{y}" width="{cw}" height="{ch}" fill="{}" {stroke}><title>{} layer {}: {v:.2}</title></rect>"#,
                    colour((v - lo) / (hi - lo)),
                    xml(id),
                    layer_text(*l)
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="middle" font-size="10">{}</text>"#,
                    x + cw / 2.0,
                    y + ch * 0.65,
                    match (p, v.is_finite()) {
                        (_, false) => "-inf".into(),
                        (0, true) => format!("{v:.0}"),
                        _ => format!("{:.0}%", 100.0 * 10f64.powf(v)),
                    }
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">layer</text>"#,
            x0 + panel_w / 2.0,
            top + ch * ids.len() as f64 + 16.0
        );
        // Colour bar.
        let yb = top + ch * ids.len() as f64 + 30.0;
        for k in 0..20 {
            let f = k as f64 / 19.0;
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{yb}" width="{}" height="10" fill="{}"/>"#,
                x0 + panel_w.max(200.0) * f * 0.95,
                panel_w.max(200.0) / 20.0 + 0.5,
                colour(f)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{}">{lo}</text><text x="{}" y="{}" text-anchor="end">{hi}</text>"#,
            yb + 24.0,
            x0 + panel_w.max(200.0),
            yb + 24.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// 0 -> dark blue (tiny error), 1 -> yellow/red (at the limit); clamped.
fn colour(f: f64) -> String {
    let f = if f.is_nan() { 1.0 } else { f.clamp(0.0, 1.0) };
    let stops = [
        (0.0, (40.0, 30.0, 110.0)),
        (0.4, (30.0, 140.0, 160.0)),
        (0.75, (250.0, 220.0, 60.0)),
        (1.0, (220.0, 40.0, 30.0)),
    ];
    let mut c = stops[0].1;
    for w in stops.windows(2) {
        let ((a, ca), (b, cb)) = (w[0], w[1]);
        if f >= a && f <= b {
            let t = (f - a) / (b - a);
            c = (
                ca.0 + t * (cb.0 - ca.0),
                ca.1 + t * (cb.1 - ca.1),
                ca.2 + t * (cb.2 - ca.2),
            );
        }
    }
    format!("rgb({:.0},{:.0},{:.0})", c.0, c.1, c.2)
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

// --------------------------------------------------------------- self-test ---

/// The comparison on the default run must pass, and a copy of that run with one
/// element of the first checkpoint changed by 1e-2 must fail, naming that
/// checkpoint and element. Returns both verdicts in one line.
pub fn self_test(project: &Project) -> Result<String> {
    let out = project.work_dir().join("compare-self-test");
    let manifest = project.root().join("manifests/gpt2.yaml");
    let opts = Options {
        manifest: manifest.clone(),
        model: None,
        prompt: "Hello world".into(),
        out: out.join("clean"),
        run: None,
        attribution: false,
        quiet: true,
    };
    let clean = compare(project, &opts)?;
    if let Some(why) = clean.failure {
        bail!("the unmodified run fails: {why}");
    }
    let entries = load_manifest(&manifest)?;
    let victim = entries.first().context("the manifest has no checkpoint")?;
    let run = out.join("clean/llama");
    let copy = out.join("perturbed-run");
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy)?;
    for entry in std::fs::read_dir(&run)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name()))?;
        }
    }
    let file = copy.join(format!("{}.bin", victim.stem));
    let tensor = read_tensor(&file)?;
    let element = tensor.data.len() / 3; // somewhere inside, not the first value
    let mut bytes = std::fs::read(&file)?;
    let at = 4 + 8 * tensor.shape.len() + 4 * element;
    let v = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) + 1e-2;
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    std::fs::write(&file, &bytes)?;
    let opts = Options {
        out: out.join("perturbed"),
        run: Some(copy),
        ..opts
    };
    let perturbed = compare(project, &opts)?;
    let why = perturbed
        .failure
        .context("a checkpoint perturbed by 1e-2 passed the comparison")?;
    let index = format!("{:?}", unravel(element, &tensor.shape));
    ensure!(
        why.contains(&victim.id) && why.contains(&format!("element {index}")),
        "the failure does not name checkpoint {} element {index}: {why}",
        victim.id
    );
    Ok(format!(
        "{}; {} element {index} + 1e-2 is caught: {why}",
        clean.summary, victim.id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance {
        atol: 1e-3,
        rtol: 1e-2,
        nmse: 1e-4,
    };

    #[test]
    fn metrics_of_a_known_difference() {
        let reference = [1.0, -2.0, 3.0, 0.0];
        let test = [1.0, -2.0, 3.06, 0.0];
        let m = metrics(&test, &reference, &TOL);
        assert!((m.max_abs - 0.06).abs() < 1e-12);
        assert!((m.max_rel - 0.02).abs() < 1e-12);
        // var(ref): mean 0.5, squares 0.25 + 6.25 + 6.25 + 0.25 = 13 over 4 = 3.25; mse 0.0036/4 = 0.0009.
        assert!((m.nmse - 0.0009 / 3.25).abs() < 1e-15, "{}", m.nmse);
        assert!((m.nmse_db - 10.0 * (0.0009f64 / 3.25).log10()).abs() < 1e-9);
        let cos = (1.0 + 4.0 + 3.0 * 3.06) / (14f64.sqrt() * (1.0 + 4.0 + 3.06f64 * 3.06).sqrt());
        assert!((m.cosine - cos).abs() < 1e-15);
        // 0.06 > 1e-3 + 1e-2 * 3 = 0.031: one element of four is outside, at ratio 0.06/0.031.
        assert_eq!((m.n_outside, m.worst), (1, 2));
        assert_eq!(m.outside, 0.25);
        assert!((m.worst_ratio - 0.06 / 0.031).abs() < 1e-12);
        assert!(!m.passes(&TOL));
    }

    #[test]
    fn identical_tensors_pass_with_zero_error() {
        let x = [0.5, 0.0, -1.5];
        let m = metrics(&x, &x, &TOL);
        assert_eq!(
            (m.max_abs, m.max_rel, m.nmse, m.n_outside),
            (0.0, 0.0, 0.0, 0)
        );
        assert_eq!(m.nmse_db, f64::NEG_INFINITY);
        assert!((m.cosine - 1.0).abs() < 1e-15);
        assert!(m.passes(&TOL));
    }

    #[test]
    fn nmse_alone_can_fail_and_zero_reference_gives_infinite_relative_error() {
        // Every element inside atol, but the reference barely varies: NMSE is large.
        let reference = [1.0, 1.0001, 1.0];
        let test = [1.0009, 1.0, 1.0009];
        let m = metrics(
            &test,
            &reference,
            &Tolerance {
                atol: 1e-3,
                rtol: 0.0,
                nmse: 1.0,
            },
        );
        assert_eq!(m.n_outside, 0);
        assert!(m.nmse > 1.0, "{}", m.nmse);
        assert!(!m.passes(&Tolerance {
            atol: 1e-3,
            rtol: 0.0,
            nmse: 1.0
        }));
        let m = metrics(&[1e-9], &[0.0], &TOL);
        assert_eq!(m.max_rel, f64::INFINITY);
    }

    #[test]
    fn a_single_perturbed_element_is_found_and_named() {
        let reference: Vec<f64> = (0..2 * 12 * 64)
            .map(|i| ((i as f64) * 0.37).sin())
            .collect();
        let mut test: Vec<f64> = reference.iter().map(|r| r + 1e-7).collect();
        test[777] += 1e-2;
        let tol = Tolerance {
            atol: 1e-5,
            rtol: 1e-4,
            nmse: 1e-6,
        };
        let m = metrics(&test, &reference, &tol);
        assert_eq!((m.n_outside, m.worst), (1, 777));
        assert_eq!(unravel(777, &[2, 12, 64]), [1, 0, 9]);
        let row = Row {
            id: "02_q".into(),
            layer: Some(0),
            file: "checkpoint_02_q.bin".into(),
            shape: vec![2, 12, 64],
            tolerance: tol,
            against: [(F64.to_string(), m)].into(),
            pass: m.passes(&tol),
            worst_index: unravel(m.worst, &[2, 12, 64]),
            worst_test: test[777],
            worst_ref: reference[777],
        };
        let ok = Row {
            id: "01_ln1_output".into(),
            pass: true,
            ..Row {
                against: [(F64.to_string(), metrics(&reference, &reference, &tol))].into(),
                ..row_clone(&row)
            }
        };
        let why = first_failure(&[ok, row]).unwrap();
        assert!(
            why.starts_with("checkpoint 02_q layer 0 (checkpoint_02_q.bin)")
                && why.contains("element [1, 0, 9]"),
            "{why}"
        );
    }

    fn row_clone(r: &Row) -> Row {
        Row {
            id: r.id.clone(),
            layer: r.layer,
            file: r.file.clone(),
            shape: r.shape.clone(),
            tolerance: r.tolerance,
            against: r.against.clone(),
            pass: r.pass,
            worst_index: r.worst_index.clone(),
            worst_test: r.worst_test,
            worst_ref: r.worst_ref,
        }
    }

    #[test]
    fn manifest_references_expand_in_graph_order_and_resolve_symbols() {
        let text = r#"layers: [0, 1]
checkpoints:
  - id: a
    tensor: 'x-{layer}'
    shape: [n_embd]
    file: 'a_l{layer}'
    reference: {capture: 'h.{layer}.attn.c_attn', ops: [drop_batch, {slice: {axis: -1, start: 2*n_embd, len: n_embd}}, {reshape: [n_tokens, n_head, head_dim]}]}
    tolerance: {atol: 1.0e-5, rtol: 1.0e-4, nmse: 1.0e-8}
  - id: b
    tensor: 'y-{layer}'
    file: 'b_l{layer}'
    reference: {capture: 'present.{layer}.value', ops: [{permute: [0, 3, 1, 2]}]}
"#;
        let entries = parse_manifest(text).unwrap();
        let order: Vec<_> = entries
            .iter()
            .map(|e| (e.key(), e.stem.as_str(), e.capture.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("a@0".to_string(), "a_l0", "h.0.attn.c_attn"),
                ("b@0".to_string(), "b_l0", "present.0.value"),
                ("a@1".to_string(), "a_l1", "h.1.attn.c_attn"),
                ("b@1".to_string(), "b_l1", "present.1.value"),
            ]
        );
        assert_eq!(
            entries[0].tolerance,
            Tolerance {
                atol: 1e-5,
                rtol: 1e-4,
                nmse: 1e-8
            }
        );
        assert_eq!(entries[1].tolerance, DEFAULT_TOLERANCE);
        let symbols: BTreeMap<String, i64> = [
            ("n_embd", 768),
            ("n_tokens", 2),
            ("n_head", 12),
            ("head_dim", 64),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .into();
        let ops = resolve_ops(&entries[0].ops, &symbols).unwrap();
        assert_eq!(
            serde_json::Value::Array(ops),
            serde_json::json!([{"op": "drop_batch"}, {"op": "slice", "axis": -1, "start": 1536, "len": 768}, {"op": "reshape", "shape": [2, 12, 64]}])
        );
        let err = resolve(&Dim::Expr("n_heads".into()), &symbols)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown symbol `n_heads`"), "{err}");
        let err = parse_manifest("checkpoints:\n  - {id: c, tensor: t, file: f, reference: {capture: x, ops: [{transpose: [1, 0]}]}}\n").unwrap_err();
        assert!(format!("{err:#}").contains("transpose"), "{err:#}");
        let err = parse_manifest("checkpoints:\n  - {id: c, tensor: t, file: f}\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("checkpoint `c` has no `reference:`"),
            "{err}"
        );
    }

    #[test]
    fn reads_bin_and_npy() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("x.bin");
        let mut bytes = 2i32.to_le_bytes().to_vec();
        for d in [2i64, 3] {
            bytes.extend_from_slice(&d.to_le_bytes());
        }
        for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.5] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(&bin, &bytes).unwrap();
        assert_eq!(
            read_tensor(&bin).unwrap(),
            Tensor {
                shape: vec![2, 3],
                data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]
            }
        );
        std::fs::write(&bin, &bytes[..bytes.len() - 1]).unwrap();
        let err = format!("{:#}", read_tensor(&bin).unwrap_err());
        assert!(err.contains("needs 44 bytes"), "{err}");

        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }";
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let pad = 64 - (10 + header.len() + 1) % 64;
        let text = format!("{header}{}\n", " ".repeat(pad));
        npy.extend_from_slice(&(text.len() as u16).to_le_bytes());
        npy.extend_from_slice(text.as_bytes());
        for v in [0.25f64, -1.0, 1e-300] {
            npy.extend_from_slice(&v.to_le_bytes());
        }
        let path = dir.path().join("x.npy");
        std::fs::write(&path, &npy).unwrap();
        assert_eq!(
            read_tensor(&path).unwrap(),
            Tensor {
                shape: vec![3],
                data: vec![0.25, -1.0, 1e-300]
            }
        );
    }
}
