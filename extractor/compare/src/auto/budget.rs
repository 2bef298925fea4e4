//! What a comparison without a manifest takes on disk, checked twice:
//! projected from llama.cpp's graph run (the first thing it writes, a tenth
//! of its time), and from what the reference wrote once it has. The
//! reference's pass writes each variant once (f32 4 bytes an element, f64
//! 8), and the compared pairs are laid out once more from it. Measured with
//! three variants (f32, f64, f64+replay), the graph run's multiple in all:
//! 4.0 on a 7B-sized llama (1.11 GB, 4.4 GB), 5.7 on SmolLM2-135M, 7.0 on a
//! 7B-sized qwen2 (0.53 GB, 3.7 GB: its FFN is 5.3 times its width, and
//! llama.cpp's KV nodes hold 4 heads), 7.6 on Qwen2.5-Coder-0.5B (128 MB,
//! 977 MB): the projection takes 8.

use std::path::Path;

use anyhow::{bail, Result};

/// The bytes of the comparison's files, from the graph run's and the variants.
pub fn projected(graph_bytes: u64, variants: &[&str]) -> u64 {
    let f64_variants = variants.iter().filter(|v| v.starts_with("f64")).count() as f64;
    let f32_variants = variants.len() as f64 - f64_variants;
    // Reference tensors written and laid out: up to 1.4 graph runs per f32 variant.
    let reference = 1.4 * (f32_variants + 2.0 * f64_variants);
    (graph_bytes as f64 * (1.0 + reference)) as u64
}

/// After the graph run: says what the comparison will take at most; with a
/// budget it cannot hold, removes what it wrote (`dir`) and refuses.
pub fn check_graph(
    graph_run: &Path,
    variants: &[&str],
    max: Option<u64>,
    dir: &Path,
) -> Result<()> {
    let graph = bytes_under(graph_run);
    let total = projected(graph, variants);
    eprintln!(
        "compare: at most about {} of files in all (the graph run {}; the reference's {} variants)",
        size_text(total),
        size_text(graph),
        variants.len()
    );
    refuse_over(
        total,
        max,
        dir,
        &format!("llama.cpp's graph run alone took {}", size_text(graph)),
    )
}

/// After the reference's pass: what is written, and its pairs laid out once
/// more (at most the pass again), against the budget.
pub fn check_reference(
    graph_run: &Path,
    everything: &Path,
    max: Option<u64>,
    dir: &Path,
) -> Result<()> {
    let reference = bytes_under(everything);
    let total = bytes_under(graph_run) + 2 * reference;
    refuse_over(
        total,
        max,
        dir,
        &format!("the reference's pass took {}", size_text(reference)),
    )
}

fn refuse_over(total: u64, max: Option<u64>, dir: &Path, taken: &str) -> Result<()> {
    match max {
        Some(max) if total > max => {
            let _ = std::fs::remove_dir_all(dir);
            bail!(
                "this comparison would write about {}, over --max-disk {} ({taken}; its files are removed): compare \
                 fewer layers with --layers, leave out --replay-layers or --attribution, or allow more",
                size_text(total),
                size_text(max),
            )
        }
        _ => Ok(()),
    }
}

/// Bytes as a person reads them: `1.2 GB`, `35 MB`.
fn size_text(bytes: u64) -> String {
    match bytes >= 1_000_000_000 {
        true => format!("{:.1} GB", bytes as f64 / 1e9),
        false => format!("{:.0} MB", (bytes as f64 / 1e6).max(1.0)),
    }
}

/// The bytes of a file, or of a directory's files, recursively.
pub(super) fn bytes_under(path: &Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(entries) => entries.flatten().map(|e| bytes_under(&e.path())).sum(),
        Err(_) => std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projection_holds_every_measured_comparison() {
        // The 7B-sized qwen2: 0.53 GB of graph run, 3.7 GB in all; the llama, 1.11 and 4.4 GB.
        let three = ["f32", "f64", "f64+replay"];
        assert!(projected(529_000_000, &three) as f64 >= 3.7e9);
        assert!(projected(128_000_000, &three) as f64 >= 0.977e9);
        assert!(projected(1_110_000_000, &three) as f64 >= 4.4e9);
        assert!(
            projected(1_000, &["f32", "f64"]) < projected(1_000, &["f32", "f64", "f64+replay"])
        );
    }
}
