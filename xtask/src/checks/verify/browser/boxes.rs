//! Whether the pictures' texts can be read, as the browser lays them out: no
//! two texts of a picture overlap, and none leaves its picture (where the
//! SVG's viewport would cut it).
//!
//! report.html has no script and must keep none, so the boxes are measured
//! on a copy of it, the harness, with a script added that asks Chromium for
//! the box of every `<text>` of every `<svg>` and writes them into the page
//! as JSON; `--dump-dom` gives that back. The judging is [`problems`], pure.

use anyhow::{bail, Context, Result};
/// A box in CSS pixels, relative to its picture's top-left corner.
pub use llorch_checkpoint_report::svg::geometry::Rect;
use serde::Deserialize;

/// One picture as Chromium laid it out: its size, and its texts' boxes.
#[derive(Debug, Deserialize)]
pub struct Picture {
    pub w: f64,
    pub h: f64,
    pub texts: Vec<Boxed>,
}

/// A text and its box.
#[derive(Debug, Deserialize)]
pub struct Boxed {
    pub text: String,
    #[serde(flatten)]
    pub rect: Rect,
}

/// How much two boxes may share, or a box stick out, before it counts (px):
/// more than rounding, less than any glyph.
const SLACK: f64 = 0.5;

/// What is wrong with a picture `w` x `h` whose texts have the boxes
/// `texts`: the texts that reach outside it, and the pairs (lower index
/// first, sorted) whose boxes share an area. Empty boxes (no glyph) count
/// for neither.
pub fn problems(w: f64, h: f64, texts: &[Rect]) -> (Vec<usize>, Vec<(usize, usize)>) {
    let outside = texts
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            !r.is_empty()
                && (r.x < -SLACK || r.y < -SLACK || r.right() > w + SLACK || r.bottom() > h + SLACK)
        })
        .map(|(i, _)| i)
        .collect();
    // Sweep left to right: a box meets only those that start before it ends.
    let mut order: Vec<usize> = (0..texts.len()).filter(|&i| !texts[i].is_empty()).collect();
    order.sort_by(|&a, &b| texts[a].x.total_cmp(&texts[b].x));
    let mut pairs = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let a = texts[i];
        for &j in &order[k + 1..] {
            let b = texts[j];
            if b.x >= a.right() - SLACK {
                break;
            }
            let across = a.right().min(b.right()) - a.x.max(b.x);
            let down = a.bottom().min(b.bottom()) - a.y.max(b.y);
            if across > SLACK && down > SLACK {
                pairs.push((i.min(j), i.max(j)));
            }
        }
    }
    pairs.sort_unstable();
    (outside, pairs)
}

/// Where the harness writes the boxes.
const OUT: &str = "llorch-text-boxes";

/// The harness: `page` with a script before its end that measures every
/// picture's texts and writes them, as JSON, into a `<pre id="llorch-text-boxes">`.
/// Non-ASCII and `<>&` are written as `\u` escapes, so the DOM Chromium dumps
/// holds the JSON as it was written.
pub fn harness(page: &str) -> Result<String> {
    const SCRIPT: &str = r#"<script>
(() => {
  const pictures = [];
  for (const svg of document.querySelectorAll('svg')) {
    if (svg.parentElement.closest('svg')) continue;
    const p = svg.getBoundingClientRect();
    const texts = [];
    for (const t of svg.querySelectorAll('text')) {
      const r = t.getBoundingClientRect();
      const shown = t.cloneNode(true);
      shown.querySelectorAll('title').forEach(e => e.remove());
      texts.push({text: shown.textContent, x: r.left - p.left, y: r.top - p.top, w: r.width, h: r.height});
    }
    pictures.push({w: p.width, h: p.height, texts});
  }
  const out = document.createElement('pre');
  out.id = 'OUT';
  out.textContent = JSON.stringify(pictures).replace(/[<>&\u007f-\uffff]/g,
    c => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
  document.body.appendChild(out);
})();
</script>"#;
    let end = page
        .rfind("</body>")
        .context("report.html has no </body> to measure its pictures before")?;
    Ok(format!(
        "{}{}{}",
        &page[..end],
        SCRIPT.replace("'OUT'", &format!("'{OUT}'")),
        &page[end..]
    ))
}

/// The pictures the harness measured, from the DOM Chromium dumped.
pub fn parse(dom: &str) -> Result<Vec<Picture>> {
    let open = format!("<pre id=\"{OUT}\">");
    let Some(start) = dom.find(&open) else {
        bail!("the harness wrote no boxes: its script did not run to its end");
    };
    let rest = &dom[start + open.len()..];
    let json = &rest[..rest
        .find("</pre>")
        .context("the harness's boxes do not end")?];
    serde_json::from_str(json).context("the harness's boxes are not the JSON it writes")
}

/// What a reader would see wrong in `pictures`, each line naming the
/// picture and the texts; empty when every text fits apart.
pub fn findings(pictures: &[Picture]) -> Vec<String> {
    const AT_MOST: usize = 8;
    let mut out = Vec::new();
    for (p, picture) in pictures.iter().enumerate() {
        let rects: Vec<Rect> = picture.texts.iter().map(|t| t.rect).collect();
        let (outside, pairs) = problems(picture.w, picture.h, &rects);
        let name = |i: usize| {
            let t = &picture.texts[i];
            let r = t.rect;
            format!(
                "{:?} at x {:.1}..{:.1}, y {:.1}..{:.1}",
                t.text,
                r.x,
                r.right(),
                r.y,
                r.bottom()
            )
        };
        let which = format!(
            "picture {} of {} ({:.0} x {:.0}{})",
            p + 1,
            pictures.len(),
            picture.w,
            picture.h,
            picture
                .texts
                .first()
                .map(|t| format!(", first text {:?}", t.text))
                .unwrap_or_default()
        );
        for i in outside.iter().take(AT_MOST) {
            out.push(format!("{which}: {} leaves the picture", name(*i)));
        }
        for (i, j) in pairs.iter().take(AT_MOST) {
            out.push(format!("{which}: {} overlaps {}", name(*i), name(*j)));
        }
        let more = outside.len().saturating_sub(AT_MOST) + pairs.len().saturating_sub(AT_MOST);
        if more > 0 {
            out.push(format!("{which}: and {more} more"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x: f64, y: f64, w: f64, h: f64) -> Rect {
        Rect { x, y, w, h }
    }

    #[test]
    fn overlapping_and_outside_texts_are_named() {
        let texts = [
            r(10.0, 10.0, 40.0, 12.0),  // 0
            r(45.0, 15.0, 30.0, 12.0),  // 1: overlaps 0
            r(50.0, 10.0, 20.0, 12.0),  // 2: touches 0's right edge, overlaps 1
            r(10.0, 22.0, 30.0, 12.0),  // 3: right under 0, touching
            r(180.0, 5.0, 30.0, 12.0),  // 4: past the right edge
            r(-3.0, 50.0, 10.0, 12.0),  // 5: past the left edge
            r(20.0, 95.0, 10.0, 12.0),  // 6: past the bottom
            r(0.0, 0.0, 0.0, 0.0),      // 7: empty, anywhere
            r(500.0, 500.0, 0.0, 12.0), // 8: empty too
            r(10.3, 10.3, 39.4, 11.4),  // 9: within 0
        ];
        let (outside, pairs) = problems(200.0, 100.0, &texts);
        assert_eq!(outside, [4, 5, 6]);
        assert_eq!(pairs, [(0, 1), (0, 9), (1, 2), (1, 9)]);
    }

    #[test]
    fn rounding_is_no_overlap() {
        // Boxes sharing 0.4 px, a box 0.4 px past the edge: not a finding.
        let texts = [
            r(0.0, 0.0, 50.0, 12.0),
            r(49.6, 0.0, 50.0, 12.0),
            r(0.0, 11.6, 50.0, 12.0),
        ];
        let (outside, pairs) = problems(100.4, 23.9, &texts);
        assert!(
            outside.is_empty() && pairs.is_empty(),
            "{outside:?} {pairs:?}"
        );
        assert_eq!(problems(100.0, 23.0, &texts).0, [2]);
    }

    #[test]
    fn many_boxes_in_a_row_are_swept_not_compared_all() {
        // A grid of 60 x 40 texts, apart; then one across a whole row.
        let mut texts: Vec<Rect> = (0..2400)
            .map(|k| r((k % 60) as f64 * 30.0, (k / 60) as f64 * 20.0, 28.0, 13.0))
            .collect();
        assert_eq!(problems(1800.0, 800.0, &texts), (vec![], vec![]));
        texts.push(r(0.0, 25.0, 1800.0, 5.0));
        let (_, pairs) = problems(1800.0, 800.0, &texts);
        assert_eq!(pairs.len(), 60);
        assert!(pairs
            .iter()
            .all(|&(a, b)| (60..120).contains(&a) && b == 2400));
    }

    #[test]
    fn the_harness_adds_a_script_and_reads_back_its_json() {
        let page = "<html><body><svg><text>a</text></svg></body></html>";
        let h = harness(page).unwrap();
        assert!(h.starts_with("<html><body><svg><text>a</text></svg><script>"));
        assert!(h.ends_with("</script></body></html>") && h.contains("'llorch-text-boxes'"));
        let dom = r#"<html><body><pre id="llorch-text-boxes">[{"w":100,"h":50,"texts":[{"text":"\u003cq\u2026","x":1,"y":2,"w":3,"h":4}]}]</pre></body></html>"#;
        let pictures = parse(dom).unwrap();
        assert_eq!(pictures.len(), 1);
        assert_eq!(pictures[0].texts[0].text, "<q…");
        assert_eq!(pictures[0].texts[0].rect, r(1.0, 2.0, 3.0, 4.0));
        assert!(findings(&pictures).is_empty());
        let bad: Vec<Picture> = serde_json::from_str(
            r#"[{"w":100,"h":50,"texts":[{"text":"-4","x":90,"y":2,"w":30,"h":12},{"text":"-20","x":95,"y":2,"w":20,"h":12}]}]"#,
        )
        .unwrap();
        let f = findings(&bad);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0]
            .starts_with("picture 1 of 1 (100 x 50, first text \"-4\"): \"-4\" at x 90.0..120.0"));
        assert!(f[2].contains("\"-4\" at x 90.0..120.0, y 2.0..14.0 overlaps \"-20\""));
        assert!(parse("<html></html>").is_err());
    }
}
