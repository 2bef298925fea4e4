//! One architecture tried end to end, stage by stage, its outcome named by
//! the stage that stopped it: make the tiny model (transformers), convert
//! it (the converter), run llama.cpp's whole graph and transformers' whole
//! pass (each side blamed for its own failure), pair, compare every layer.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use llorch_checkpoint_compare::auto::{compare_auto, node_divergence, Auto, Matched};
use llorch_checkpoint_compare::sides::{Extraction, Extractor, Prompt, Reference, ReferenceJob};
use llorch_checkpoint_compare::{Options, Outcome as Compared};

use super::table::{Finding, Outcome, Row};
use crate::models::model::{from_hf, tiny, tiny_dir, Outtype};
use crate::models::prompts::MATCHING_PROMPT;
use crate::project::Project;
use crate::runs::sides::{LlamaCpp, PyTorch};

/// Fewer pairs than this per layer leave too little to judge a layer by.
const MIN_PAIRS_PER_LAYER: usize = 3;

/// `arch` tried with `seed`, its comparison written into `out`.
pub fn try_one(project: &Project, arch: &str, class: &str, seed: u64, out: &Path) -> Row {
    let started = Instant::now();
    let mut row = Row {
        arch: arch.into(),
        class: class.into(),
        seed,
        llama_arch: None,
        outcome: Outcome::TransformersRefuses,
        reason: String::new(),
        nodes: None,
        tensors: None,
        pairs: None,
        within: None,
        logits_nmse: None,
        finding: None,
        report: None,
        seconds: 0.0,
    };
    let mut made = Vec::new();
    let (outcome, reason) = stages(project, &mut row, out, &mut made);
    // Paths in the project said from its root: the table is committed.
    let reason = reason.replace(&format!("{}/", project.root().display()), "");
    // What this try made and nothing else needs: up to 100 MB an architecture.
    for path in made {
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
    row.outcome = outcome;
    row.reason = reason;
    row.seconds = started.elapsed().as_secs_f64();
    row
}

/// The stages in order; `made` gains the tiny model and its conversion
/// where this try made them.
fn stages(
    project: &Project,
    row: &mut Row,
    out: &Path,
    made: &mut Vec<PathBuf>,
) -> (Outcome, String) {
    let dir = tiny_dir(project, &row.arch, row.seed);
    let existed = dir.exists();
    let hf = match tiny(project, &row.arch, row.seed) {
        Ok(dir) => dir,
        Err(e) => return (Outcome::TransformersRefuses, reason(&e)),
    };
    if !existed {
        made.push(hf.clone());
    }
    let gguf = match from_hf(project, &hf, Outtype::F32, false) {
        Ok(gguf) => gguf,
        Err(e) => return (Outcome::ConverterRefuses, reason(&e)),
    };
    if !existed {
        made.push(gguf.clone());
    }
    let llama = Blamed::new(LlamaCpp::new(project).with_f32_cache());
    let torch = Blamed::new(PyTorch::new(project));
    let opts = Options {
        layers: Some("all".into()),
        hf: Some(hf.clone()),
        ..Options::new(Path::new(""), &gguf, MATCHING_PROMPT, out.to_path_buf())
    };
    let auto = Auto {
        draft: None,
        against: None,
    };
    let _ = std::fs::remove_dir_all(out);
    match compare_auto(&llama, &torch, &opts, &auto) {
        Ok((compared, matched)) => judged(row, &hf, &compared, &matched, project),
        Err(e) if llama.failed.get() => (Outcome::LlamaCppRefuses, reason(&e)),
        Err(e) if torch.failed.get() => (Outcome::TransformersRefuses, reason(&e)),
        Err(e) => (Outcome::TooFewPairs, reason(&e)),
    }
}

/// A comparison made: agrees, diverges (with the finding) or too few pairs.
fn judged(
    row: &mut Row,
    hf: &Path,
    compared: &Compared,
    m: &Matched,
    project: &Project,
) -> (Outcome, String) {
    let n_layer = m.record.model.n_layer.max(1) as usize;
    let n_vocab = m.record.symbols.n_vocab as usize;
    let passed = compared.rows.iter().filter(|r| r.pass).count();
    row.llama_arch = Some(m.record.model.architecture.clone());
    row.nodes = Some(m.nodes.len());
    row.tensors = Some(m.tensors.len());
    row.pairs = Some(m.matching.pairs.len());
    row.within = Some((passed, compared.rows.len()));
    row.logits_nmse = compared
        .rows
        .iter()
        .find(|r| r.layer.is_none() && r.shape.last() == Some(&n_vocab))
        .map(|r| r.verdict().nmse);
    row.report = compared
        .html
        .strip_prefix(project.root())
        .ok()
        .map(|p| p.display().to_string());
    let pairs = m.matching.pairs.len();
    if pairs < MIN_PAIRS_PER_LAYER * n_layer {
        let why = format!(
            "{pairs} pairs over {n_layer} layers (fewer than {MIN_PAIRS_PER_LAYER} a layer): {} nodes and {} tensors without a counterpart",
            m.matching.unpaired.len(),
            m.matching.unpaired_tensors.len()
        );
        return (Outcome::TooFewPairs, why);
    }
    let Some(first) = compared.rows.iter().find(|r| !r.pass) else {
        let logits = match row.logits_nmse {
            Some(_) => "",
            None => "; no logits node paired",
        };
        return (Outcome::Agrees, format!("{}{logits}", compared.summary));
    };
    let checkpoint = format!(
        "{}{}",
        first.id,
        first
            .layer
            .map(|l| format!(" layer {l}"))
            .unwrap_or_default()
    );
    let node = node_divergence(m, compared).unwrap_or_else(|| "no node found".into());
    row.finding = Some(Finding {
        checkpoint: checkpoint.clone(),
        node: node
            .trim_start_matches("FIRST DIVERGING NODE: ")
            .to_string(),
        commands: commands(&row.arch, row.seed),
        config: config(hf),
    });
    let why = format!("{}; first beyond tolerance: {checkpoint}", compared.summary);
    (Outcome::Diverges, why)
}

/// The commands that make the same comparison: the conformance run of this
/// architecture alone (llama.cpp with the same f32 KV cache), and the
/// comparison by hand, whose f16 cache adds its own rounding.
fn commands(arch: &str, seed: u64) -> Vec<String> {
    let hf = match seed {
        0 => format!("--tiny {arch}"),
        _ => format!(
            "--hf target/llorch/models/tiny/{arch}-s{seed}` after `cargo xtask model --tiny {arch} --seed {seed}"
        ),
    };
    vec![
        format!("cargo xtask conformance --arch {arch} --seed {seed} --fresh"),
        format!("cargo xtask compare {hf} --layers all"),
    ]
}

fn config(hf: &Path) -> serde_json::Value {
    std::fs::read(hf.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// An error in one line: the Python exception where there is one (the last
/// line naming an error, with the assertion before it if it is bare), else
/// the first line.
fn reason(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let is_exception = |l: &str| {
        let name = l.split(':').next().unwrap_or("");
        !name.contains(' ') && (name.ends_with("Error") || name.ends_with("Exception"))
    };
    let line = match lines.iter().rposition(|l| is_exception(l)) {
        Some(i) if !lines[i].contains(':') => {
            let assertion = lines[..i].iter().rev().find(|l| l.starts_with("assert "));
            format!(
                "{}{}",
                lines[i],
                assertion.map(|a| format!(" ({a})")).unwrap_or_default()
            )
        }
        Some(i) => lines[i].to_string(),
        // The extractor's own `error:` line, after its banner.
        None if lines.iter().any(|l| l.starts_with("error: ")) => {
            let last = lines.iter().rev().find(|l| l.starts_with("error: "));
            last.map_or("", |l| &l["error: ".len()..]).to_string()
        }
        // A first line that announces what follows: with what follows.
        None if lines.first().is_some_and(|l| l.ends_with(':')) => {
            lines[..lines.len().min(2)].join(" ")
        }
        None => lines.first().copied().unwrap_or("no message").to_string(),
    };
    line.chars().take(400).collect()
}

/// A side that remembers whether it failed: the stage that stopped a comparison.
struct Blamed<T> {
    side: T,
    failed: Cell<bool>,
}

impl<T> Blamed<T> {
    fn new(side: T) -> Blamed<T> {
        Blamed {
            side,
            failed: Cell::new(false),
        }
    }

    fn noted<R>(&self, result: Result<R>) -> Result<R> {
        if result.is_err() {
            self.failed.set(true);
        }
        result
    }
}

impl<T: Extractor> Extractor for Blamed<T> {
    fn extract(&self, run: &Extraction<'_>) -> Result<()> {
        self.noted(self.side.extract(run))
    }

    fn dequantized(&self, model: &Path) -> Result<Option<PathBuf>> {
        self.noted(self.side.dequantized(model))
    }

    fn extract_graph(
        &self,
        model: &Path,
        prompt: Prompt<'_>,
        out: &Path,
        flash_attn: Option<bool>,
    ) -> Result<()> {
        self.noted(self.side.extract_graph(model, prompt, out, flash_attn))
    }
}

impl<T: Reference> Reference for Blamed<T> {
    fn compute(&self, job: &ReferenceJob) -> Result<()> {
        self.noted(self.side.compute(job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_named_by_its_exception() {
        let err = anyhow::anyhow!(
            "the converter failed:\nTraceback\n  File x\nValueError: no tokenizer.model\n"
        );
        assert_eq!(reason(&err), "ValueError: no tokenizer.model");
        let err =
            anyhow::anyhow!("could not convert:\n  assert d == 2 * m\n    ^^^^\n  AssertionError");
        assert_eq!(reason(&err), "AssertionError (assert d == 2 * m)");
        let err = anyhow::anyhow!("llama.cpp could not load the model:\nunknown architecture");
        assert_eq!(
            reason(&err),
            "llama.cpp could not load the model: unknown architecture"
        );
        let err = anyhow::anyhow!(
            "could not capture:\nextractor: pinned\nerror: llama.cpp could not load m.gguf: missing tensor"
        );
        assert_eq!(
            reason(&err),
            "llama.cpp could not load m.gguf: missing tensor"
        );
    }
}
