//! `errors.svg`: two heat maps, checkpoints x layers, of how far each
//! checkpoint is from the f64 reference.
//!
//! The picture is laid out from what it holds, not from fixed offsets: every
//! text is measured (`geometry::width`, a conservative estimate for the
//! sans-serif fonts browsers use), titles are wrapped to the width under
//! them, long checkpoint names are shortened (the whole name on hover), the
//! panels stand side by side while that stays narrow enough and are stacked
//! otherwise, colour-bar labels are only placed where they meet no other,
//! and the picture's size is that of what it holds. `layout` returns the
//! placed boxes, so the tests check the geometry itself.

mod canvas;
pub mod geometry;
mod render;
mod scales;

use geometry::{ascent, line_height, shorten, width, Anchor, Rect, Text};

use crate::findings::Row;
use crate::text::layer_text;
use canvas::{Layout, Stroke};
use render::render;
use scales::{colour, dark, panels, rgb, Panel, Value};

/// Two heat maps, checkpoints x layers: NMSE (dB) against f64, and the worst
/// element's share of its tolerance (>= 1 fails). Checkpoints over their
/// tolerance are outlined red. A self-contained SVG: no script, no font or
/// anything else to fetch.
pub fn picture(rows: &[Row], title: &str) -> String {
    render(&layout(rows, title))
}

/// Sizes, in px. Text sizes: the picture's title, a panel's title, row
/// labels and captions, and what is in and around the cells.
const TITLE: f64 = 14.0;
const PANEL_TITLE: f64 = 12.0;
const LABEL: f64 = 11.0;
const SMALL: f64 = 10.0;
const MARGIN: f64 = 12.0;
/// A cell is at least this wide, and this much wider than what it shows.
const MIN_CELL_W: f64 = 26.0;
const CELL_PAD: f64 = 12.0;
const CELL_H: f64 = 22.0;
/// Checkpoint names longer than this are shortened with an ellipsis.
const MAX_LABEL_W: f64 = 260.0;
const LABEL_GAP: f64 = 6.0;
/// A panel is at least this wide (its title wraps within it, its colour bar fills it).
const MIN_PANEL_W: f64 = 300.0;
const MAX_BAR_W: f64 = 480.0;
const BAR_H: f64 = 10.0;
const PANEL_GAP: f64 = 48.0;
/// Side by side up to this width, stacked beyond.
const MAX_SIDE_BY_SIDE: f64 = 1300.0;
/// The picture's title wraps at no less than this.
const MIN_TITLE_W: f64 = 360.0;

/// A panel's cells, [checkpoint][layer]: the value, and whether the
/// checkpoint passes; none where the rows hold no such pair.
type Cells = Vec<Vec<Option<(Value, bool)>>>;

/// The checkpoints (in the rows' order) and the layers (sorted) the rows hold.
fn axes(rows: &[Row]) -> (Vec<&str>, Vec<Option<u32>>) {
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
    (ids, layers)
}

/// One panel's cells: per checkpoint (row) and layer (column), its value
/// and verdict, or nothing where the run has no such checkpoint.
fn panel_cells(rows: &[Row], p: &Panel, ids: &[&str], layers: &[Option<u32>]) -> Cells {
    ids.iter()
        .map(|id| {
            layers
                .iter()
                .map(|l| {
                    rows.iter()
                        .find(|r| r.id == *id && r.layer == *l)
                        .map(|r| ((p.value)(r), r.pass))
                })
                .collect()
        })
        .collect()
}

/// Each row's label, and the whole name on hover where it is shortened.
fn row_labels(ids: &[&str]) -> Vec<(String, Option<String>)> {
    ids.iter()
        .map(|id| {
            let short = shorten(id, LABEL, false, MAX_LABEL_W);
            let hover = (short != *id).then(|| id.to_string());
            (short, hover)
        })
        .collect()
}

/// Places everything the picture shows; see the module's doc.
pub(crate) fn layout(rows: &[Row], title: &str) -> Layout {
    let (ids, layers) = axes(rows);
    let panels = panels();
    let cells: Vec<Cells> = panels
        .iter()
        .map(|p| panel_cells(rows, p, &ids, &layers))
        .collect();
    // One cell width for both panels, so stacked panels' columns line up.
    let cw = cells
        .iter()
        .flatten()
        .flatten()
        .flatten()
        .map(|(v, _)| width(&v.text, SMALL, false))
        .chain(layers.iter().map(|l| width(&layer_text(*l), SMALL, false)))
        .fold(0.0, f64::max);
    let cw = (cw + CELL_PAD).max(MIN_CELL_W).ceil();
    let labels = row_labels(&ids);
    let label_w = labels
        .iter()
        .map(|(l, _)| width(l, LABEL, false))
        .fold(0.0, f64::max);
    let grid_w = cw * layers.len() as f64;
    let panel_w = grid_w.max(MIN_PANEL_W);
    let grid_x = MARGIN + label_w + LABEL_GAP;
    let side_by_side = grid_x + 2.0 * panel_w + PANEL_GAP + MARGIN <= MAX_SIDE_BY_SIDE;
    let content_right = grid_x
        + panel_w
        + if side_by_side {
            PANEL_GAP + panel_w
        } else {
            0.0
        };

    let mut lay = Layout::default();
    let title_w = (content_right - MARGIN).max(MIN_TITLE_W);
    let top = lay.lines(title, MARGIN, MARGIN, TITLE, true, title_w) + 10.0;
    if ids.is_empty() {
        let bottom = lay.lines("No checkpoint to show.", MARGIN, top, LABEL, false, title_w);
        return lay.sized(bottom);
    }
    let grid = Grid {
        cw,
        panel_w,
        top,
        layers: &layers,
    };
    let top = place_panels(
        &mut lay,
        &panels,
        &cells,
        &labels,
        grid_x,
        side_by_side,
        grid,
    );
    let bottom = lay.lines(
        "Outlined red: a checkpoint over its tolerance (an element outside atol + rtol|ref|, or NMSE above the manifest's).",
        MARGIN,
        top + 8.0,
        LABEL,
        false,
        title_w,
    );
    lay.sized(bottom)
}

/// Both panels under their titles, from `g.top`: side by side (grids level,
/// below the taller title) or one above the other. Returns their bottom.
fn place_panels(
    lay: &mut Layout,
    panels: &[Panel; 2],
    cells: &[Cells],
    labels: &[(String, Option<String>)],
    grid_x: f64,
    side_by_side: bool,
    g: Grid<'_>,
) -> f64 {
    let (panel_w, mut top) = (g.panel_w, g.top);
    if side_by_side {
        let x1 = grid_x + panel_w + PANEL_GAP;
        let t0 = lay.lines(panels[0].title, grid_x, top, PANEL_TITLE, false, panel_w);
        let t1 = lay.lines(panels[1].title, x1, top, PANEL_TITLE, false, panel_w);
        let grid = Grid {
            top: t0.max(t1) + HEADER_H,
            ..g
        };
        let b0 = panel(lay, &panels[0], &cells[0], Some(labels), grid_x, &grid);
        let b1 = panel(lay, &panels[1], &cells[1], None, x1, &grid);
        return b0.max(b1);
    }
    for (p, cells) in panels.iter().zip(cells) {
        let grid = Grid {
            top: lay.lines(p.title, grid_x, top, PANEL_TITLE, false, panel_w) + HEADER_H,
            ..g
        };
        top = panel(lay, p, cells, Some(labels), grid_x, &grid) + 16.0;
    }
    top
}

/// From a panel title's last line to its grid: the row of layer numbers
/// (10 px text: 13 px high).
const HEADER_H: f64 = 4.0 + 13.0 + 3.0;

/// What the panels share: the cells' width, a panel's width, the grids' top
/// and the columns.
#[derive(Clone, Copy)]
struct Grid<'a> {
    cw: f64,
    panel_w: f64,
    top: f64,
    layers: &'a [Option<u32>],
}

impl Layout {
    /// The picture's size: what it holds, and a margin.
    fn sized(mut self, bottom: f64) -> Layout {
        let boxes = self
            .texts
            .iter()
            .map(Text::bbox)
            .chain(self.shapes.iter().map(|s| s.rect));
        let (right, low) = boxes.fold((0f64, bottom), |(r, b), x| {
            (r.max(x.right()), b.max(x.bottom()))
        });
        self.width = (right + MARGIN).ceil();
        self.height = (low + MARGIN).ceil();
        self
    }
}

/// One panel under its title: the layer numbers, the grid at `x0`, the row
/// labels left of it where given, the axis caption and the colour bar.
/// Returns the panel's bottom.
fn panel(
    lay: &mut Layout,
    p: &Panel,
    cells: &Cells,
    labels: Option<&[(String, Option<String>)]>,
    x0: f64,
    g: &Grid<'_>,
) -> f64 {
    let Grid {
        cw,
        panel_w,
        top: grid_top,
        layers,
    } = *g;
    let header_top = grid_top - 3.0 - line_height(SMALL);
    for (j, l) in layers.iter().enumerate() {
        let x = x0 + cw * (j as f64 + 0.5);
        lay.text(x, header_top, Anchor::Middle, SMALL, false, layer_text(*l));
    }
    let outlines = grid_cells(lay, cells, labels, x0, g);
    outline(lay, outlines);
    let grid = Rect {
        x: x0,
        y: grid_top,
        w: cw * layers.len() as f64,
        h: CELL_H * cells.len() as f64,
    };
    lay.grids.push(grid);
    // The axis caption under the grid's middle, within the panel.
    let caption = "layer";
    let half = width(caption, LABEL, false) / 2.0;
    let middle = (x0 + grid.w / 2.0).clamp(x0 + half, x0 + panel_w - half);
    let y = grid.bottom() + 5.0;
    lay.text(middle, y, Anchor::Middle, LABEL, false, caption.into());
    colour_bar(
        lay,
        p,
        x0,
        y + line_height(LABEL) + 8.0,
        grid.w.clamp(MIN_PANEL_W, MAX_BAR_W),
    )
}

/// The row labels (where given) and the cells of one grid at `x0`; the
/// rectangles of the failing cells, to outline last (over their neighbours).
fn grid_cells(
    lay: &mut Layout,
    cells: &Cells,
    labels: Option<&[(String, Option<String>)]>,
    x0: f64,
    g: &Grid<'_>,
) -> Vec<Rect> {
    let (cw, grid_top) = (g.cw, g.top);
    let text_top = |size: f64, y: f64| y + (CELL_H - line_height(size)) / 2.0;
    let mut outlines = Vec::new();
    for (i, row) in cells.iter().enumerate() {
        let y = grid_top + CELL_H * i as f64;
        if let Some(labels) = labels {
            let (label, hover) = labels[i].clone();
            lay.text(
                x0 - LABEL_GAP,
                text_top(LABEL, y),
                Anchor::End,
                LABEL,
                false,
                label,
            );
            if let Some(t) = lay.texts.last_mut() {
                t.hover = hover;
            }
        }
        for (j, cell) in row.iter().enumerate() {
            let Some((v, pass)) = cell else { continue };
            let rect = Rect {
                x: x0 + cw * j as f64,
                y,
                w: cw,
                h: CELL_H,
            };
            let fill = colour(v.scale);
            lay.shape(rect, rgb(fill), Stroke::White, Some(v.hover.clone()));
            if !pass {
                outlines.push(Rect {
                    x: rect.x + 1.5,
                    y: rect.y + 1.5,
                    w: rect.w - 3.0,
                    h: rect.h - 3.0,
                });
            }
            let text = v.text.clone();
            lay.text(
                rect.x + cw / 2.0,
                text_top(SMALL, y),
                Anchor::Middle,
                SMALL,
                false,
                text,
            );
            if let Some(t) = lay.texts.last_mut() {
                t.fill = dark(fill).then_some("white");
            }
        }
    }
    outlines
}

/// A red outline with a light inner line, so it shows on red cells too.
fn outline(lay: &mut Layout, rects: Vec<Rect>) {
    for rect in rects {
        lay.shape(rect, "none".into(), Stroke::Red, None);
        let inner = Rect {
            x: rect.x + 2.0,
            y: rect.y + 2.0,
            w: rect.w - 4.0,
            h: rect.h - 4.0,
        };
        lay.shape(inner, "none".into(), Stroke::Light, None);
    }
}

/// The colour bar at (`x0`, `top`), `w` wide, and as many of its labels as
/// fit without meeting another: the panel's first ticks first, the ends
/// aligned with the bar's ends. Returns its bottom.
fn colour_bar(lay: &mut Layout, p: &Panel, x0: f64, top: f64, w: f64) -> f64 {
    const STEPS: usize = 40;
    for k in 0..STEPS {
        let x = x0 + w * k as f64 / STEPS as f64;
        // Each step overlaps the next by half a pixel: no seams.
        let rect = Rect {
            x,
            y: top,
            w: (w / STEPS as f64 + 0.5).min(x0 + w - x),
            h: BAR_H,
        };
        lay.shape(
            rect,
            rgb(colour(k as f64 / (STEPS - 1) as f64)),
            Stroke::None,
            None,
        );
    }
    let label_top = top + BAR_H + 5.0;
    let mut placed: Vec<Rect> = Vec::new();
    for &(at, label) in p.ticks {
        let x = x0 + at * w;
        let anchor = match at {
            a if a <= 0.0 => Anchor::Start,
            a if a >= 1.0 => Anchor::End,
            _ => Anchor::Middle,
        };
        let text = Text {
            x,
            y: label_top + ascent(SMALL),
            anchor,
            size: SMALL,
            bold: false,
            text: label.into(),
            hover: None,
            fill: None,
        };
        let b = text.bbox();
        if b.x < x0 || b.right() > x0 + w || placed.iter().any(|o| o.grown(4.0).overlaps(&b)) {
            continue;
        }
        placed.push(b);
        lay.texts.push(text);
        let tick = Rect {
            x: (x - 0.5).clamp(x0, x0 + w - 1.0),
            y: top + BAR_H,
            w: 1.0,
            h: 3.0,
        };
        lay.shape(tick, "#444".into(), Stroke::None, None);
    }
    label_top + line_height(SMALL)
}

#[cfg(test)]
mod tests;
