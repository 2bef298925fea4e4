//! What a picture's layout measures: rectangles, and a conservative estimate
//! of the box a line of sans-serif text takes, so that texts can be placed
//! apart without a browser to ask.

/// An axis-aligned box: top-left corner and size, in SVG user units (px,
/// as a browser measures them too).
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    pub fn right(&self) -> f64 {
        self.x + self.w
    }

    pub fn bottom(&self) -> f64 {
        self.y + self.h
    }

    /// No area: no glyph to see.
    pub fn is_empty(&self) -> bool {
        self.w <= 0.0 || self.h <= 0.0
    }

    /// Whether the two share an area (touching edges do not).
    pub fn overlaps(&self, o: &Rect) -> bool {
        self.x < o.right() && o.x < self.right() && self.y < o.bottom() && o.y < self.bottom()
    }

    /// Whether `o` lies within this box (edges included).
    #[cfg(test)]
    pub fn contains(&self, o: &Rect) -> bool {
        o.x >= self.x && o.y >= self.y && o.right() <= self.right() && o.bottom() <= self.bottom()
    }

    /// This box grown by `d` on every side.
    pub fn grown(&self, d: f64) -> Rect {
        Rect {
            x: self.x - d,
            y: self.y - d,
            w: self.w + 2.0 * d,
            h: self.h + 2.0 * d,
        }
    }
}

/// Where a text's x is: its start, its middle or its end (SVG `text-anchor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

/// One line of text as placed: `x` per `anchor`, `y` its baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct Text {
    pub x: f64,
    pub y: f64,
    pub anchor: Anchor,
    pub size: f64,
    pub bold: bool,
    pub text: String,
    /// What a reader sees on hovering (SVG `<title>`), e.g. a name shortened.
    pub hover: Option<String>,
    /// Its colour, where not black.
    pub fill: Option<&'static str>,
}

impl Text {
    /// The box the line takes, estimated from above (see [`width`]).
    pub fn bbox(&self) -> Rect {
        let w = width(&self.text, self.size, self.bold);
        let x = match self.anchor {
            Anchor::Start => self.x,
            Anchor::Middle => self.x - w / 2.0,
            Anchor::End => self.x - w,
        };
        Rect {
            x,
            y: self.y - ascent(self.size),
            w,
            h: line_height(self.size),
        }
    }
}

/// A line's extent above and below its baseline, in em. Chromium gives a
/// text's box the font's ascent and descent in whole pixels: DejaVu Sans
/// 0.93 and 0.24 em, Liberation Sans (Arial's metrics) 0.91 and 0.21.
const ASCENT: f64 = 0.95;
const DESCENT: f64 = 0.25;

/// How far a line of text at `size` reaches above its baseline.
pub fn ascent(size: f64) -> f64 {
    (ASCENT * size).ceil()
}

/// How high a line of text at `size` is: its box, and the least distance
/// from one line's baseline to the next.
pub fn line_height(size: f64) -> f64 {
    ascent(size) + (DESCENT * size).ceil()
}

/// Advance widths of ASCII 32..=126 in hundredths of an em, DejaVu Sans
/// (regular, then bold) as Chromium measures them, rounded up. DejaVu Sans
/// is the widest of the usual defaults for `sans-serif` (Liberation Sans,
/// Arial and Helvetica are narrower), so a text is at most this wide
/// wherever the picture is opened.
const REGULAR: [u8; 95] = [
    32, 40, 46, 84, 64, 95, 78, 27, 39, 39, 50, 84, 32, 36, 32, 34, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 34, 34, 84, 84, 84, 53, 100, 70, 69, 70, 77, 63, 58, 77, 75, 29, 29, 66, 57, 86, 75,
    79, 60, 79, 69, 63, 60, 73, 68, 99, 69, 61, 69, 39, 34, 39, 84, 50, 50, 61, 63, 56, 63, 62, 34,
    63, 63, 29, 29, 58, 29, 97, 63, 61, 63, 63, 40, 52, 39, 63, 59, 82, 59, 59, 52, 64, 34, 64, 84,
];
const BOLD: [u8; 95] = [
    35, 46, 52, 84, 70, 100, 87, 31, 46, 46, 52, 84, 38, 42, 38, 37, 70, 70, 70, 70, 70, 70, 70,
    70, 70, 70, 40, 40, 84, 84, 84, 58, 100, 77, 76, 73, 83, 68, 68, 82, 84, 37, 37, 77, 64, 100,
    84, 85, 73, 85, 77, 70, 69, 81, 77, 111, 77, 72, 73, 46, 37, 46, 84, 50, 50, 67, 72, 59, 72,
    68, 41, 72, 71, 34, 34, 67, 34, 104, 71, 69, 72, 72, 49, 60, 48, 71, 65, 92, 65, 65, 58, 71,
    37, 71, 84,
];

/// The width of `text` at `size` px: the table's widths, anything beyond
/// ASCII as wide as its widest glyph (1.2 em), and 5% to spare.
pub fn width(text: &str, size: f64, bold: bool) -> f64 {
    let table = if bold { &BOLD } else { &REGULAR };
    let em: f64 = text
        .chars()
        .map(|c| match c as u32 {
            code @ 32..=126 => f64::from(table[code as usize - 32]) / 100.0,
            _ => 1.2,
        })
        .sum();
    1.05 * em * size
}

/// `text` broken into lines no wider than `max` at `size`: at spaces where
/// it can (not at no-break spaces), inside a word longer than a line where
/// it must.
pub fn wrap(text: &str, size: f64, bold: bool, max: f64) -> Vec<String> {
    let fits = |s: &str| width(s, size, bold) <= max;
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let joined = if line.is_empty() {
            word.to_string()
        } else {
            format!("{line} {word}")
        };
        if fits(&joined) {
            line = joined;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        // The word alone; cut it where it is wider than a line.
        for c in word.chars() {
            let mut longer = line.clone();
            longer.push(c);
            if !line.is_empty() && !fits(&longer) {
                lines.push(std::mem::take(&mut line));
            }
            line.push(c);
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// `text` as is where it fits in `max`, else its start and an ellipsis.
pub fn shorten(text: &str, size: f64, bold: bool, max: f64) -> String {
    if width(text, size, bold) <= max {
        return text.to_string();
    }
    let mut s = String::new();
    for c in text.chars() {
        let mut longer = s.clone();
        longer.push(c);
        longer.push('…');
        if width(&longer, size, bold) > max {
            break;
        }
        s.push(c);
    }
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_are_dejavu_sans_or_more() {
        // Chromium: "01_attn_norm" in DejaVu Sans 11px is 76.1 px wide (in
        // Liberation Sans 67.9), in DejaVu Sans Bold 14px 107.4.
        let w = width("01_attn_norm", 11.0, false);
        assert!((76.1..82.0).contains(&w), "{w}");
        let w = width("01_attn_norm", 14.0, true);
        assert!((107.4..115.0).contains(&w), "{w}");
        assert!(width("≥", 10.0, false) >= 10.0);
        let t = Text {
            x: 100.0,
            y: 50.0,
            anchor: Anchor::End,
            size: 10.0,
            bold: false,
            text: "ab".into(),
            hover: None,
            fill: None,
        };
        let b = t.bbox();
        // At 10px: 10 px above the baseline, 3 below (Chromium, DejaVu Sans 11px: 10 and 3).
        assert_eq!((b.right(), b.y, b.bottom()), (100.0, 40.0, 53.0));
    }

    #[test]
    fn wrapping_keeps_lines_within_the_width() {
        let text =
            "worst |diff| as % of its tolerance atol + rtol|ref| (log colour; >= 100% fails)";
        for max in [60.0, 150.0, 280.0, 2000.0] {
            let lines = wrap(text, 12.0, false, max);
            for l in &lines {
                assert!(width(l, 12.0, false) <= max, "{l:?} wider than {max}");
            }
            assert_eq!(
                lines.join(" ").replace(' ', ""),
                text.replace(' ', ""),
                "nothing lost"
            );
        }
        assert_eq!(wrap(text, 12.0, false, 2000.0), [text]);
        // A word longer than a line is cut.
        let lines = wrap(&"x".repeat(100), 10.0, false, 50.0);
        assert!(lines.len() > 5 && lines.iter().all(|l| width(l, 10.0, false) <= 50.0));
        assert_eq!(wrap("", 10.0, false, 50.0), [""]);
        // Not at a no-break space.
        assert_eq!(
            wrap("above -20\u{a0}dB", 10.0, false, 50.0),
            ["above", "-20\u{a0}dB"]
        );
    }

    #[test]
    fn shortened_names_fit() {
        assert_eq!(shorten("02_q", 11.0, false, 100.0), "02_q");
        let long = "a_checkpoint_with_a_very_long_name_indeed_that_goes_on_and_on";
        let s = shorten(long, 11.0, false, 100.0);
        assert!(s.ends_with('…') && width(&s, 11.0, false) <= 100.0, "{s}");
        assert!(long.starts_with(s.trim_end_matches('…')));
    }

    #[test]
    fn rectangles_touching_do_not_overlap() {
        let a = Rect {
            x: 0.0,
            y: 0.0,
            w: 10.0,
            h: 10.0,
        };
        let b = Rect { x: 10.0, ..a };
        let c = Rect {
            x: 9.0,
            y: 9.0,
            ..a
        };
        assert!(!a.overlaps(&b) && a.overlaps(&c) && c.overlaps(&a));
        assert!(a.grown(1.0).contains(&a) && !a.contains(&c));
    }
}
