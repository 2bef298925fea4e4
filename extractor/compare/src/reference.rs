//! The reference side: the checkpoints' captures and resolved layout ops go
//! to a [`Reference`], which writes one `.npy` per checkpoint and variant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_spec::manifest::{Op, Symbols};
use llorch_checkpoint_spec::record::RunRecord;

use crate::sides::{JobCheckpoint, Reference, ReferenceJob};
use llorch_checkpoint_report::findings::{Entry, Info, F32, F64, VARIANTS};
use llorch_checkpoint_spec::format::read_shape;

/// The reference tensors of `run`'s checkpoints, computed into `out` (emptied first).
pub fn build_reference(
    reference: &dyn Reference,
    model: &Model<'_>,
    run: &Path,
    record: &RunRecord,
    entries: &[Entry],
    out: &Path,
) -> Result<Info> {
    let (n_tokens, n_kv) = (record.symbols.n_tokens, record.symbols.n_kv);
    ensure!(
        n_kv == n_tokens && n_tokens == record.tokens.len() as i64,
        "the run is not a prompt pass from a fresh cache (n_tokens {n_tokens}, n_kv {n_kv}): compare covers that case only"
    );
    let mut checkpoints = Vec::new();
    for e in entries {
        // The shape the ops must give: the checkpoint file's.
        let shape = read_shape(&run.join(format!("{}.bin", e.stem)))?
            .into_iter()
            .map(|d| d as usize)
            .collect();
        checkpoints.push(JobCheckpoint {
            key: e.key(),
            stem: e.stem.clone(),
            capture: e.capture.clone(),
            shape,
            ops: resolve_ops(&e.ops, &record.symbols)
                .with_context(|| format!("checkpoint `{}`", e.id))?,
        });
    }
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out)?;
    // No key, no saved copy: an unreadable GGUF fails in the reference itself, named.
    let gguf_sha256 = match record.model.path == model.gguf {
        true => record.model.sha256.clone(),
        false => llorch_checkpoint_spec::files::sha256_file(model.gguf).unwrap_or_default(),
    };
    let job = ReferenceJob {
        gguf: model.gguf.to_path_buf(),
        hf: model.hf.map(Path::to_path_buf),
        everything: false,
        gguf_sha256,
        tokens: record.tokens.clone(),
        out: out.to_path_buf(),
        variants: VARIANTS.iter().map(|v| v.to_string()).collect(),
        threads: 2,
        checkpoints,
        stream: model.stream,
        layer_inputs: BTreeMap::new(),
    };
    run_job(reference, &job)
}

/// The model the reference loads: the GGUF llama.cpp ran, or the Hugging
/// Face checkpoint it was converted from, whole or one layer at a time.
pub struct Model<'a> {
    pub gguf: &'a Path,
    pub hf: Option<&'a Path>,
    pub stream: bool,
}

/// Every tensor the reference's pass over `tokens` makes, into
/// `out/<variant>/` with `tensors.json`, for each of `variants` the model
/// can run (f32 at least, where it cannot run f64).
pub fn build_everything(
    reference: &dyn Reference,
    model: &Model<'_>,
    tokens: &[i32],
    out: &Path,
    variants: &[&str],
    layer_inputs: BTreeMap<u32, PathBuf>,
) -> Result<Info> {
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out)?;
    let job = ReferenceJob {
        gguf: model.gguf.to_path_buf(),
        hf: model.hf.map(Path::to_path_buf),
        everything: true,
        gguf_sha256: llorch_checkpoint_spec::files::sha256_file(model.gguf).unwrap_or_default(),
        tokens: tokens.to_vec(),
        out: out.to_path_buf(),
        variants: variants.iter().map(|v| v.to_string()).collect(),
        threads: 2,
        checkpoints: Vec::new(),
        stream: model.stream,
        layer_inputs,
    };
    run_job(reference, &job)
}

fn run_job(reference: &dyn Reference, job: &ReferenceJob) -> Result<Info> {
    std::fs::write(job.file(), serde_json::to_vec_pretty(job)?)?;
    reference.compute(job)?;
    let path = job.out.join("reference.json");
    let mut info: Info = serde_json::from_slice(
        &std::fs::read(&path)
            .with_context(|| format!("the reference wrote no {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a reference record", path.display()))?;
    // A reference that does not say which it computed computed them all.
    if info.variants.is_empty() {
        info.variants = job.variants.clone();
    }
    anyhow::ensure!(
        info.variants.iter().any(|v| v == F64 || v == F32),
        "the reference computed neither f64 nor f32 ({:?}): nothing to judge by",
        info.unavailable
    );
    Ok(info)
}

/// The ops as the reference reads them: symbols resolved to numbers.
fn resolve_ops(ops: &[Op], symbols: &Symbols) -> Result<Vec<serde_json::Value>> {
    ops.iter()
        .map(|op| {
            Ok(match op {
                Op::DropBatch => serde_json::json!({ "op": "drop_batch" }),
                Op::Slice { axis, start, len } => {
                    serde_json::json!({ "op": "slice", "axis": axis, "start": start.resolve(symbols)?, "len": len.resolve(symbols)? })
                }
                Op::Reshape(dims) => {
                    let shape = dims.iter().map(|d| d.resolve(symbols)).collect::<Result<Vec<_>>>()?;
                    serde_json::json!({ "op": "reshape", "shape": shape })
                }
                Op::Permute(axes) => serde_json::json!({ "op": "permute", "axes": axes }),
                Op::Scale(by) => serde_json::json!({ "op": "scale", "by": by }),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use llorch_checkpoint_spec::manifest::Manifest;

    #[test]
    fn ops_reach_the_script_with_their_symbols_resolved() {
        let m = Manifest::parse("architecture: gpt2\ncheckpoints:\n  - {id: q, tensor: t, shape: [1], file: q, reference: {capture: c, ops: [drop_batch, {slice: {axis: -1, start: 2*n_embd, len: n_embd}}, {reshape: [n_tokens, n_head, head_dim]}, {permute: [1, 0, 2]}]}}\n").unwrap();
        let mut symbols = llorch_checkpoint_spec::record::example().symbols;
        symbols.n_tokens = 3;
        let ops = &m.checkpoints[0].reference.as_ref().unwrap().ops;
        assert_eq!(
            serde_json::Value::Array(resolve_ops(ops, &symbols).unwrap()),
            serde_json::json!([{"op": "drop_batch"}, {"op": "slice", "axis": -1, "start": 1536, "len": 768}, {"op": "reshape", "shape": [3, 12, 64]}, {"op": "permute", "axes": [1, 0, 2]}])
        );
    }
}
