//! How the reference holds a model: whole (transformers' float32 model and
//! its float64 copy, about 12 bytes a parameter) or streamed, one layer at a
//! time from the Hugging Face checkpoint (`reference.py`'s `Streamed`).

use std::path::Path;

use anyhow::Result;

/// `compare --reference`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReferenceMemory {
    Auto,
    Whole,
    Streamed,
}

/// Bytes a parameter takes in a whole-model reference: the float32 model and its float64 copy.
const WHOLE_BYTES_PER_PARAMETER: f64 = 12.0;

impl ReferenceMemory {
    /// Whether the reference streams the model: `hf`, the checkpoint it
    /// reads, or else the GGUF (from the reference's saved copy of it, made
    /// whole in f32 first); says why on the terminal, with what the whole
    /// comparison will take in time with `passes` reference passes.
    pub fn streamed(self, hf: Option<&Path>, gguf: &Path, passes: usize) -> Result<bool> {
        // A GGUF's parameters are estimated from its size at 4.4 bits a weight (Q4_K_M's), an
        // upper bound for the usual types; streamed only where it would not fit at all.
        let (parameters, share) = match hf {
            Some(dir) => (parameters(dir), 0.5),
            None => (
                std::fs::metadata(gguf).map_or(0, |m| m.len()) as f64 / 0.55,
                1.0,
            ),
        };
        let whole = parameters * WHOLE_BYTES_PER_PARAMETER;
        let available = available_memory();
        let streamed = self.decide(whole, available.map(|a| a * share));
        let available = available.map_or("unknown".into(), |a| format!("{:.1} GB", a / 1e9));
        eprintln!(
            "reference: {} ({}{:.2}B parameters: {:.1} GB whole in f32 and f64; {available} available{}); \
             the comparison: about {} at a 2-core machine's pace",
            match streamed {
                true => "streamed layer by layer",
                false => "the whole model",
            },
            if hf.is_some() { "" } else { "at most about " },
            parameters / 1e9,
            whole / 1e9,
            match self {
                ReferenceMemory::Auto => "; --reference whole|streamed to choose",
                _ => "",
            },
            minutes(estimated_seconds(parameters, passes))
        );
        Ok(streamed)
    }
}

/// A comparison's wall time on a 2-core machine, every layer: measured
/// there at 62 s (1.07B parameters), 98 s (1.54B), 266 and 359 s (6.88B)
/// with three reference passes; the graph run and the pairing grow with the
/// parameters too.
fn estimated_seconds(parameters: f64, passes: usize) -> f64 {
    20.0 + parameters / 1e9 * (10.0 + 12.0 * passes as f64)
}

fn minutes(seconds: f64) -> String {
    match seconds < 90.0 {
        true => format!("{:.0} s", seconds.max(1.0)),
        false => format!("{:.0} min", seconds / 60.0),
    }
}

impl ReferenceMemory {
    /// Streamed or not, for a whole model of `whole` bytes and `room` bytes it may take.
    fn decide(self, whole: f64, room: Option<f64>) -> bool {
        match self {
            ReferenceMemory::Whole => false,
            ReferenceMemory::Streamed => true,
            ReferenceMemory::Auto => room.is_some_and(|room| whole > room),
        }
    }
}

/// The parameters of the checkpoint in `dir`, from its safetensors' sizes
/// and `config.json`'s dtype (2 bytes for bfloat16 and float16, else 4).
pub fn parameters(dir: &Path) -> f64 {
    let bytes: u64 = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let config: Option<serde_json::Value> = std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let dtype = config
        .as_ref()
        .and_then(|c| c.get("dtype").or_else(|| c.get("torch_dtype")))
        .and_then(|d| d.as_str())
        .unwrap_or("float32");
    let width = match dtype {
        "bfloat16" | "float16" => 2.0,
        _ => 4.0,
    };
    bytes as f64 / width
}

/// MemAvailable of /proc/meminfo, in bytes (None where there is none).
pub fn available_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_streams_what_would_not_fit() {
        let gb = 1e9;
        // The 7B-sized llama whole (82.5 GB) in half of 24 GB: streamed; SmolLM2 (2 GB): whole.
        assert!(ReferenceMemory::Auto.decide(82.5 * gb, Some(12.0 * gb)));
        assert!(!ReferenceMemory::Auto.decide(2.0 * gb, Some(12.0 * gb)));
        // Nothing known of the memory: whole, as asked or by default.
        assert!(!ReferenceMemory::Auto.decide(82.5 * gb, None));
        assert!(
            ReferenceMemory::Streamed.decide(1.0, Some(gb))
                && !ReferenceMemory::Whole.decide(1e12, Some(gb))
        );
    }

    #[test]
    fn the_estimate_is_near_the_measured_runs() {
        // (parameters, measured seconds), three passes: the estimate within 30%.
        for (p, measured) in [
            (1.07e9, 62.0),
            (1.54e9, 98.0),
            (6.88e9, 266.0),
            (6.88e9, 359.0),
        ] {
            let e = estimated_seconds(p, 3);
            assert!(
                (e / measured - 1.0).abs() < 0.3,
                "{p}: {e} s against {measured} s"
            );
        }
        assert_eq!(minutes(336.0), "6 min");
        assert_eq!(minutes(45.0), "45 s");
    }

    #[test]
    fn a_checkpoint_counts_its_parameters_by_its_dtype() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"dtype": "bfloat16"}"#).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), vec![0u8; 2000]).unwrap();
        std::fs::write(dir.path().join("README.md"), vec![0u8; 5000]).unwrap();
        assert_eq!(parameters(dir.path()), 1000.0);
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"torch_dtype": "float32"}"#,
        )
        .unwrap();
        assert_eq!(parameters(dir.path()), 500.0);
    }
}
