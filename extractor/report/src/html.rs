//! `report.html`: the comparison as one self-contained page (inline SVG, no
//! script, no network): the summary table, the per-layer picture, the
//! candidate's pairs, and for each checkpoint over its tolerance (or picked
//! with `--show`) a heatmap of |diff| and a histogram of the error.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::findings::Entry;
use crate::findings::{first_divergence, CandidateRow, Verdict};
use llorch_checkpoint_spec::metric::unravel;

use llorch_checkpoint_spec::format::{read_values, Values};

use crate::findings::Row;
use crate::text::{layer_text, xml};

/// Everything the page shows.
pub struct Page<'a> {
    pub title: &'a str,
    pub header: &'a str,
    pub rows: &'a [Row],
    pub entries: &'a [Entry],
    pub picture: &'a str,
    pub candidate: Option<&'a [CandidateRow]>,
    /// Checkpoints to detail besides the failing ones (`--show`).
    pub show: Option<&'a glob::Pattern>,
    pub run: &'a Path,
    pub reference: &'a Path,
}

pub fn render(page: &Page<'_>) -> Result<String> {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{STYLE}</style></head><body>\n\
         <h1>{}</h1>\n<p>{}</p>\n<nav><a href=\"#summary\">Summary</a> · <a href=\"#picture\">Per layer</a>{} · <a href=\"#details\">Details</a></nav>\n",
        xml(page.title),
        xml(page.title),
        xml(page.header),
        if page.candidate.is_some() { " · <a href=\"#candidate\">Candidate</a>" } else { "" }
    );
    let detailed = detailed(page);
    summary(&mut s, page.rows, &detailed);
    let _ = write!(
        s,
        "<h2 id=\"picture\">Per layer</h2>\n<div class=\"picture\">{}</div>\n",
        page.picture
    );
    if let Some(c) = page.candidate {
        candidate(&mut s, c);
    }
    s.push_str("<h2 id=\"details\">Details</h2>\n");
    for &i in &detailed {
        let (row, entry) = (&page.rows[i], &page.entries[i]);
        let test = read_values(&page.run.join(&row.file))?;
        let reference = read_values(
            &page
                .reference
                .join(&row.truth)
                .join(format!("{}.npy", entry.stem)),
        )?;
        detail(&mut s, row, entry.head_axis, &test, &reference);
    }
    let over = page.rows.iter().filter(|r| !r.pass).count();
    if detailed.is_empty() {
        s.push_str("<p>Every checkpoint is within its tolerance; pick some to see with <code>--show GLOB</code>.</p>\n");
    } else if over > detailed.len() {
        let _ = writeln!(s, "<p>{over} checkpoints are over their tolerance; the first {MAX_DETAILS} are shown (all are in the summary and report.json).</p>");
    }
    s.push_str("</body></html>\n");
    Ok(s)
}

/// Checkpoints detailed at most (each is a few thousand SVG cells).
const MAX_DETAILS: usize = 24;

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px}\
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}td.l{text-align:left}\
tr.fail td{background:#fdd}.picture{overflow-x:auto}section{margin:1.5em 0;border-top:1px solid #ccc}\
.panels{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}figcaption{font-size:12px}";

/// The rows detailed: over their tolerance or picked by `--show`, at most
/// [`MAX_DETAILS`], in graph order.
fn detailed(page: &Page<'_>) -> Vec<usize> {
    page.rows
        .iter()
        .zip(page.entries)
        .enumerate()
        .filter(|(_, (row, entry))| {
            !row.pass
                || page
                    .show
                    .is_some_and(|p| p.matches(&row.id) || p.matches(&entry.key()))
        })
        .map(|(i, _)| i)
        .take(MAX_DETAILS)
        .collect()
}

fn anchor(row: &Row) -> String {
    format!("cp-{}-{}", row.id, layer_text(row.layer))
}

fn summary(s: &mut String, rows: &[Row], detailed: &[usize]) {
    s.push_str(
        "<h2 id=\"summary\">Summary</h2>\n<table><tr><th>checkpoint</th><th>layer</th><th>shape</th><th>NMSE dB (f32)</th>\
         <th>NMSE dB (f64)</th><th>max |diff|</th><th>at</th><th>p50</th><th>p99</th><th>p99.9</th><th>1 - cosine</th>\
         <th>outside</th><th>verdict</th></tr>\n",
    );
    for (i, r) in rows.iter().enumerate() {
        let (a, m) = r.f32_and_truth();
        let at = unravel(m.max_abs_at, &r.shape);
        // Only rows with a detail section link to one.
        let name = if detailed.contains(&i) {
            format!("<a href=\"#{}\">{}</a>", anchor(r), xml(&r.id))
        } else {
            xml(&r.id)
        };
        let _ = writeln!(
            s,
            "<tr{}><td class=\"l\">{name}</td><td>{}</td><td>{:?}</td><td>{:.1}</td><td>{:.1}</td><td>{:.2e}</td>\
             <td>{at:?}</td><td>{:.1e}</td><td>{:.1e}</td><td>{:.1e}</td><td>{:.1e}</td><td>{:.2}%</td><td>{}</td></tr>",
            if r.pass { "" } else { " class=\"fail\"" },
            layer_text(r.layer),
            r.shape,
            a.nmse_db,
            m.nmse_db,
            m.max_abs,
            m.p50_abs,
            m.p99_abs,
            m.p999_abs,
            1.0 - m.cosine,
            100.0 * m.outside,
            if r.pass { "ok" } else { "FAIL" }
        );
    }
    s.push_str("</table>\n");
}

fn candidate(s: &mut String, rows: &[CandidateRow]) {
    s.push_str(
        "<h2 id=\"candidate\">Candidate</h2>\n<table><tr><th>checkpoint</th><th>layer</th><th>file</th>\
         <th>NMSE dB vs llama.cpp</th><th>NMSE dB vs f64</th><th>note</th></tr>\n",
    );
    let cell = |v: &Option<Verdict>| {
        v.as_ref().map_or("-".into(), |v| {
            format!(
                "{:.1} {}",
                v.metrics.nmse_db,
                if v.pass { "ok" } else { "DIVERGES" }
            )
        })
    };
    for r in rows {
        let _ = writeln!(
            s,
            "<tr><td class=\"l\">{}</td><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            xml(&r.id),
            layer_text(r.layer),
            xml(&r.file),
            cell(&r.vs_llama),
            cell(&r.vs_f64),
            xml(r.problem.as_deref().unwrap_or(""))
        );
    }
    s.push_str("</table>\n");
    if let Some(v) = rows.iter().find_map(|r| r.vs_llama.as_ref()) {
        let _ = writeln!(
            s,
            "<p>Against llama.cpp judged by atol, rtol, NMSE {}; against f64 by each checkpoint's own tolerance.</p>",
            xml(&v.tolerance.text())
        );
    }
    for pair in ["llama.cpp", "f64"] {
        let first = first_divergence(rows, pair);
        let _ = writeln!(
            s,
            "<p>First divergence of the candidate from {pair}: {}</p>",
            xml(first.as_deref().unwrap_or("none"))
        );
    }
}

/// A checkpoint's heatmaps (one per head, where it has heads) and histogram.
fn detail(s: &mut String, row: &Row, head_axis: Option<usize>, test: &Values, reference: &Values) {
    let diff: Vec<f64> = test
        .data
        .iter()
        .zip(&reference.data)
        .map(|(t, r)| (t - r).abs())
        .collect();
    let (panels, rows, cols) = view(&test.shape, head_axis);
    let max = diff
        .iter()
        .copied()
        .fold(0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let _ = write!(
        s,
        "<section id=\"{}\"><h3>{} layer {} ({}){}</h3>\n<p>shape {:?}; |diff| from 0 (white) to {:.3e} (dark red); \
         {} panel(s) of {rows} x {cols}</p>\n<div class=\"panels\">",
        anchor(row),
        xml(&row.id),
        layer_text(row.layer),
        xml(&row.file),
        if row.pass { "" } else { ": over its tolerance" },
        row.shape,
        max,
        panels.len()
    );
    for (p, (name, offsets)) in panels.iter().enumerate() {
        let _ = write!(
            s,
            "<figure>{}<figcaption>{}</figcaption></figure>",
            heatmap(&diff, offsets, rows, cols, max),
            xml(name)
        );
        if p >= 11 {
            break;
        }
    }
    let _ = writeln!(
        s,
        "<figure>{}<figcaption>log10 |diff|, all elements</figcaption></figure></div></section>",
        histogram(&diff)
    );
}

/// Panels of a 2-D view: one per head along `head_axis` (the file axis the
/// manifest writes `n_head` or `n_head_kv`), else one; within a panel the
/// other axes but the last are rows, the last axis columns (a head axis that
/// is last is flattened into rows too). Returns each panel's name and the
/// flat offset of each of its rows, and the panel's size.
fn view(shape: &[usize], head_axis: Option<usize>) -> (Vec<(String, Vec<usize>)>, usize, usize) {
    let last = shape.len().saturating_sub(1);
    let head = head_axis.filter(|&h| h < last && shape[h] > 1);
    let cols = shape.get(last).copied().unwrap_or(1).max(1);
    let n_rows: usize = shape[..last].iter().product::<usize>().max(1);
    let mut panels: Vec<(String, Vec<usize>)> = match head {
        Some(h) => (0..shape[h].min(12))
            .map(|i| (format!("head {i}"), Vec::new()))
            .collect(),
        None => vec![("all rows".into(), Vec::new())],
    };
    for r in 0..n_rows {
        // The index of row r along the head axis.
        let (mut rest, mut at) = (r, 0);
        for (a, &d) in shape[..last].iter().enumerate().rev() {
            if Some(a) == head {
                at = rest % d.max(1);
            }
            rest /= d.max(1);
        }
        if let Some(panel) = panels.get_mut(at) {
            panel.1.push(r * cols);
        }
    }
    let rows = panels[0].1.len().max(1);
    (panels, rows, cols)
}

/// |diff| of one panel, downsampled to at most 96 x 128 cells by block maxima.
fn heatmap(diff: &[f64], offsets: &[usize], rows: usize, cols: usize, max: f64) -> String {
    let (h, w) = (rows.clamp(1, 96), cols.clamp(1, 128));
    // Cells big enough to see when there are few of them.
    let (cw, ch) = (
        (384.0 / w as f64).clamp(2.0, 12.0),
        (96.0 / h as f64).clamp(3.0, 12.0),
    );
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\">",
        w as f64 * cw,
        h as f64 * ch
    );
    for y in 0..h {
        let (r0, r1) = (y * rows / h, ((y + 1) * rows / h).max(y * rows / h + 1));
        for x in 0..w {
            let (c0, c1) = (x * cols / w, ((x + 1) * cols / w).max(x * cols / w + 1));
            let v = offsets[r0..r1.min(offsets.len())]
                .iter()
                .flat_map(|&o| diff[o + c0..o + c1.min(cols)].iter())
                .copied()
                .fold(0f64, f64::max);
            let f = (v / max).clamp(0.0, 1.0);
            let shade = |lo: f64, hi: f64| (lo + (hi - lo) * f).round() as u8;
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"{cw}\" height=\"{ch}\" fill=\"rgb({},{},{})\"/>",
                x as f64 * cw,
                y as f64 * ch,
                shade(255.0, 150.0),
                shade(255.0, 0.0),
                shade(255.0, 0.0)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Counts of log10 |diff| in half-decade bins from 1e-12 to 1e3, and of exact zeros.
fn histogram(diff: &[f64]) -> String {
    let bins: Vec<f64> = (0..=30).map(|i| -12.0 + 0.5 * i as f64).collect();
    let mut counts = vec![0usize; bins.len() + 1];
    for &d in diff {
        let slot = if d == 0.0 {
            0
        } else {
            let k = ((d.log10() + 12.0) / 0.5)
                .floor()
                .clamp(0.0, (bins.len() - 1) as f64);
            1 + k as usize
        };
        counts[slot] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let (bw, height) = (9.0, 120.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-size=\"9\">",
        bw * counts.len() as f64 + 10.0,
        height + 24.0
    );
    for (i, &c) in counts.iter().enumerate() {
        // Log-scaled bar height: one element still shows.
        let h = if c == 0 {
            0.0
        } else {
            height * (1.0 + (c as f64).log10()) / (1.0 + top.log10())
        };
        let label = if i == 0 {
            "0".to_string()
        } else {
            format!("{}", bins[i - 1])
        };
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{h}\" fill=\"{}\"><title>{label}: {c}</title></rect>",
            i as f64 * bw,
            height - h,
            bw - 1.0,
            if i == 0 { "#888" } else { "#c33" }
        );
        if i % 4 == 0 {
            let _ = write!(
                s,
                "<text x=\"{}\" y=\"{}\">{label}</text>",
                i as f64 * bw,
                height + 12.0
            );
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_make_panels_and_rows_are_the_rest() {
        // [T 2, heads 9, dim 4] with the head axis 1: nine panels of 2 x 4.
        let (panels, rows, cols) = view(&[2, 9, 4], Some(1));
        assert_eq!((panels.len(), rows, cols), (9, 2, 4));
        assert_eq!(panels[1].1, [4, 40], "head 1 of each position");
        // Scores [1, heads 2, T 3, kv 3]: per head, queries by keys.
        let (panels, rows, cols) = view(&[1, 2, 3, 3], Some(1));
        assert_eq!((panels.len(), rows, cols), (2, 3, 3));
        assert_eq!(panels[1].1, [9, 12, 15]);
        // [1, T 7, 768], no heads: one panel.
        let (panels, rows, cols) = view(&[1, 7, 768], None);
        assert_eq!((panels.len(), rows, cols), (1, 7, 768));
        // A histogram counts exact zeros apart.
        let h = histogram(&[0.0, 0.0, 1e-3]);
        assert!(
            h.contains("<title>0: 2</title>") && h.contains("<title>-3: 1</title>"),
            "{h}"
        );
    }
}
