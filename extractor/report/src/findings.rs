//! What a comparison found, as the reports show it: the checkpoints
//! compared (entries), each one's scores against the reference variants
//! (rows), a candidate's verdicts, what the reference said of itself, and
//! the first checkpoint beyond its tolerance. The comparison crate computes
//! them; this crate shows them.

use std::collections::BTreeMap;

use llorch_checkpoint_spec::manifest::{Op, Tolerance};
use llorch_checkpoint_spec::metric::Metrics;
use serde::Serialize;

/// The reference variants the reference computes. `f64` is the truth the verdict uses.
pub const F32: &str = "f32";
pub const F64: &str = "f64";
/// f64 with ggml's GELU f16 lookup table emulated.
pub const F64_GELU: &str = "f64+gelu_table";
/// f64 with the GELU table and f16 attention products emulated.
pub const F64_GGML: &str = "f64+gelu_table+f16_attn";
pub const VARIANTS: &[&str] = &[F32, F64, F64_GELU, F64_GGML];
/// f64 with each decoder layer fed llama.cpp's own input of that layer: the
/// error a layer adds, apart from the error it inherits.
pub const F64_REPLAY: &str = "f64+replay";

/// The variant verdicts are taken against: f64, or f32 where the model
/// cannot run in f64 (transformers' grouped MoE matmuls refuse it).
pub fn truth(computed: &[String]) -> &'static str {
    match computed.iter().any(|v| v == F64) {
        true => F64,
        false => F32,
    }
}

/// One checkpoint of one layer, in graph order, with what it is compared with.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: String,
    pub layer: Option<u32>,
    /// The file axis of the heads (the manifest's `n_head` or `n_head_kv`), for report.html.
    pub head_axis: Option<usize>,
    /// The file name without extension, `{layer}` filled in.
    pub stem: String,
    /// The reference tensor: what the manifest's `reference: capture:` names.
    pub capture: String,
    pub ops: Vec<Op>,
    pub tolerance: Tolerance,
}

impl Entry {
    /// `id@layer`, or `id` for a checkpoint outside the layers.
    pub fn key(&self) -> String {
        match self.layer {
            Some(l) => format!("{}@{l}", self.id),
            None => self.id.clone(),
        }
    }
}

/// What one run scored, per checkpoint (graph order) and reference variant.
#[derive(Serialize)]
pub struct Row {
    pub id: String,
    pub layer: Option<u32>,
    pub file: String,
    pub shape: Vec<usize>,
    pub tolerance: Tolerance,
    /// Variant -> metrics.
    pub against: BTreeMap<String, Metrics>,
    pub pass: bool,
    /// The worst element against f64: index, llama.cpp's value, the reference's.
    pub worst_index: Vec<usize>,
    pub worst_test: f64,
    pub worst_ref: f64,
    /// NaN or Inf values in llama.cpp's tensor and in the f64 reference.
    pub non_finite_test: usize,
    pub non_finite_ref: usize,
    /// The variant the verdict is against (`f64`; `f32` where f64 cannot run).
    pub truth: String,
}

impl Row {
    /// The metrics the verdict rests on.
    pub fn verdict(&self) -> &Metrics {
        &self.against[&self.truth]
    }

    /// The f32 reference's metrics, and the truth's.
    pub fn f32_and_truth(&self) -> (Metrics, Metrics) {
        (
            self.against.get(F32).copied().unwrap_or(*self.verdict()),
            *self.verdict(),
        )
    }
}

/// The verdict: `None` when every checkpoint is within tolerance, or the first
/// one (graph order) that is not, with its worst element.
pub fn first_failure(rows: &[Row]) -> Option<String> {
    let row = rows.iter().find(|r| !r.pass)?;
    let m = *row.verdict();
    let t = row.tolerance;
    let layer = row.layer.map(|l| format!(" layer {l}")).unwrap_or_default();
    if row.non_finite_test + row.non_finite_ref > 0 {
        // No tolerance speaks of NaN: say so instead of an element's error.
        return Some(format!(
            "checkpoint {}{layer} ({}) holds {} NaN or Inf values in llama.cpp and {} in PyTorch, of {} \
             (a corrupt model, or an overflow in the graph: the checkpoints before it show where they start)",
            row.id,
            row.file,
            row.non_finite_test,
            row.non_finite_ref,
            row.shape.iter().product::<usize>(),
        ));
    }
    Some(format!(
        "checkpoint {}{layer} ({}) exceeds its tolerance against the {} reference: element {:?} is {:.7} in llama.cpp, {:.7} in PyTorch \
         (|diff| {:.3e} > atol {:.1e} + rtol {:.0e}*|ref|); {} of {} elements outside, NMSE {:.3e} (limit {:.0e})",
        row.id,
        row.file,
        row.truth,
        row.worst_index,
        row.worst_test,
        row.worst_ref,
        (row.worst_test - row.worst_ref).abs(),
        m.atol,
        t.rtol,
        m.n_outside,
        row.shape.iter().product::<usize>(),
        m.nmse,
        t.nmse
    ))
}

/// One side against another on one checkpoint.
#[derive(Serialize, Clone)]
pub struct Verdict {
    pub metrics: Metrics,
    pub pass: bool,
    /// The tolerance that judged it.
    pub tolerance: Tolerance,
    /// The element of the largest |diff|, and both values there.
    pub max_index: Vec<usize>,
    pub test: f64,
    pub reference: f64,
}

/// The candidate on one checkpoint: against llama.cpp and against f64, or
/// why it could not be compared.
#[derive(Serialize)]
pub struct CandidateRow {
    pub id: String,
    pub layer: Option<u32>,
    pub file: String,
    pub problem: Option<String>,
    pub vs_llama: Option<Verdict>,
    pub vs_f64: Option<Verdict>,
}

/// The first checkpoint, in graph order, where the candidate leaves the
/// tolerance against `pair` (`llama.cpp` or `f64`), with its largest difference.
pub fn first_divergence(rows: &[CandidateRow], pair: &str) -> Option<String> {
    rows.iter().find_map(|r| {
        let layer = r.layer.map(|l| format!(" layer {l}")).unwrap_or_default();
        if let Some(problem) = &r.problem {
            return Some(format!(
                "checkpoint {}{layer} ({}): {problem}",
                r.id, r.file
            ));
        }
        let v = if pair == "llama.cpp" {
            &r.vs_llama
        } else {
            &r.vs_f64
        };
        let v = v.as_ref().filter(|v| !v.pass)?;
        Some(format!(
            "checkpoint {}{layer} ({}): element {:?} is {:.7} in the candidate, {:.7} in {pair} \
             (NMSE {:.3e}, {} elements outside the tolerance atol, rtol, nmse {})",
            r.id,
            r.file,
            v.max_index,
            v.test,
            v.reference,
            v.metrics.nmse,
            v.metrics.n_outside,
            v.tolerance.text()
        ))
    })
}

/// What the reference says of itself (`reference.json`).
#[derive(serde::Deserialize, serde::Serialize, Debug, Clone)]
pub struct Info {
    /// transformers' class, e.g. `LlamaForCausalLM`.
    pub model: String,
    /// Per variant, the greedy next token after the prompt.
    pub next_token: std::collections::BTreeMap<String, i64>,
    /// The variants computed.
    #[serde(default)]
    pub variants: Vec<String>,
    /// Variants the model cannot run, with the reason (transformers' MoE in float64).
    #[serde(default)]
    pub unavailable: std::collections::BTreeMap<String, String>,
}
