//! Small pieces of text every report uses.

/// A layer as a table shows it: its number, or `-` outside the layers.
pub fn layer_text(l: Option<u32>) -> String {
    l.map_or("-".into(), |l| l.to_string())
}

/// `s` escaped for XML text and attribute values (SVG, HTML).
pub fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
