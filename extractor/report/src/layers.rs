//! `layers.svg` (`compare --replay-layers`): per layer, the worst NMSE
//! against f64 of the reference's own chain of layers (accumulated: the
//! error a layer adds and inherits) and of the layer fed llama.cpp's input
//! (local: the error it adds), as two lines over the layers.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One layer's two errors, in dB.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerPoint {
    pub layer: u32,
    pub accumulated_db: f64,
    pub local_db: f64,
}

const ACCUMULATED: RGBColor = RGBColor(200, 60, 40);
const LOCAL: RGBColor = RGBColor(30, 90, 180);

/// The chart as a self-contained SVG.
pub fn picture(points: &[LayerPoint], title: &str) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let finite = |v: f64| v.is_finite().then_some(v);
        let values: Vec<f64> = points
            .iter()
            .flat_map(|p| [finite(p.accumulated_db), finite(p.local_db)])
            .flatten()
            .collect();
        let low = values
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(-20.0)
            .floor()
            - 5.0;
        let high = values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(low + 10.0)
            .ceil()
            + 5.0;
        let last = points.iter().map(|p| p.layer).max().unwrap_or(0).max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0u32..last, low..high)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("layer")
            .y_desc("worst NMSE against f64 (dB)")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        draw_line(&mut chart, points, true)?;
        draw_line(&mut chart, points, false)?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(svg)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordu32, plotters::coord::types::RangedCoordf64>,
>;

/// One series, accumulated or local: its line, a marker per layer, its legend.
fn draw_line(chart: &mut Chart<'_, '_>, points: &[LayerPoint], accumulated: bool) -> Result<()> {
    let (label, colour) = match accumulated {
        true => ("accumulated: the reference's own chain", ACCUMULATED),
        false => ("local: the layer fed llama.cpp's input", LOCAL),
    };
    let line: Vec<(u32, f64)> = points
        .iter()
        .map(|p| {
            (
                p.layer,
                if accumulated {
                    p.accumulated_db
                } else {
                    p.local_db
                },
            )
        })
        .filter(|(_, v)| v.is_finite())
        .collect();
    chart
        .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
        .map_err(|e| anyhow!("{e}"))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
    chart
        .draw_series(
            line.into_iter()
                .map(|xy| Circle::new(xy, 3, colour.filled())),
        )
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_lines_and_their_legend_are_drawn() {
        let points: Vec<LayerPoint> = (0..4)
            .map(|l| LayerPoint {
                layer: l,
                accumulated_db: -60.0 + 5.0 * l as f64,
                local_db: -65.0,
            })
            .collect();
        let svg = picture(&points, "llama 7B").unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("llama 7B"));
        assert!(svg.contains("accumulated: the reference") && svg.contains("local: the layer fed"));
        // Each series: its line and its legend's, in its colour, and a marker per point.
        for colour in ["#C83C28", "#1E5AB4"] {
            let lines = svg
                .lines()
                .filter(|l| l.starts_with("<polyline") && l.contains(colour))
                .count();
            assert_eq!(lines, 2, "{colour}");
        }
        assert_eq!(svg.matches("<circle").count(), 8);
    }
}
