//! Two extraction runs of the same manifest and prompt, side by side: one on a
//! reference backend (CPU), one on the backend under test (CUDA, Metal); or
//! the same backend on two llama.cpp trees (`cargo xtask diff-trees`).
//!
//! For every checkpoint of the prompt pass: the backend buffer each run read it
//! from, NMSE (`mean((test - ref)^2) / var(ref)`, the measure llama.cpp's own
//! model-conversion checks use) and the largest absolute difference; the same
//! for `logits.bin`, and whether the two are bitwise equal. Also the timing
//! of several runs with and without extraction. `llorch-checkpoint-diff` is
//! the command line; the device bundle's script runs it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::format;
use crate::manifest::{fmt_ne, Checkpoint};
use crate::output::file_name;
use crate::record::{median, Device, LlamaCpp, RunRecord};
use llorch_checkpoint_spec::metric;

/// How far `test` is from `reference`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub n: usize,
    /// `mean((test - ref)^2) / var(ref)` ([`metric::nmse`]); 0 when equal,
    /// infinite when ref is constant and they differ, NaN when a difference is NaN.
    pub nmse: f64,
    pub max_abs: f64,
    /// Where `max_abs` is: its flat (row-major) index.
    pub max_abs_index: usize,
    /// Every value has the same bits (so NaN == NaN, and -0.0 != 0.0).
    pub bitwise_equal: bool,
}

pub fn stats(reference: &[f32], test: &[f32]) -> Stats {
    assert_eq!(
        reference.len(),
        test.len(),
        "stats of tensors of different sizes"
    );
    let n = reference.len();
    let bitwise_equal = reference
        .iter()
        .zip(test)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    let (mut max_abs, mut max_abs_index) = (0f64, 0);
    for (i, (&r, &t)) in reference.iter().zip(test).enumerate() {
        let d = (t as f64 - r as f64).abs();
        // NaN never compares greater: make it win, so it cannot hide.
        if (d > max_abs || d.is_nan()) && !max_abs.is_nan() {
            (max_abs, max_abs_index) = (d, i);
        }
    }
    // A NaN difference (a NaN in either run, or the same infinity in both)
    // makes the NMSE NaN, which passes no bound; `metric::nmse` alone would
    // see a NaN variance or error as "no error".
    let nmse = match max_abs.is_nan() {
        true => f64::NAN,
        false => metric::nmse(test, reference),
    };
    Stats {
        n,
        nmse,
        max_abs,
        max_abs_index,
        bitwise_equal,
    }
}

/// The coordinate (row-major, as files store it) of flat index `i` in `shape`.
fn coordinate(shape: &[i64], i: usize) -> Vec<i64> {
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    metric::unravel(i, &dims)
        .into_iter()
        .map(|d| d as i64)
        .collect()
}

/// One compared file.
#[derive(Serialize)]
pub struct Row {
    pub id: String,
    pub file: String,
    pub shape: Vec<i64>,
    /// The buffer each run read it from ("CPU", "CUDA0", ...).
    pub buffer_a: String,
    pub buffer_b: String,
    pub stats: Stats,
    /// Where the largest difference is (row-major, the file's shape).
    pub max_abs_at: Vec<i64>,
    pub pass: bool,
}

#[derive(Serialize)]
pub struct Side {
    pub dir: PathBuf,
    pub n_gpu_layers: i64,
    pub devices: Vec<Device>,
    pub llama_cpp: LlamaCpp,
    pub next_token: Option<i32>,
}

/// A whole comparison: `b` (under test) against `a` (the reference).
#[derive(Serialize)]
pub struct Comparison {
    pub a: Side,
    pub b: Side,
    pub max_nmse: f64,
    pub checkpoints: Vec<Row>,
    pub logits: Row,
    /// How many checkpoints have the same bits in both runs.
    pub bitwise_equal: usize,
    /// The first checkpoint, in the order the graph computed them, whose bits differ.
    pub first_difference: Option<String>,
    pub pass: bool,
}

/// Compares the prompt-pass files of `checkpoints` (a manifest's, or none for
/// the logits alone) and the logits of run `b` against run `a`.
/// A missing file or a shape that differs is an error naming it.
pub fn compare_runs(
    a: &Path,
    b: &Path,
    checkpoints: &[Checkpoint],
    max_nmse: f64,
) -> Result<Comparison> {
    let (ra, rb) = (RunRecord::read(a)?, RunRecord::read(b)?);
    let fa = |r: &RunRecord| r.flash_attn.used_name();
    if ra.flash_attn.used != rb.flash_attn.used {
        bail!(
            "{} ran with flash attention {} and {} with it {}: their graphs differ (scores, the V cache's layout); \
             run both with the same --flash-attn (on or off)",
            a.display(),
            fa(&ra),
            b.display(),
            fa(&rb)
        );
    }
    let buffer = |r: &RunRecord, file: &str| {
        r.checkpoint(file)
            .map_or_else(|| "?".into(), |c| c.buffer.clone())
    };
    let mut rows = Vec::new();
    for cp in checkpoints {
        let (fa, fb) = (
            file_name(&cp.file_stem, 0, ra.format),
            file_name(&cp.file_stem, 0, rb.format),
        );
        let (s, shape) = compare_files(&a.join(&fa), &b.join(&fb))?;
        rows.push(Row {
            id: cp.id.clone(),
            file: fb.clone(),
            max_abs_at: coordinate(&shape, s.max_abs_index),
            shape,
            buffer_a: buffer(&ra, &fa),
            buffer_b: buffer(&rb, &fb),
            stats: s,
            pass: s.nmse <= max_nmse,
        });
    }
    // Graph order: the order the run recorded its checkpoints in.
    let position = |file: &str| rb.checkpoints.iter().position(|c| c.file == file);
    rows.sort_by_key(|r| position(&r.file));
    let (s, shape) = compare_files(&a.join("logits.bin"), &b.join("logits.bin"))?;
    let logits = Row {
        id: "logits".into(),
        file: "logits.bin".into(),
        max_abs_at: coordinate(&shape, s.max_abs_index),
        shape,
        buffer_a: "-".into(),
        buffer_b: "-".into(),
        stats: s,
        pass: s.nmse <= max_nmse,
    };
    let pass = rows.iter().all(|r| r.pass) && logits.pass;
    let side = |dir: &Path, r: &RunRecord| Side {
        dir: dir.to_path_buf(),
        n_gpu_layers: r.n_gpu_layers as i64,
        devices: r.devices.clone(),
        llama_cpp: r.llama_cpp.clone(),
        next_token: r.next_token,
    };
    Ok(Comparison {
        a: side(a, &ra),
        b: side(b, &rb),
        max_nmse,
        bitwise_equal: rows.iter().filter(|r| r.stats.bitwise_equal).count(),
        first_difference: rows
            .iter()
            .find(|r| !r.stats.bitwise_equal)
            .map(|r| format!("{} ({})", r.id, r.file)),
        checkpoints: rows,
        logits,
        pass,
    })
}

fn compare_files(a: &Path, b: &Path) -> Result<(Stats, Vec<i64>)> {
    let (ta, tb) = (format::read(a)?, format::read(b)?);
    if ta.shape != tb.shape {
        bail!(
            "{} has shape {} but {} has {}",
            b.display(),
            fmt_ne(&tb.shape),
            a.display(),
            fmt_ne(&ta.shape)
        );
    }
    Ok((stats(&ta.data, &tb.data), ta.shape))
}

impl Comparison {
    /// The table the command line prints.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<16} {:>16} {:<7} {:<7} {:>11} {:>11} {:>16} {:<7} verdict (NMSE <= {:.0e})\n",
            "checkpoint",
            "shape",
            "ref",
            "test",
            "NMSE",
            "max |diff|",
            "at",
            "bitwise",
            self.max_nmse
        );
        for r in self.checkpoints.iter().chain([&self.logits]) {
            out += &format!(
                "{:<16} {:>16} {:<7} {:<7} {:>11.3e} {:>11.3e} {:>16} {:<7} {}\n",
                r.id,
                fmt_ne(&r.shape),
                r.buffer_a,
                r.buffer_b,
                r.stats.nmse,
                r.stats.max_abs,
                fmt_ne(&r.max_abs_at),
                if r.stats.bitwise_equal { "yes" } else { "no" },
                if r.pass { "ok" } else { "FAIL" }
            );
        }
        let rows = || self.checkpoints.iter().chain([&self.logits]);
        let failed = rows().filter(|r| !r.pass).count();
        let worst =
            rows()
                .map(|r| r.stats.nmse)
                .fold(0f64, |a, b| if b > a || b.is_nan() { b } else { a });
        let max_abs =
            rows()
                .map(|r| r.stats.max_abs)
                .fold(0f64, |a, b| if b > a || b.is_nan() { b } else { a });
        out += &format!(
            "{} compared, {failed} above the NMSE bound {:.0e}; largest NMSE {worst:.3e}, largest max |diff| {max_abs:.3e}\n",
            self.checkpoints.len() + 1,
            self.max_nmse
        );
        out += &format!(
            "{} of {} checkpoints bitwise equal; first that differs: {}; logits {}; next token {} vs {}\n",
            self.bitwise_equal,
            self.checkpoints.len(),
            self.first_difference.as_deref().unwrap_or("none"),
            if self.logits.stats.bitwise_equal { "bitwise equal".to_string() } else { format!("NMSE {:.3e}", self.logits.stats.nmse) },
            token(self.a.next_token),
            token(self.b.next_token),
        );
        out
    }
}

impl Comparison {
    /// A page of its own: both sides named, the summary, one row per checkpoint.
    pub fn html(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let side = |name: &str, s: &Side| {
            format!(
                "<tr><th>{name}</th><td>{}</td><td>ggml {}</td><td>{}</td><td>next token {}</td></tr>",
                esc(&s.llama_cpp.tree.describe()),
                esc(&s.llama_cpp.ggml_version),
                esc(&s.dir.display().to_string()),
                token(s.next_token)
            )
        };
        let mut page = String::from(
            "<!doctype html><meta charset=utf-8><title>llama.cpp against llama.cpp</title>\
             <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}\
             td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}.same{background:#e6f4e6}.diff{background:#fdf3d8}\
             .fail{background:#f8d7da}</style><h1>Checkpoint by checkpoint: two llama.cpp runs</h1><table>",
        );
        page += &side("reference (a)", &self.a);
        page += &side("under test (b)", &self.b);
        page += &format!("</table><pre>{}</pre><table><tr>", esc(&self.table()));
        for h in [
            "checkpoint",
            "file",
            "shape",
            "NMSE",
            "max |diff|",
            "at",
            "bitwise",
            "verdict",
        ] {
            page += &format!("<th>{h}</th>");
        }
        page += "</tr>";
        for r in self.checkpoints.iter().chain([&self.logits]) {
            let class = match (r.pass, r.stats.bitwise_equal) {
                (false, _) => "fail",
                (true, true) => "same",
                (true, false) => "diff",
            };
            page += &format!(
                "<tr class={class}><td>{}</td><td>{}</td><td>{}</td><td>{:.3e}</td><td>{:.3e}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.id),
                esc(&r.file),
                fmt_ne(&r.shape),
                r.stats.nmse,
                r.stats.max_abs,
                fmt_ne(&r.max_abs_at),
                if r.stats.bitwise_equal { "yes" } else { "no" },
                if r.pass { "ok" } else { "FAIL" }
            );
        }
        page + "</table>\n"
    }
}

fn token(t: Option<i32>) -> String {
    t.map_or_else(|| "-".into(), |t| t.to_string())
}

/// Decode times of runs with and without extraction (medians over runs).
#[derive(Serialize)]
pub struct Timing {
    pub runs_with: usize,
    pub runs_without: usize,
    /// The prompt pass (the first decode of each process: includes one-time backend warm-up).
    pub prompt_ms_with: f64,
    pub prompt_ms_without: f64,
    pub prompt_ratio: f64,
    /// The generated-token passes (the median within a run, then across runs); absent with `-n 0`.
    pub token_ms_with: Option<f64>,
    pub token_ms_without: Option<f64>,
    pub token_ratio: Option<f64>,
}

/// Reads `decode_ms` of every run directory and takes medians.
pub fn timing(with: &[PathBuf], without: &[PathBuf]) -> Result<Timing> {
    let side = |dirs: &[PathBuf]| -> Result<(f64, Option<f64>)> {
        if dirs.is_empty() {
            bail!("no run directories given");
        }
        let (mut prompt, mut token) = (Vec::new(), Vec::new());
        for dir in dirs {
            let record = RunRecord::read(dir)?;
            let Some((&first, rest)) = record.decode_ms.split_first() else {
                bail!("{}: run.json has no decode_ms", dir.display())
            };
            prompt.push(first);
            if !rest.is_empty() {
                token.push(median(rest));
            }
        }
        let token = (token.len() == dirs.len()).then(|| median(&token));
        Ok((median(&prompt), token))
    };
    let (pw, tw) = side(with)?;
    let (pwo, two) = side(without)?;
    let token_ratio = match (tw, two) {
        (Some(a), Some(b)) => Some(a / b),
        _ => None,
    };
    Ok(Timing {
        runs_with: with.len(),
        runs_without: without.len(),
        prompt_ms_with: pw,
        prompt_ms_without: pwo,
        prompt_ratio: pw / pwo,
        token_ms_with: tw,
        token_ms_without: two,
        token_ratio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;
    use crate::manifest::Manifest;

    #[test]
    fn runs_of_two_flash_attention_settings_are_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        run_dir(&a, "CPU", &[1.0, 2.0, 3.0, 4.0], &[0.5], &[1.0]);
        run_dir(&b, "CPU", &[1.0, 2.0, 3.0, 4.0], &[0.5], &[1.0]);
        let mut record = RunRecord::read(&b).unwrap();
        record.flash_attn.used = Some(true);
        std::fs::write(b.join("run.json"), record.to_json()).unwrap();
        let manifest = Manifest::parse(MANIFEST).unwrap();
        let err = format!(
            "{:#}",
            compare_runs(&a, &b, &manifest.checkpoints, 1e-4)
                .err()
                .unwrap()
        );
        assert!(
            err.contains("flash attention off")
                && err.contains("with it on")
                && err.contains("--flash-attn"),
            "{err}"
        );
    }

    #[test]
    fn a_flat_index_is_a_row_major_coordinate() {
        assert_eq!(coordinate(&[2, 3, 4], 0), [0, 0, 0]);
        assert_eq!(coordinate(&[2, 3, 4], 4 * 3 + 2 * 4 + 1), [1, 2, 1]);
        assert_eq!(coordinate(&[5], 4), [4]);
    }

    #[test]
    fn nmse_and_max_abs_follow_their_definitions() {
        let r = [1.0f32, 2.0, 3.0, 4.0]; // mean 2.5, var 1.25
        let t = [1.0f32, 2.0, 3.5, 4.0]; // one difference of 0.5: mse 0.0625
        let s = stats(&r, &t);
        assert_eq!(s.n, 4);
        assert!((s.nmse - 0.0625 / 1.25).abs() < 1e-12, "{s:?}");
        assert_eq!(s.max_abs, 0.5);
        assert!(!s.bitwise_equal);

        let same = stats(&r, &r);
        assert_eq!(
            (same.nmse, same.max_abs, same.bitwise_equal),
            (0.0, 0.0, true)
        );
        // A constant reference: any difference is infinitely far.
        assert_eq!(stats(&[2.0; 3], &[2.0, 2.0, 2.5]).nmse, f64::INFINITY);
        // -0.0 and 0.0 are equal numbers but not equal bits.
        let z = stats(&[0.0, 1.0], &[-0.0, 1.0]);
        assert_eq!((z.nmse, z.bitwise_equal), (0.0, false));
        // A NaN in the test run cannot pass unnoticed.
        let nan = stats(&r, &[1.0, f32::NAN, 3.0, 4.0]);
        assert!(nan.max_abs.is_nan() && nan.nmse.is_nan(), "{nan:?}");
        // Nor one in the reference, even where both runs hold it.
        let both = [1.0, f32::NAN, 3.0];
        assert!(stats(&both, &both).nmse.is_nan());
        assert!(stats(&[2.0, f32::NAN], &[2.0, 2.0]).nmse.is_nan());
    }

    const MANIFEST: &str = "architecture: gpt2\nlayers: [0]\ncheckpoints:\n  - id: \"01_x\"\n    what: x\n    tensor: \"x-{layer}\"\n    shape: [n_embd, n_tokens]\n    file: checkpoint_01_x\n";

    /// A run directory as the extractor writes it, with one checkpoint of shape [2, 2].
    fn run_dir(dir: &Path, buffer: &str, data: &[f32], logits: &[f32], decode_ms: &[f64]) {
        std::fs::create_dir_all(dir).unwrap();
        let write = |name: &str, shape: &[i64], data: &[f32]| {
            let mut bytes = Vec::new();
            format::write(Format::Bin, &mut bytes, shape, data).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        write("checkpoint_01_x.bin", &[2, 2], data);
        write("logits.bin", &[1, logits.len() as i64], logits);
        let mut record = crate::record::example();
        record.n_gpu_layers = 99;
        record.devices = vec![Device {
            name: buffer.into(),
            description: "test".into(),
        }];
        record.checkpoints[0].file = "checkpoint_01_x.bin".into();
        record.checkpoints[0].buffer = buffer.into();
        record.decode_ms = decode_ms.to_vec();
        std::fs::write(dir.join("run.json"), record.to_json()).unwrap();
    }

    #[test]
    fn two_runs_are_compared_checkpoint_by_checkpoint_and_by_logits() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("cpu"), tmp.path().join("gpu"));
        run_dir(&a, "CPU", &[1.0, 2.0, 3.0, 4.0], &[0.5, 0.25], &[10.0]);
        run_dir(&b, "CUDA0", &[1.0, 2.0, 3.0, 4.001], &[0.5, 0.25], &[5.0]);
        let manifest = Manifest::parse(MANIFEST).unwrap();
        let cps = &manifest.checkpoints;

        let c = compare_runs(&a, &b, cps, 1e-4).unwrap();
        let row = &c.checkpoints[0];
        assert_eq!(
            (
                row.id.as_str(),
                row.buffer_a.as_str(),
                row.buffer_b.as_str()
            ),
            ("01_x", "CPU", "CUDA0")
        );
        assert_eq!(row.shape, [2, 2]);
        assert!(row.pass && !row.stats.bitwise_equal && (row.stats.max_abs - 0.001).abs() < 1e-6);
        assert_eq!(row.max_abs_at, [1, 1], "the last element differs");
        assert!(c.logits.stats.bitwise_equal && c.pass);
        assert_eq!(
            (c.bitwise_equal, c.first_difference.as_deref()),
            (0, Some("01_x (checkpoint_01_x.bin)"))
        );
        let html = c.html();
        assert!(
            html.contains("<td>[1, 1]</td>") && html.contains("class=diff"),
            "{html}"
        );
        let table = c.table();
        assert!(
            table.contains("01_x")
                && table.contains("CUDA0")
                && table.contains("2 compared, 0 above the NMSE bound 1e-4"),
            "{table}"
        );

        // Too far for a tighter bound: the verdict says so.
        assert!(!compare_runs(&a, &b, cps, 1e-9).unwrap().pass);
        // The logits alone.
        let logits_only = compare_runs(&a, &b, &[], 1e-9).unwrap();
        assert!(logits_only.checkpoints.is_empty() && logits_only.pass);

        // A shape that differs is an error naming the file.
        run_dir(
            &b,
            "CUDA0",
            &[1.0, 2.0, 3.0, 4.0],
            &[0.5, 0.25, 0.0],
            &[5.0],
        );
        let msg = match compare_runs(&a, &b, cps, 1e-4) {
            Ok(_) => panic!("logits of different shapes were compared"),
            Err(err) => format!("{err:#}"),
        };
        assert!(msg.contains("logits.bin has shape [1, 3]"), "{msg}");
    }

    #[test]
    fn timing_takes_medians_of_the_prompt_and_of_the_token_passes() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = |name: &str, runs: &[&[f64]]| -> Vec<PathBuf> {
            runs.iter()
                .enumerate()
                .map(|(i, ms)| {
                    let d = tmp.path().join(format!("{name}{i}"));
                    run_dir(&d, "CPU", &[0.0; 4], &[0.0], ms);
                    d
                })
                .collect()
        };
        let with = dirs(
            "with",
            &[&[12.0, 2.0, 3.0, 4.0], &[10.0, 3.0, 3.0], &[30.0, 3.0]],
        );
        let without = dirs("without", &[&[10.0, 2.0], &[8.0, 2.0], &[9.0, 2.0, 2.0]]);
        let t = timing(&with, &without).unwrap();
        assert_eq!((t.prompt_ms_with, t.prompt_ms_without), (12.0, 9.0));
        assert_eq!(
            (t.token_ms_with, t.token_ms_without),
            (Some(3.0), Some(2.0))
        );
        assert_eq!(t.token_ratio, Some(1.5));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
