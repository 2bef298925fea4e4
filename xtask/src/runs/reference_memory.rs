//! How the reference holds a model: whole (transformers' float32 model and
//! its float64 copy, about 12 bytes a parameter) or streamed, one layer at a
//! time from the Hugging Face checkpoint (`reference.py`'s `Streamed`).

use std::path::Path;

use anyhow::{bail, Result};

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
    /// Whether the reference streams `hf` (the checkpoint it reads; None: a
    /// GGUF, which only loads whole); says why on the terminal.
    pub fn streamed(self, hf: Option<&Path>) -> Result<bool> {
        let Some(dir) = hf else {
            if self == ReferenceMemory::Streamed {
                bail!("--reference streamed reads a Hugging Face checkpoint's layers: give --hf DIR or --random ARCH");
            }
            return Ok(false);
        };
        let parameters = parameters(dir);
        let whole = parameters * WHOLE_BYTES_PER_PARAMETER;
        let available = available_memory();
        let streamed = match self {
            ReferenceMemory::Whole => false,
            ReferenceMemory::Streamed => true,
            ReferenceMemory::Auto => available.is_some_and(|a| whole > a / 2.0),
        };
        let available = available.map_or("unknown".into(), |a| format!("{:.1} GB", a / 1e9));
        eprintln!(
            "reference: {} ({:.2}B parameters: {:.1} GB whole in f32 and f64; {available} available{})",
            match streamed {
                true => "streamed layer by layer",
                false => "the whole model",
            },
            parameters / 1e9,
            whole / 1e9,
            match self {
                ReferenceMemory::Auto => "; --reference whole|streamed to choose",
                _ => "",
            }
        );
        Ok(streamed)
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
