//! The picture's geometry: every text inside, none overlapping, at every size.

use llorch_checkpoint_spec::manifest::Tolerance;

use super::scales::percent;
use super::*;
use crate::findings::F64;
use llorch_checkpoint_spec::metric::Metrics;

/// SmolLM2's checkpoints (manifests/llama.yaml).
const IDS: [&str; 12] = [
    "01_attn_norm",
    "02_q",
    "02_k",
    "02_v",
    "03_q_rope",
    "03_k_rope",
    "04_cache_k",
    "04_cache_v",
    "05_scores",
    "06_attn_out",
    "07_ffn_out",
    "08_l_out",
];
const LONG: &str =
    "09_a_checkpoint_with_a_rather_long_name_that_someone_might_write_in_a_manifest_one_day";

fn row(id: &str, layer: Option<u32>, nmse_db: f64, worst_ratio: f64) -> Row {
    let m = Metrics {
        max_abs: 1e-3,
        max_abs_at: 0,
        p50_abs: 0.0,
        p99_abs: 0.0,
        p999_abs: 0.0,
        max_rel: 0.0,
        nmse: 10f64.powf(nmse_db / 10.0),
        nmse_db,
        cosine: 1.0,
        n_outside: 0,
        outside: 0.0,
        worst_ratio,
        worst: 0,
        atol: 1e-5,
    };
    Row {
        id: id.into(),
        layer,
        file: format!("checkpoint_{id}.bin"),
        shape: vec![1, 7, 576],
        tolerance: Tolerance {
            atol: 1e-5,
            atol_of_max: 0.0,
            rtol: 1e-4,
            nmse: 1e-6,
        },
        against: [(F64.to_string(), m)].into(),
        pass: worst_ratio < 1.0 && nmse_db <= -60.0,
        worst_index: vec![0, 0, 0],
        worst_test: 0.0,
        worst_ref: 0.0,
        non_finite_test: 0,
        non_finite_ref: 0,
        truth: F64.into(),
    }
}

/// `ids` x `layers` rows with values over the whole range, the widest
/// cell texts among them, and one checkpoint outside the layers.
fn rows(ids: &[&str], layers: u32) -> Vec<Row> {
    let mut rows = vec![row("00_embd", None, -140.0, 1e-3)];
    for l in 0..layers {
        for (i, id) in ids.iter().enumerate() {
            let k = (l as usize * ids.len() + i) as f64;
            let (db, ratio) = match k as usize % 7 {
                0 => (-888.0, 1e12),
                1 => (f64::NEG_INFINITY, 0.0),
                2 => (f64::NAN, f64::NAN),
                3 => (-5555.0, 9999.0),
                _ => (
                    -160.0 + 150.0 * (k * 0.37).sin().abs(),
                    10f64.powf(-5.0 + 7.0 * (k * 0.71).cos().abs()),
                ),
            };
            rows.push(row(id, Some(l), db, ratio));
        }
    }
    rows
}

/// Every text's box within the picture, no two texts' boxes sharing an
/// area, every box drawn within the picture.
fn assert_fits(lay: &Layout, what: &str) {
    let picture = Rect {
        x: 0.0,
        y: 0.0,
        w: lay.width,
        h: lay.height,
    };
    let boxes: Vec<Rect> = lay.texts.iter().map(Text::bbox).collect();
    for (t, b) in lay.texts.iter().zip(&boxes) {
        assert!(
            picture.contains(b),
            "{what}: {:?} at {b:?} leaves the picture {picture:?}",
            t.text
        );
    }
    for s in &lay.shapes {
        assert!(
            picture.contains(&s.rect),
            "{what}: a box at {:?} leaves the picture",
            s.rect
        );
    }
    for i in 0..boxes.len() {
        for j in i + 1..boxes.len() {
            assert!(
                !boxes[i].overlaps(&boxes[j]),
                "{what}: {:?} at {:?} overlaps {:?} at {:?}",
                lay.texts[i].text,
                boxes[i],
                lay.texts[j].text,
                boxes[j]
            );
        }
    }
}

#[test]
fn every_text_fits_apart_at_every_size() {
    let long_title = format!(
        "llama.cpp vs PyTorch {} (f64), {}",
        "x".repeat(150),
        "a very long manifest name indeed.yaml"
    );
    let mut with_long = IDS.to_vec();
    with_long.insert(3, LONG);
    for layers in [0, 1, 3, 30, 60] {
        for ids in [&IDS[..], &with_long[..], &["q"][..]] {
            for title in [
                "t",
                "llama.cpp vs PyTorch SmolLM2-135M-Instruct (f64), llama.yaml",
                &long_title,
            ] {
                let lay = layout(&rows(ids, layers), title);
                let what = format!(
                    "{layers} layers, {} checkpoints, title {} long",
                    ids.len(),
                    title.len()
                );
                assert_fits(&lay, &what);
                // One text per cell and per layer number in each panel; the
                // row labels once or twice; titles, captions, ticks.
                let cells = 2 * (1 + ids.len() * layers as usize);
                assert!(
                    lay.texts.len() > cells + 2 * (layers as usize + 1),
                    "{what}"
                );
            }
        }
    }
    assert_fits(&layout(&[], "nothing"), "no rows");
}

#[test]
fn panels_side_by_side_when_narrow_stacked_when_wide() {
    for (layers, side_by_side) in [(1, true), (3, true), (30, false), (60, false)] {
        let lay = layout(&rows(&IDS, layers), "t");
        let [a, b] = [lay.grids[0], lay.grids[1]];
        assert_eq!(
            b.x > a.right() && b.y == a.y,
            side_by_side,
            "{layers} layers"
        );
        assert_eq!(
            b.y > a.bottom() && b.x == a.x,
            !side_by_side,
            "{layers} layers"
        );
        if side_by_side {
            assert!(
                lay.width <= MAX_SIDE_BY_SIDE,
                "{layers} layers: {}",
                lay.width
            );
        }
        // The checkpoints' rows and the layers' columns (and layer "-").
        assert_eq!(a.h, CELL_H * 13.0);
        assert!(a.w >= MIN_CELL_W * (layers + 1) as f64);
    }
    // A long name is shortened, whole on hover.
    let lay = layout(&rows(&[LONG], 1), "t");
    let label = lay
        .texts
        .iter()
        .find(|t| t.hover.as_deref() == Some(LONG))
        .unwrap();
    assert!(label.text.ends_with('…') && width(&label.text, LABEL, false) <= MAX_LABEL_W);
}

#[test]
fn every_value_is_inside_its_cell() {
    let lay = layout(&rows(&IDS, 3), "t");
    let cells: Vec<Rect> = lay
        .shapes
        .iter()
        .filter(|s| s.stroke == Stroke::White)
        .map(|s| s.rect)
        .collect();
    assert_eq!(cells.len(), 2 * (1 + 3 * IDS.len()));
    for c in &cells {
        let inside: Vec<&Text> = lay.texts.iter().filter(|t| c.contains(&t.bbox())).collect();
        assert_eq!(inside.len(), 1, "{c:?}: {inside:?}");
    }
}

#[test]
fn the_picture_shows_both_panels_failures_values_and_ranges() {
    let mut rows = rows(&IDS, 2);
    rows.push(row("a<b&c", Some(0), -10.0, 2.0));
    let svg = picture(&rows, "SmolLM2 & co");
    let failing = rows.iter().filter(|r| !r.pass).count();
    assert!(failing > 0);
    // Each failing checkpoint outlined in both panels.
    assert_eq!(svg.matches(r#"stroke="red""#).count(), 2 * failing);
    for text in [
        ">SmolLM2 &amp; co<",
        ">a&lt;b&amp;c<",
        "NMSE, dB",
        "worst |diff| as % of its tolerance",
        ">-160 dB<",
        ">-20 dB<",
        ">0.01%<",
        ">1000%<",
        ">100%<",
        ">-inf<",
        ">nan<",
        ">1e14%<",
        ">1e6%<",
        "<title>02_q layer 1: NMSE",
        "<title>02_q layer 1: the worst element is",
    ] {
        assert!(svg.contains(text), "{text} missing");
    }
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\""));
    for absent in [
        "<script",
        "href",
        "url(",
        "@import",
        "<image",
        "<foreignObject",
    ] {
        assert!(!svg.contains(absent), "{absent}");
    }
    assert_eq!(percent(0.0), "0%");
    assert_eq!(percent(99.994), "9999%");
    assert_eq!(percent(99.996), "1e4%");
    assert_eq!(percent(f64::INFINITY), "inf");
}
