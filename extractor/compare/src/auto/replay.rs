//! Each layer judged on llama.cpp's own input (`--replay-layers`): the
//! reference's `f64+replay` pass feeds every decoder layer but the first
//! llama.cpp's output of the layer before (its `l_out-<l>` node), so a
//! layer's checkpoints compared with that pass show the error the layer
//! adds (local), and compared with the plain f64 pass the error it adds and
//! inherits (accumulated).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use llorch_checkpoint_matching::Node;
use llorch_checkpoint_report::findings::{Row, F64, F64_REPLAY};
use llorch_checkpoint_report::layers::{picture, LayerPoint};
use llorch_checkpoint_spec::files::write_atomically;
use llorch_checkpoint_spec::format::write_file;

/// llama.cpp's input of each layer but the first (the output of the one
/// before, `l_out-<l-1>`, as `[n_tokens, n_embd]`), written into `dir` as
/// `.npy` for the reference; the layer 0 input stays the reference's own
/// embedding.
pub fn write_layer_inputs(
    nodes: &[Node],
    n_layer: u32,
    dir: &Path,
) -> Result<BTreeMap<u32, PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut inputs = BTreeMap::new();
    for layer in 1..n_layer {
        let name = format!("l_out-{}", layer - 1);
        // The last node of that name: the layer's output after every residual.
        let node = nodes.iter().rev().find(|n| n.name == name).with_context(|| {
            format!("--replay-layers: llama.cpp's graph has no node `{name}` (the output of layer {}), which layer {layer} would be fed", layer - 1)
        })?;
        let rows = node.ne[1] * node.ne[2] * node.ne[3];
        let data: Vec<f32> = node.data.iter().map(|&v| v as f32).collect();
        let path = dir.join(format!("layer-{layer}.npy"));
        write_file(&path, &[rows, node.ne[0]], &data)?;
        inputs.insert(layer, path);
    }
    Ok(inputs)
}

/// One layer's worst checkpoint, accumulated and local.
#[derive(Debug, PartialEq)]
pub struct LayerErrors {
    pub layer: u32,
    /// The largest NMSE (dB) against the reference's own chain of layers.
    pub accumulated_db: f64,
    /// The largest NMSE (dB) against the layer fed llama.cpp's input.
    pub local_db: f64,
    /// The first checkpoint (graph order) over its tolerance against the
    /// replayed layer, if one is.
    pub local_failure: Option<String>,
}

/// Per layer, from the rows scored against both f64 passes.
pub fn layer_errors(rows: &[Row]) -> Vec<LayerErrors> {
    let mut layers: BTreeMap<u32, LayerErrors> = BTreeMap::new();
    for row in rows {
        let (Some(layer), Some(acc), Some(local)) =
            (row.layer, row.against.get(F64), row.against.get(F64_REPLAY))
        else {
            continue;
        };
        let e = layers.entry(layer).or_insert(LayerErrors {
            layer,
            accumulated_db: f64::NEG_INFINITY,
            local_db: f64::NEG_INFINITY,
            local_failure: None,
        });
        e.accumulated_db = e.accumulated_db.max(acc.nmse_db);
        e.local_db = e.local_db.max(local.nmse_db);
        if e.local_failure.is_none() && !local.passes(&row.tolerance) {
            e.local_failure = Some(row.id.clone());
        }
    }
    layers.into_values().collect()
}

/// `layers.svg`: the two errors over the layers.
pub fn write_picture(layers: &[LayerErrors], architecture: &str, path: &Path) -> Result<()> {
    let points: Vec<LayerPoint> = layers
        .iter()
        .map(|l| LayerPoint {
            layer: l.layer,
            accumulated_db: l.accumulated_db,
            local_db: l.local_db,
        })
        .collect();
    let title = format!("{architecture}: worst NMSE per layer against f64, accumulated and local");
    write_atomically(path, picture(&points, &title)?.as_bytes())
}

/// With layers replayed, the verdict: the first layer whose local error
/// exceeds a tolerance; an accumulated failure alone is inherited error.
pub fn local_failure(layers: &[LayerErrors], accumulated: Option<String>) -> Option<String> {
    let first = layers.iter().find(|l| l.local_failure.is_some())?;
    let id = first.local_failure.as_deref().unwrap_or_default();
    Some(format!(
        "layer {}: checkpoint {id} exceeds its tolerance against the layer fed llama.cpp's own input{}",
        first.layer,
        accumulated.map_or(String::new(), |a| format!(" (against the reference's own chain: {a})"))
    ))
}

/// The per-layer table, and the first divergence judged on the local error.
pub fn text(layers: &[LayerErrors]) -> String {
    let mut out = String::from(
        "\nper layer, worst NMSE against f64 (dB): accumulated (the reference's own chain) and local\n\
         (the layer fed llama.cpp's input of it; layer 0: the reference's embedding)\n\
         layer  accumulated  local\n",
    );
    for l in layers {
        let _ = writeln!(
            out,
            "{:>5}  {:>11.1}  {:>5.1}",
            l.layer, l.accumulated_db, l.local_db
        );
    }
    match layers.iter().find(|l| l.local_failure.is_some()) {
        Some(l) => {
            let id = l.local_failure.as_deref().unwrap_or_default();
            let _ = writeln!(out, "first divergence on the local error: layer {}, {id}", l.layer);
        }
        None => out.push_str(
            "first divergence on the local error: none: every layer computes from llama.cpp's input what the reference does, \
             within tolerance (an accumulated error over tolerance is inherited; the verdict is the local one)\n",
        ),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use llorch_checkpoint_spec::manifest::Tolerance;
    use llorch_checkpoint_spec::metric::metrics;

    fn row(id: &str, layer: u32, acc: &[f64], local: &[f64], tolerance: Tolerance) -> Row {
        let truth = [1.0, -2.0, 3.0, -4.0];
        let m = |t: &[f64]| metrics(t, &truth, &tolerance);
        Row {
            id: id.into(),
            layer: Some(layer),
            file: format!("{id}.bin"),
            shape: vec![4],
            tolerance,
            against: [
                (F64.to_string(), m(acc)),
                (F64_REPLAY.to_string(), m(local)),
            ]
            .into(),
            pass: true,
            worst_index: vec![0],
            worst_test: 0.0,
            worst_ref: 0.0,
            non_finite_test: 0,
            non_finite_ref: 0,
            truth: F64.into(),
        }
    }

    #[test]
    fn a_layer_is_judged_on_what_it_adds_to_its_input() {
        let tol = Tolerance {
            atol: 1e-3,
            atol_of_max: 0.0,
            rtol: 0.0,
            nmse: 1e-6,
        };
        let exact = [1.0, -2.0, 3.0, -4.0];
        let inherited = [1.01, -2.0, 3.0, -4.0];
        // Layer 0 adds nothing; layer 1 inherits an error but adds none; layer 2 adds one.
        let rows = [
            row("a", 0, &exact, &exact, tol),
            row("a", 1, &inherited, &exact, tol),
            row("b", 2, &inherited, &[1.0, -2.0, 3.5, -4.0], tol),
        ];
        let layers = layer_errors(&rows);
        assert_eq!(layers.len(), 3);
        assert_eq!(layers[0].local_failure, None);
        assert!(layers[1].accumulated_db > -60.0 && layers[1].local_db == f64::NEG_INFINITY);
        assert_eq!(layers[1].local_failure, None);
        assert_eq!(layers[2].local_failure.as_deref(), Some("b"));
        assert!(text(&layers).contains("first divergence on the local error: layer 2, b"));
        let verdict = local_failure(&layers, Some("a@1".into())).unwrap();
        assert!(verdict.starts_with("layer 2: checkpoint b") && verdict.contains("own chain: a@1"));
        // Inherited error alone passes.
        assert_eq!(local_failure(&layers[..2], Some("a@1".into())), None);
    }
}
