//! The placed picture written as SVG text.

use std::fmt::Write as _;

use super::canvas::{Layout, Stroke};
use super::geometry::Anchor;
use crate::text::xml;

/// A coordinate as written: at most two decimals.
fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub(super) fn render(lay: &Layout) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        num(lay.width),
        num(lay.height)
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for shape in &lay.shapes {
        let r = shape.rect;
        let stroke = match shape.stroke {
            Stroke::None => "",
            Stroke::White => r#" stroke="white""#,
            Stroke::Red => r#" stroke="red" stroke-width="3" pointer-events="none""#,
            Stroke::Light => r#" stroke="white" stroke-width="1" pointer-events="none""#,
        };
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"{stroke}"#,
            num(r.x),
            num(r.y),
            num(r.w),
            num(r.h),
            shape.fill
        );
        match &shape.hover {
            Some(h) => {
                let _ = writeln!(s, "><title>{}</title></rect>", xml(h));
            }
            None => s.push_str("/>\n"),
        }
    }
    for t in &lay.texts {
        let anchor = match t.anchor {
            Anchor::Start => "",
            Anchor::Middle => r#" text-anchor="middle""#,
            Anchor::End => r#" text-anchor="end""#,
        };
        let weight = if t.bold { r#" font-weight="bold""# } else { "" };
        // Texts without a hover of their own leave it to the cell under them.
        let (events, hover) = match &t.hover {
            Some(h) => (String::new(), format!("<title>{}</title>", xml(h))),
            None => (r#" pointer-events="none""#.to_string(), String::new()),
        };
        let fill = t
            .fill
            .map(|f| format!(r#" fill="{f}""#))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}"{anchor} font-size="{}"{weight}{fill}{events}>{}{hover}</text>"#,
            num(t.x),
            num(t.y),
            num(t.size),
            xml(&t.text)
        );
    }
    s.push_str("</svg>\n");
    s
}
