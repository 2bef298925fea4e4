//! What each panel shows: its values, their place on the colour scale, its
//! colour bar's ticks, and the colours themselves.

use crate::findings::Row;
use crate::text::layer_text;

/// What a cell shows: its text, where its value is on the panel's colour
/// scale (0..1, clamped when drawn), and its hover text.
pub(super) struct Value {
    pub(super) text: String,
    pub(super) scale: f64,
    pub(super) hover: String,
}

/// One heat map: its title, a row's cell, and its colour bar's labels
/// (position on the bar, text), the first placed first.
pub(super) struct Panel {
    pub(super) title: &'static str,
    pub(super) value: fn(&Row) -> Value,
    pub(super) ticks: &'static [(f64, &'static str)],
}

/// NMSE dB from -160 (0 on the scale) to -20, llama.cpp's fail line (1).
const NMSE_LO: f64 = -160.0;
const NMSE_HI: f64 = -20.0;
/// log10 of the worst element's share of its tolerance: 1e-4 (0) to 10 (1).
const RATIO_LO: f64 = -4.0;
const RATIO_HI: f64 = 1.0;

fn nmse_at(db: f64) -> f64 {
    (db - NMSE_LO) / (NMSE_HI - NMSE_LO)
}

fn ratio_at(log10: f64) -> f64 {
    (log10 - RATIO_LO) / (RATIO_HI - RATIO_LO)
}

pub(super) fn panels() -> [Panel; 2] {
    [
        Panel {
            title: "NMSE, dB (llama.cpp practice: fail above -20\u{a0}dB)",
            value: |r| {
                let db = r.verdict().nmse_db;
                let text = if db.is_finite() {
                    format!("{db:.0}")
                } else {
                    format!("{db}").to_lowercase()
                };
                Value {
                    hover: format!("{} layer {}: NMSE {db:.1} dB", r.id, layer_text(r.layer)),
                    scale: nmse_at(db),
                    text,
                }
            },
            ticks: &[
                (0.0, "-160 dB"),
                (1.0, "-20 dB"),
                (4.0 / 7.0, "-80"),
                (2.0 / 7.0, "-120"),
                (6.0 / 7.0, "-40"),
                (1.0 / 7.0, "-140"),
                (3.0 / 7.0, "-100"),
                (5.0 / 7.0, "-60"),
            ],
        },
        Panel {
            title: "worst |diff| as % of its tolerance atol + rtol|ref| (log colour; >=\u{a0}100% fails)",
            value: |r| {
                let ratio = r.verdict().worst_ratio;
                Value {
                    text: percent(ratio),
                    scale: ratio_at(ratio.log10()),
                    hover: format!(
                        "{} layer {}: the worst element is {} of its tolerance",
                        r.id,
                        layer_text(r.layer),
                        match 100.0 * ratio {
                            p if p.is_finite() => format!("{p:.4}%"),
                            _ => percent(ratio),
                        }
                    ),
                }
            },
            ticks: &[
                (0.0, "0.01%"),
                (1.0, "1000%"),
                (0.8, "100%"),
                (0.4, "1%"),
                (0.2, "0.1%"),
                (0.6, "10%"),
            ],
        },
    ]
}

/// A share as a cell shows it: whole percents, powers of ten past 9999%.
pub(super) fn percent(ratio: f64) -> String {
    let p = 100.0 * ratio;
    if !p.is_finite() {
        format!("{p}").to_lowercase()
    } else if p.round() < 10_000.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.0e}%")
    }
}

pub(super) fn rgb((r, g, b): (f64, f64, f64)) -> String {
    format!("rgb({r:.0},{g:.0},{b:.0})")
}

/// Whether a colour is dark enough that white text reads better on it.
pub(super) fn dark((r, g, b): (f64, f64, f64)) -> bool {
    0.2126 * r + 0.7152 * g + 0.0722 * b < 110.0
}

/// 0 -> dark blue (tiny error), 1 -> yellow/red (at the limit); clamped.
pub(super) fn colour(f: f64) -> (f64, f64, f64) {
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
    c
}
