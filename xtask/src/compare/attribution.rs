//! `--attribution`: which part of each checkpoint's error is KV-cache storage,
//! llama.cpp's own approximation, or carried from earlier layers.

use std::fmt::Write as _;

use super::metrics::{Metrics, Row};
use super::report::layer_text;
use super::{F64, F64_GELU, F64_GGML};

/// Per checkpoint: how the error against f64 moves with the settings llama.cpp
/// controls, and against references that emulate llama.cpp's approximations.
pub fn attribution_table(
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
