//! What a person reads: the terminal table and `errors.svg` (two heat maps,
//! checkpoints x layers), and the three files a comparison leaves in `--out`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use llorch_checkpoint_spec::record::RunRecord;

use super::metrics::Row;
use super::{candidate, html, reference, Entry, Options, Outcome, F32, F64, VARIANTS};
use crate::fetch::write_atomically;

/// What a comparison found, for its reports.
pub struct Findings {
    pub model: PathBuf,
    pub run: PathBuf,
    pub reference: PathBuf,
    pub record: RunRecord,
    pub info: reference::Info,
    pub entries: Vec<Entry>,
    pub rows: Vec<Row>,
    pub candidate_rows: Option<Vec<candidate::CandidateRow>>,
    pub attribution: Option<serde_json::Value>,
    pub failure: Option<String>,
    /// The terminal's text: header, tables, summary.
    pub text: String,
    pub summary: String,
}

/// `errors.svg`, `report.html` and `report.json` in `--out`, each written
/// whole or not at all.
pub fn write_reports(opts: &Options, f: Findings) -> Result<Outcome> {
    let picture = opts.out.join("errors.svg");
    let title = format!(
        "llama.cpp vs PyTorch {} (f64), {}",
        f.info.model,
        opts.manifest
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let svg = svg(&f.rows, &title);
    write_atomically(&picture, svg.as_bytes())?;
    let page = html::render(&html::Page {
        title: &title,
        header: f
            .text
            .lines()
            .find(|l| l.starts_with("llama.cpp ("))
            .unwrap_or_default(),
        rows: &f.rows,
        entries: &f.entries,
        picture: &svg,
        candidate: f.candidate_rows.as_deref(),
        show: opts.show.as_ref(),
        run: &f.run,
        reference: &f.reference,
    })?;
    let html = opts.out.join("report.html");
    write_atomically(&html, page.as_bytes())?;
    let report = opts.out.join("report.json");
    let candidate = f.candidate_rows.as_deref();
    let json = serde_json::json!({
        "manifest": opts.manifest, "model": f.model, "prompt": opts.prompt, "tokens": f.record.tokens, "run": f.run,
        "reference_variants": VARIANTS, "reference": f.info, "verdict_against": F64, "pass": f.failure.is_none(),
        "first_failure": f.failure, "checkpoints": f.rows, "attribution": f.attribution,
        "candidate": opts.candidate.as_ref().map(|dir| serde_json::json!({
            "dir": dir,
            "checkpoints": candidate,
            "first_divergence_from_llama_cpp": candidate.and_then(|c| candidate::first_divergence(c, "llama.cpp")),
            "first_divergence_from_f64": candidate.and_then(|c| candidate::first_divergence(c, "f64")),
        })), "picture": picture,
    });
    write_atomically(&report, &serde_json::to_vec_pretty(&json)?)?;
    Ok(Outcome {
        report,
        picture,
        html,
        summary: f.summary,
        failure: f.failure,
        next_token: (f.record.next_token, f.info.next_token.get(F64).copied()),
    })
}

pub fn layer_text(l: Option<u32>) -> String {
    l.map_or("-".into(), |l| l.to_string())
}

pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<18} {:>3}  {:>9} {:>9} {:>7} {:>10}  | {:>9} {:>9} {:>9} {:>7} {:>12} {:>7}  {:<5} tolerance (atol, rtol, nmse)",
        "checkpoint", "l", "f32:maxab", "nmse", "dB", "cos-1", "f64:maxab", "max rel", "nmse", "dB", "cos-1", "outside", ""
    );
    for r in rows {
        let (a, b) = (r.against[F32], r.against[F64]);
        let t = r.tolerance;
        let _ = writeln!(
            s,
            "{:<18} {:>3}  {:>9.2e} {:>9.2e} {:>7.1} {:>10.2e}  | {:>9.2e} {:>9.2e} {:>9.2e} {:>7.1} {:>12.2e} {:>6.2}%  {:<5} {:.0e}, {:.0e}, {:.0e}",
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

/// One panel of the picture: its title, the value per row, and its axis range.
type Panel = (&'static str, Box<dyn Fn(&Row) -> f64>, f64, f64);

/// Two heat maps, checkpoints x layers: NMSE (dB) against f64, and the worst
/// element's share of its tolerance (>= 1 fails, outlined red). Log colour scales.
pub fn svg(rows: &[Row], title: &str) -> String {
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
    // Wide enough cells that a panel's title fits over few layers.
    let (cw, ch, left, top) = (
        (420.0 / layers.len() as f64).clamp(46.0, 90.0),
        26.0,
        140.0,
        70.0,
    );
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
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        xml(title)
    );
    let panels: [Panel; 2] = [
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
