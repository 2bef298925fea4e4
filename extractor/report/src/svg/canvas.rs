//! The picture as placed, before it is written: boxes and texts where
//! they are drawn. The layout fills it; render writes it.

use super::geometry::{ascent, line_height, wrap, Anchor, Rect, Text};

/// Between lines of a wrapped title, px.
const LINE_GAP: f64 = 2.0;

/// How a box is outlined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stroke {
    None,
    /// A cell among others.
    White,
    /// A checkpoint over its tolerance: drawn inside its cell, over the others.
    Red,
    /// A thin line inside a red one, that parts it from a red cell.
    Light,
}

/// A filled box: a cell, a piece of a colour bar, a tick.
#[derive(Clone, Debug)]
pub(super) struct Shape {
    pub(super) rect: Rect,
    pub(super) fill: String,
    pub(super) stroke: Stroke,
    pub(super) hover: Option<String>,
}

/// The picture as placed: its size, its boxes and its texts, each where it
/// is drawn; and each panel's grid of cells.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    pub(super) width: f64,
    pub(super) height: f64,
    pub(super) shapes: Vec<Shape>,
    pub(super) texts: Vec<Text>,
    pub(super) grids: Vec<Rect>,
}

impl Layout {
    /// Lines of `text` from `top`, wrapped at `max`; returns the next top.
    pub(super) fn lines(
        &mut self,
        text: &str,
        x: f64,
        top: f64,
        size: f64,
        bold: bool,
        max: f64,
    ) -> f64 {
        let mut y = top;
        for line in wrap(text, size, bold, max) {
            self.text(x, y, Anchor::Start, size, bold, line);
            y += line_height(size) + LINE_GAP;
        }
        y - LINE_GAP
    }

    /// A line of text whose box starts at `top`.
    pub(super) fn text(
        &mut self,
        x: f64,
        top: f64,
        anchor: Anchor,
        size: f64,
        bold: bool,
        text: String,
    ) {
        self.texts.push(Text {
            x,
            y: top + ascent(size),
            anchor,
            size,
            bold,
            text,
            hover: None,
            fill: None,
        });
    }

    pub(super) fn shape(
        &mut self,
        rect: Rect,
        fill: String,
        stroke: Stroke,
        hover: Option<String>,
    ) {
        self.shapes.push(Shape {
            rect,
            fill,
            stroke,
            hover,
        });
    }
}
