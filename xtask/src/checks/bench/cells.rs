//! What one cell of the bench is: the capture asked for and the figures
//! measured, and how a run is timed.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::project::Project;
use crate::runs::extractor::quietly;

/// What is captured.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capture {
    /// `manifests/gpt2.yaml`: the seed's nine checkpoints of layer 0.
    Nine,
    /// `manifests/gpt2.yaml --layers all`: the nine of each of the 12 layers.
    AllLayers,
    /// `--tensors '*'`: every node of the graph.
    EveryNode,
}

pub const CAPTURES: [Capture; 3] = [Capture::Nine, Capture::AllLayers, Capture::EveryNode];

impl Capture {
    pub fn name(self) -> &'static str {
        match self {
            Capture::Nine => "nine",
            Capture::AllLayers => "all layers",
            Capture::EveryNode => "every node",
        }
    }

    pub fn flags(self, project: &Project, extra: &str) -> Vec<String> {
        let manifest = project.root().join("manifests/gpt2.yaml");
        let manifest = manifest.display().to_string();
        let mut flags: Vec<String> = match self {
            Capture::Nine => vec!["--manifest".into(), manifest],
            Capture::AllLayers => vec!["--manifest".into(), manifest, "--layers=all".into()],
            Capture::EveryNode => vec!["--tensors".into(), "*".into()],
        };
        flags.extend(extra.split_whitespace().map(String::from));
        flags
    }
}

/// One cell of the table.
#[derive(Serialize)]
pub struct Cell {
    pub capture: Capture,
    pub tokens: usize,
    pub files: usize,
    pub mb: f64,
    pub first_pass_ms: f64,
    /// Steady state, the extractor: decode ms with and without capture.
    pub steady_with_ms: Vec<f64>,
    pub steady_without_ms: Vec<f64>,
    pub steady_ratio: f64,
    /// Steady state, the extractor's nodes asked for but not read: the stops alone.
    pub steady_asked_ms: Vec<f64>,
    /// The cost model: one scheduler stop, from (asked - without) / stops.
    pub stop_us: f64,
    /// The copies inside the callback: MB written over (with - asked).
    pub copy_gb_per_s: f64,
    /// Steady state, the raw-C program.
    pub c_with_ms: Vec<f64>,
    pub c_without_ms: Vec<f64>,
    pub c_ratio: f64,
    /// Whole-process wall time (ms) of each run.
    pub wall_with_ms: Vec<f64>,
    pub wall_without_ms: Vec<f64>,
    pub wall_c_ms: Vec<f64>,
    pub write_mb_per_s: f64,
    pub peak_rss_mb_with: f64,
    pub peak_rss_mb_without: f64,
    pub logits_bitwise_equal: bool,
}

/// The whole process's wall time, in ms.
pub fn timed(cmd: xshell::Cmd<'_>) -> Result<f64> {
    let started = Instant::now();
    quietly(cmd, "a timed run failed")?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}
