//! The bench's figures for a person: the table and the cost picture.

use std::fmt::Write as _;

use llorch_checkpoint_spec::record::median;

use super::cells::{Cell, CAPTURES};

/// `median (min-max)` of a sample.
fn spread(v: &[f64]) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    format!("{:.1} ({:.1}-{:.1})", median(v), lo, hi)
}

pub fn table(cells: &[Cell]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<10} {:>6} {:>6} {:>8} | {:>24} {:>24} {:>7} {:>7} | {:>7} {:>6} | {:>8} {:>8} {:>8} {:>7} {:>7} | {:>8} {:>11} {:>7}",
        "capture", "tokens", "files", "MB", "decode with, ms", "without, ms", "ratio", "C ratio", "stop us", "GB/s",
        "wall", "no-extr", "raw C", "w/no-ex", "w/C", "MB/s", "RSS w/wo", "logits"
    );
    for c in cells {
        let (w, wo, rc) = (
            median(&c.wall_with_ms),
            median(&c.wall_without_ms),
            median(&c.wall_c_ms),
        );
        let _ = writeln!(
            s,
            "{:<10} {:>6} {:>6} {:>8.1} | {:>24} {:>24} {:>7.3} {:>7.3} | {:>7.1} {:>6.2} | {:>8.0} {:>8.0} {:>8.0} {:>7.2} {:>7.2} | {:>8.0} {:>5.0}/{:<5.0} {:>7}",
            c.capture.name(),
            c.tokens,
            c.files,
            c.mb,
            spread(&c.steady_with_ms),
            spread(&c.steady_without_ms),
            c.steady_ratio,
            c.c_ratio,
            c.stop_us,
            c.copy_gb_per_s,
            w,
            wo,
            rc,
            w / wo,
            w / rc,
            c.write_mb_per_s,
            c.peak_rss_mb_with,
            c.peak_rss_mb_without,
            if c.logits_bitwise_equal { "equal" } else { "DIFFER" }
        );
    }
    let _ = writeln!(
        s,
        "decode: steady-state prompt decode, median (min-max); ratio: with/without capture (C: the raw-C program's). \
         stop us: one scheduler stop, (asked only - without) / nodes asked; GB/s: the copies inside the callback, \
         MB written / (with - asked only). wall: whole process, median ms; MB/s: captured MB over the writer's busy time."
    );
    s
}

/// Steady-state cost against captured MB (log scale), the extractor's and raw C's.
pub fn svg(cells: &[Cell]) -> String {
    let (w, h, left, top, right, bottom) = (720.0, 420.0, 70.0, 40.0, 20.0, 50.0);
    let (x_lo, x_hi) = (-3.0f64, 4.0f64); // log10 MB
    let y_hi = cells
        .iter()
        .flat_map(|c| [c.steady_ratio, c.c_ratio])
        .fold(1.2f64, f64::max)
        .min(10.0);
    let (y_lo, y_hi) = (0.8f64, (y_hi * 10.0).ceil() / 10.0);
    let px = |mb: f64| left + (mb.max(1e-3).log10() - x_lo) / (x_hi - x_lo) * (w - left - right);
    let py = |r: f64| top + (y_hi - r.clamp(y_lo, y_hi)) / (y_hi - y_lo) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="20" font-size="13" font-weight="bold">Steady-state decode with capture / without, against MB captured per pass</text>"#
    );
    grid(&mut s, &px, &py, (y_lo, y_hi), (w, h, left, right, bottom));
    let colours = ["#1f77b4", "#ff7f0e", "#2ca02c"];
    for (k, capture) in CAPTURES.iter().enumerate() {
        for c in cells.iter().filter(|c| c.capture.name() == capture.name()) {
            let (x, y, yc) = (px(c.mb), py(c.steady_ratio), py(c.c_ratio));
            let _ = writeln!(
                s,
                r#"<circle cx="{x}" cy="{y}" r="5" fill="{}"><title>{} {} tokens: {:.3}</title></circle>"#,
                colours[k],
                capture.name(),
                c.tokens,
                c.steady_ratio
            );
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="8" height="8" fill="none" stroke="{}"><title>raw C, {} {} tokens: {:.3}</title></rect>"#,
                x - 4.0,
                yc - 4.0,
                colours[k],
                capture.name(),
                c.tokens,
                c.c_ratio
            );
        }
        let ly = top + 14.0 * k as f64 + 10.0;
        let _ = writeln!(
            s,
            r#"<circle cx="{}" cy="{ly}" r="5" fill="{}"/><text x="{}" y="{}">{} (squares: raw C)</text>"#,
            left + 20.0,
            colours[k],
            left + 30.0,
            ly + 4.0,
            capture.name()
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The plot's grid and axis labels: decades of MB across, ratios up.
fn grid(
    s: &mut String,
    px: &dyn Fn(f64) -> f64,
    py: &dyn Fn(f64) -> f64,
    (y_lo, y_hi): (f64, f64),
    (w, h, left, right, bottom): (f64, f64, f64, f64, f64),
) {
    let top = py(y_hi);
    for e in -3..=4 {
        let x = px(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            h - bottom,
            h - bottom + 14.0,
            10f64.powi(e)
        );
    }
    let step = if y_hi - y_lo > 2.0 { 0.5 } else { 0.1 };
    let mut r = (y_lo / step).ceil() * step;
    while r <= y_hi + 1e-9 {
        let y = py(r);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{r:.1}</text>"##,
            w - right,
            left - 6.0,
            y + 4.0
        );
        r += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">MB captured per pass (log)</text>"#,
        (left + w - right) / 2.0,
        h - 12.0
    );
}
