//! `--attribution`: which part of each checkpoint's error is KV-cache storage,
//! llama.cpp's own approximation, or carried from earlier layers.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use llorch_checkpoint_report::findings::{Entry, F64, F64_GELU, F64_GGML};
use llorch_checkpoint_spec::metric::Metrics;

use crate::metrics;
use crate::sides::{Extraction, Extractor};
use llorch_checkpoint_report::findings::Row;
use llorch_checkpoint_report::text::layer_text;

/// Reruns llama.cpp (`base`, into directories under `base.out`) with an f32
/// KV cache, with one thread and on f32 weights, scores each against
/// `reference`, and gives the table and its JSON. `run` is the default run.
pub fn measure(
    extractor: &dyn Extractor,
    base: &Extraction<'_>,
    run: &Path,
    reference: &Path,
    entries: &[Entry],
    rows: &[Row],
    variants: &[String],
) -> Result<(String, serde_json::Value)> {
    let missing: Vec<&str> = [F64, F64_GELU, F64_GGML]
        .into_iter()
        .filter(|v| !variants.iter().any(|c| c == v))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "--attribution compares with the f64 references that emulate ggml, and this model's reference could not compute {}",
        missing.join(", ")
    );
    let score = |dir: &Path| metrics::score_run(dir, reference, entries, false, variants);
    let kv32 = base.out.join("llama-kv-f32");
    extractor.extract(&Extraction {
        out: &kv32,
        kv_f32: true,
        ..*base
    })?;
    let t1 = base.out.join("llama-t1");
    extractor.extract(&Extraction {
        out: &t1,
        threads: 1,
        ..*base
    })?;
    let (kv_rows, t1_rows) = (score(&kv32)?, score(&t1)?);
    let f32_rows = match extractor.dequantized(base.model)? {
        Some(copy) => {
            let dir = base.out.join("llama-f32-weights");
            extractor.extract(&Extraction {
                model: &copy,
                out: &dir,
                ..*base
            })?;
            Some(score(&dir)?)
        }
        None => None,
    };
    let threads_equal: Vec<bool> = entries
        .iter()
        .map(|e| {
            let f = format!("{}.bin", e.stem);
            std::fs::read(run.join(&f)).ok() == std::fs::read(t1.join(&f)).ok()
        })
        .collect();
    Ok(attribution_table(&Runs {
        base: rows,
        kv32: &kv_rows,
        t1: &t1_rows,
        f32_weights: f32_rows.as_deref(),
        threads_equal: &threads_equal,
    }))
}

/// The runs attribution compares, each scored against the references.
pub struct Runs<'a> {
    /// The default run: f16 KV cache, 2 threads.
    pub base: &'a [Row],
    /// With an f32 KV cache.
    pub kv32: &'a [Row],
    /// With one thread.
    pub t1: &'a [Row],
    /// On an f32 copy of the GGUF (its quantized tensors dequantized by
    /// llama.cpp): `None` when the model has no quantized tensor.
    pub f32_weights: Option<&'a [Row]>,
    /// Per checkpoint: the one-thread file is bitwise the default one.
    pub threads_equal: &'a [bool],
}

/// Per checkpoint: how the error against f64 moves with the settings llama.cpp
/// controls, and against references that emulate llama.cpp's approximations.
pub fn attribution_table(runs: &Runs<'_>) -> (String, serde_json::Value) {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nattribution: NMSE against the f64 reference (dB; lower is closer)"
    );
    let _ = writeln!(
        s,
        "{:<18} {:>3}  {:>9} {:>9} {:>9} {:>9} {:>12} {:>12}  {:<9}  the error is mostly",
        "checkpoint",
        "l",
        "default",
        "kv f32",
        "-t 1",
        "f32 wts",
        "def vs ggml",
        "kv32 vs gelu",
        "-t1 == -t2"
    );
    let mut json = Vec::new();
    for (i, b) in runs.base.iter().enumerate() {
        let db = |m: &Metrics| m.nmse_db;
        let (k, t, same) = (&runs.kv32[i], &runs.t1[i], runs.threads_equal[i]);
        let def = b.against[F64];
        let kv = k.against[F64];
        let emulated = b.against[F64_GGML];
        let kv_gelu = k.against[F64_GELU];
        let f32w = runs.f32_weights.map(|rows| rows[i].against[F64]);
        let verdict = explain(&def, &kv, &emulated, &kv_gelu, f32w.as_ref());
        let _ = writeln!(
            s,
            "{:<18} {:>3}  {:>9.1} {:>9.1} {:>9.1} {:>9} {:>12.1} {:>12.1}  {:<9}  {}",
            b.id,
            layer_text(b.layer),
            db(&def),
            db(&kv),
            db(&t.against[F64]),
            f32w.map_or("-".into(), |m| format!("{:.1}", m.nmse_db)),
            db(&emulated),
            db(&kv_gelu),
            if same { "bitwise" } else { "DIFFERS" },
            verdict
        );
        json.push(serde_json::json!({
            "id": b.id, "layer": b.layer, "default_vs_f64": def, "kv_f32_vs_f64": kv, "threads1_vs_f64": t.against[F64],
            "f32_weights_vs_f64": f32w,
            "default_vs_f64_emulating_ggml": emulated, "kv_f32_vs_f64_emulating_gelu_table": kv_gelu,
            "threads_bitwise_equal": same, "explanation": verdict,
        }));
    }
    let _ = writeln!(
        s,
        "  default: f16 KV cache, 2 threads. f32 wts: the same weights dequantized to f32 by llama.cpp (no quantized kernels). \
         ggml: f64 with ggml's GELU f16 table and f16 attention products (Q, K, V, probabilities rounded to f16) emulated. \
         gelu: f64 with the GELU table emulated."
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
    f32_weights: Option<&Metrics>,
) -> String {
    const DB: f64 = 10.0;
    let kernels = f32_weights.is_some_and(|w| default.nmse_db - w.nmse_db >= DB);
    let storage = default.nmse_db - kv32.nmse_db >= DB;
    let gelu = kv32.nmse_db - kv32_vs_gelu.nmse_db >= DB;
    let emulation = default.nmse_db - emulated.nmse_db >= DB;
    match (kernels, storage, gelu) {
        (true, true, _) => {
            "quantized matmuls (activations rounded to 8 bits), then the f16 KV cache".into()
        }
        (true, false, _) => {
            "quantized matmuls: ggml rounds activations to 8 bits for quantized weights".into()
        }
        (false, true, true) => {
            "f16 KV cache (storage), then ggml's GELU f16 table (approximation)".into()
        }
        (false, true, false) if emulation => {
            "f16 KV cache: storage and the f16 attention products it implies".into()
        }
        (false, true, false) => "f16 KV cache (storage precision)".into(),
        (false, false, true) => "ggml's GELU f16 lookup table (llama.cpp's approximation)".into(),
        (false, false, false) if emulation => {
            "llama.cpp's f16 approximations (emulated reference agrees)".into()
        }
        (false, false, false) if default.nmse_db < -120.0 => "f32 rounding only".into(),
        (false, false, false) => {
            "carried from earlier layers: no single setting explains 10 dB".into()
        }
    }
}
