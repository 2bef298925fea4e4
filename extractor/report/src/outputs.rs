//! What a person reads: the terminal table, and the three files a
//! comparison leaves in its output directory (`errors.svg`, `report.html`,
//! `report.json`), each written whole or not at all.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use llorch_checkpoint_spec::files::write_atomically;
use llorch_checkpoint_spec::record::RunRecord;

use crate::findings::Entry;
use crate::findings::Info;
use crate::findings::Row;
use crate::findings::{first_divergence, CandidateRow};
use crate::text::layer_text;
use crate::{html, svg};

/// What a comparison found, for its reports.
pub struct Findings<'a> {
    pub manifest: &'a Path,
    pub model: &'a Path,
    pub prompt: &'a str,
    pub run: &'a Path,
    pub reference: &'a Path,
    pub record: &'a RunRecord,
    pub info: &'a Info,
    pub entries: &'a [Entry],
    pub rows: &'a [Row],
    /// The candidate's directory and rows.
    pub candidate: Option<(&'a Path, &'a [CandidateRow])>,
    pub attribution: Option<&'a serde_json::Value>,
    pub failure: Option<&'a str>,
    /// The terminal's text: header, tables, summary.
    pub text: &'a str,
    /// Checkpoints report.html details even when they pass.
    pub show: Option<&'a glob::Pattern>,
}

/// The files [`write_reports`] wrote.
pub struct Written {
    pub report: PathBuf,
    pub picture: PathBuf,
    pub html: PathBuf,
}

/// `errors.svg`, `report.html` and `report.json` in `out`.
pub fn write_reports(out: &Path, f: &Findings<'_>) -> Result<Written> {
    let picture = out.join("errors.svg");
    let title = format!(
        "llama.cpp vs PyTorch {} (f64), {}",
        f.info.model,
        f.manifest
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let svg = svg::picture(f.rows, &title);
    write_atomically(&picture, svg.as_bytes())?;
    let page = html::render(&html::Page {
        title: &title,
        header: f
            .text
            .lines()
            .find(|l| l.starts_with("llama.cpp ("))
            .unwrap_or_default(),
        rows: f.rows,
        entries: f.entries,
        picture: &svg,
        candidate: f.candidate.map(|(_, rows)| rows),
        show: f.show,
        run: f.run,
        reference: f.reference,
    })?;
    let html = out.join("report.html");
    write_atomically(&html, page.as_bytes())?;
    let report = out.join("report.json");
    write_atomically(&report, &serde_json::to_vec_pretty(&json(f, &picture))?)?;
    Ok(Written {
        report,
        picture,
        html,
    })
}

/// `report.json`: everything the comparison found, for other programs.
fn json(f: &Findings<'_>, picture: &Path) -> serde_json::Value {
    serde_json::json!({
        "manifest": f.manifest, "model": f.model, "prompt": f.prompt, "tokens": f.record.tokens, "run": f.run,
        "reference_variants": f.info.variants, "reference": f.info, "verdict_against": crate::findings::truth(&f.info.variants), "pass": f.failure.is_none(),
        "first_failure": f.failure, "checkpoints": f.rows, "attribution": f.attribution,
        "candidate": f.candidate.map(|(dir, rows)| serde_json::json!({
            "dir": dir,
            "checkpoints": rows,
            "first_divergence_from_llama_cpp": first_divergence(rows, "llama.cpp"),
            "first_divergence_from_f64": first_divergence(rows, "f64"),
        })), "picture": picture,
    })
}

/// Per checkpoint and layer: the error against f32 and f64, and the verdict.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let truth = format!("{}:maxab", rows.first().map_or("f64", |r| r.truth.as_str()));
    let _ = writeln!(
        s,
        "\n{:<18} {:>3}  {:>9} {:>9} {:>7} {:>10}  | {:>9} {:>9} {:>9} {:>7} {:>12} {:>7}  {:<5} tolerance (atol, rtol, nmse)",
        "checkpoint", "l", "f32:maxab", "nmse", "dB", "cos-1", truth, "max rel", "nmse", "dB", "cos-1", "outside", ""
    );
    for r in rows {
        let (a, b) = r.f32_and_truth();
        let t = r.tolerance;
        let _ = writeln!(
            s,
            "{:<18} {:>3}  {:>9.2e} {:>9.2e} {:>7.1} {:>10.2e}  | {:>9.2e} {:>9.2e} {:>9.2e} {:>7.1} {:>12.2e} {:>6.2}%  {:<5} {}",
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
            t.text()
        );
    }
    s
}
