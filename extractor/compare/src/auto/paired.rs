//! The pairs as a comparison, with no second run of either side: the
//! drafted entries' checkpoints in the layers asked; llama.cpp's files taken
//! from the graph run (linked into `out/llama` under the drafted manifest's
//! file names, with a run record that lists them) and the reference's laid
//! out from its pass (`out/reference/<variant>/`). What reads a manifest's
//! comparison reads this one alike: the scores, a candidate, report.html,
//! and attribution's reruns with `auto/manifest.yaml`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use llorch_checkpoint_matching::layout::slice;
use llorch_checkpoint_matching::manifest_text::{file_template, Role};
use llorch_checkpoint_matching::Node;
use llorch_checkpoint_report::findings::{Entry, F32};
use llorch_checkpoint_spec::files::{sha256_file, write_atomically};
use llorch_checkpoint_spec::format::{read_values, write_file, write_npy_f64};
use llorch_checkpoint_spec::manifest::Layers;
use llorch_checkpoint_spec::metric::value_stats;
use llorch_checkpoint_spec::record::{CheckpointRecord, ManifestInfo};

use super::matched::Matched;
use crate::compare::{Options, Scored};
use crate::entries::read_run;
use crate::{metrics, overrides};

/// One checkpoint compared: its entry, and the drafted node it is.
struct Picked {
    entry: Entry,
    drafted: usize,
}

/// Writes both sides' files of every checkpoint and scores them.
pub(crate) fn score(m: &Matched, opts: &Options) -> Result<Scored> {
    let asked = match &opts.layers {
        Some(text) => Some(
            text.parse::<Layers>()
                .map_err(anyhow::Error::msg)?
                .resolve(m.record.model.n_layer.max(0) as u32)?,
        ),
        None => None,
    };
    let picked = checkpoints(m, asked.as_deref(), opts);
    let run = opts.out.join("llama");
    write_run(m, &picked, asked, &run)?;
    let reference_dir = opts.out.join("reference");
    write_reference(m, &picked, &reference_dir)?;
    let entries: Vec<Entry> = picked.into_iter().map(|p| p.entry).collect();
    let rows = metrics::score_run(
        &run,
        &reference_dir,
        &entries,
        opts.fail_fast,
        &m.info.variants,
    )?;
    Ok(Scored {
        record: read_run(&run)?,
        run,
        reference_dir,
        info: m.info.clone(),
        entries,
        rows,
    })
}

/// The checkpoints in graph order, as the drafted manifest expands them:
/// what precedes the layers, each layer's, what follows them.
fn checkpoints(m: &Matched, asked: Option<&[u32]>, opts: &Options) -> Vec<Picked> {
    let n_layer = m.record.model.n_layer.max(0) as u32;
    let (mut before, mut layered, mut after) = (Vec::new(), Vec::new(), Vec::new());
    let mut in_layers = false;
    for (index, r) in m.roles.iter().enumerate() {
        if r.layers.is_empty() {
            let side = match in_layers {
                false => &mut before,
                true => &mut after,
            };
            side.push(picked(m, r, r.members[0], opts));
            continue;
        }
        in_layers = true;
        for l in role_layers(r, asked, n_layer) {
            if let Some(&d) = r.members.iter().find(|&&d| m.drafted[d].layer == Some(l)) {
                layered.push((l, index, picked(m, r, d, opts)));
            }
        }
    }
    layered.sort_by_key(|(l, index, _)| (*l, *index));
    before
        .into_iter()
        .chain(layered.into_iter().map(|(_, _, p)| p))
        .chain(after)
        .collect()
}

/// The layers an entry is compared in: those asked among the ones its node
/// is in; without `--layers`, the first, or all of its own where it is not
/// in every layer (as the drafted manifest's `layers:` say).
fn role_layers(r: &Role, asked: Option<&[u32]>, n_layer: u32) -> Vec<u32> {
    match asked {
        Some(asked) => asked
            .iter()
            .copied()
            .filter(|l| r.layers.contains(l))
            .collect(),
        None if r.layers.len() == n_layer as usize => vec![0],
        None => r.layers.clone(),
    }
}

fn picked(m: &Matched, r: &Role, drafted: usize, opts: &Options) -> Picked {
    let d = &m.drafted[drafted];
    let pair = m
        .matching
        .pair_of(d.node)
        .expect("every drafted node is paired");
    let stem = file_template(&r.id, d.layer.is_some())
        .replace("{layer}", &d.layer.unwrap_or(0).to_string());
    let n = d.shape.len();
    Picked {
        entry: Entry {
            id: r.id.clone(),
            layer: d.layer,
            head_axis: d
                .shape
                .iter()
                .position(|w| w == "n_head" || w == "n_head_kv")
                .map(|ggml_axis| n - 1 - ggml_axis),
            stem,
            capture: d.capture.clone(),
            ops: pair.ops(),
            tolerance: overrides::apply(&opts.overrides, &r.id, &d.name, m.precision.tolerance()),
        },
        drafted,
    }
}

/// `out`: each checkpoint's file linked from the graph run, and a run
/// record of the graph run listing them instead of every node.
fn write_run(m: &Matched, picked: &[Picked], layers: Option<Vec<u32>>, out: &Path) -> Result<()> {
    fresh(out)?;
    let by_index: HashMap<usize, &CheckpointRecord> = m
        .record
        .checkpoints
        .iter()
        .filter_map(|c| Some((c.graph_index?, c)))
        .collect();
    let mut record = m.record.clone();
    record.checkpoints = Vec::new();
    for p in picked {
        let node_at = m.drafted[p.drafted].node;
        let node = &m.nodes[node_at];
        let cp = by_index
            .get(&node.index)
            .with_context(|| format!("the graph run has no file of node {}", node.index))?;
        let source = m.graph_run.join(&cp.file);
        let mut cp = CheckpointRecord {
            id: p.entry.id.clone(),
            layer: p.entry.layer,
            file: format!("{}.bin", p.entry.stem),
            operands: Vec::new(),
            ..(*cp).clone()
        };
        let path = out.join(&cp.file);
        match m.matching.pair_of(node_at).and_then(|pair| pair.crop) {
            Some((axis, keep)) => cropped(node, axis, keep, &path, &mut cp)?,
            None => link(&source, &path)?,
        }
        record.checkpoints.push(cp);
    }
    link(
        &m.graph_run.join(&record.logits.file),
        &out.join(&record.logits.file),
    )?;
    record.manifest = Some(ManifestInfo {
        path: m.manifest.clone(),
        sha256: sha256_file(&m.manifest).ok(),
    });
    record.tensors = None;
    record.layers = layers;
    write_atomically(
        &out.join(llorch_checkpoint_spec::record::FILE),
        &serde_json::to_vec_pretty(&record)?,
    )
}

/// A node whose file has the padded cells of the KV cache it read (the
/// scores: `n_kv` padded to 256), written with the filled ones alone, as
/// the extractor writes it for a manifest's `n_kv`; its record to match.
fn cropped(
    node: &Node,
    axis: usize,
    keep: usize,
    path: &Path,
    cp: &mut CheckpointRecord,
) -> Result<()> {
    let data: Vec<f32> = slice(&node.shape, &node.data, axis, 0, keep)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    cp.shape[axis] = keep as i64;
    write_file(path, &cp.shape, &data)?;
    (cp.min, cp.max, cp.mean, cp.non_finite) = value_stats(&data);
    cp.sha256 = sha256_file(path)?;
    Ok(())
}

/// `out/<variant>/`: each checkpoint's reference tensor laid out as its
/// node, from that variant's pass; its next-token logits; `reference.json`.
fn write_reference(m: &Matched, picked: &[Picked], out: &Path) -> Result<()> {
    fresh(out)?;
    for variant in &m.info.variants {
        let (from, to) = (m.everything.join(variant), out.join(variant));
        std::fs::create_dir_all(&to)?;
        let files = llorch_checkpoint_matching::sides::tensor_files(&from)?;
        link(&from.join("next_logits.npy"), &to.join("next_logits.npy"))?;
        for p in picked {
            let pair = m
                .matching
                .pair_of(m.drafted[p.drafted].node)
                .expect("every drafted node is paired");
            let name = &m.tensors[pair.tensor].name;
            let file = files.get(name).with_context(|| {
                format!("the reference's {variant} pass made no tensor `{name}`")
            })?;
            let v = read_values(file)?;
            let single = variant == F32;
            let (shape, data) = pair.lay_out(&v.shape, &v.data, single);
            let path = to.join(format!("{}.npy", p.entry.stem));
            match single {
                true => {
                    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                    let values: Vec<f32> = data.iter().map(|&x| x as f32).collect();
                    write_file(&path, &dims, &values)?
                }
                false => write_npy_f64(&path, &shape, &data)?,
            }
        }
    }
    write_atomically(
        &out.join("reference.json"),
        &serde_json::to_vec_pretty(&m.info)?,
    )
}

fn fresh(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// A second name for a file (a copy where the filesystem has no links).
fn link(from: &Path, to: &Path) -> Result<()> {
    std::fs::hard_link(from, to)
        .or_else(|_| std::fs::copy(from, to).map(|_| ()))
        .with_context(|| format!("cannot link {} as {}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(layers: &[u32]) -> Role {
        Role {
            id: "01_x".into(),
            members: (0..layers.len()).collect(),
            layers: layers.to_vec(),
        }
    }

    #[test]
    fn entries_are_compared_in_the_layers_the_drafted_manifest_would_expand() {
        let everywhere = role(&[0, 1, 2, 3]);
        let some = role(&[1, 3]);
        // Without --layers: the first layer, or all of an entry's own.
        assert_eq!(role_layers(&everywhere, None, 4), [0]);
        assert_eq!(role_layers(&some, None, 4), [1, 3]);
        // --layers picks among the layers the node is in.
        assert_eq!(role_layers(&everywhere, Some(&[3, 0]), 4), [3, 0]);
        assert_eq!(role_layers(&some, Some(&[0, 3]), 4), [3]);
        assert!(role_layers(&some, Some(&[2]), 4).is_empty());
    }
}
