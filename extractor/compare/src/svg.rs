//! `errors.svg`: two heat maps, checkpoints x layers, of how far each
//! checkpoint is from the f64 reference.

use std::fmt::Write as _;

use crate::entries::F64;
use crate::metrics::Row;
use crate::text::{layer_text, xml};

/// One panel of the picture: its title, the value per row, and its axis range.
type Panel = (&'static str, Box<dyn Fn(&Row) -> f64>, f64, f64);

/// Two heat maps, checkpoints x layers: NMSE (dB) against f64, and the worst
/// element's share of its tolerance (>= 1 fails, outlined red). Log colour scales.
pub fn picture(rows: &[Row], title: &str) -> String {
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
