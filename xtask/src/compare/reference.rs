//! The reference job: the checkpoints' captures and resolved layout ops go to
//! `xtask/python/reference.py`, which writes one `.npy` per checkpoint and
//! reference variant.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_spec::manifest::{Op, Symbols};
use llorch_checkpoint_spec::record::RunRecord;
use xshell::cmd;

use super::metrics::read_tensor;
use super::{Entry, VARIANTS};
use crate::project::Project;

/// What the reference script says of itself (`reference.json`).
#[derive(serde::Deserialize, serde::Serialize)]
pub struct Info {
    /// transformers' class, e.g. `LlamaForCausalLM`.
    pub model: String,
    /// Per variant, the greedy next token after the prompt.
    pub next_token: std::collections::BTreeMap<String, i64>,
}

/// Runs the Python reference; a missing package or a broken venv ends in one paragraph with the fix.
pub fn build_reference(
    project: &Project,
    model: &Path,
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
        let shape = read_tensor(&run.join(format!("{}.bin", e.stem)))?.shape;
        checkpoints.push(serde_json::json!({
            "key": e.key(), "stem": e.stem, "capture": e.capture, "shape": shape,
            "ops": resolve_ops(&e.ops, &record.symbols).with_context(|| format!("checkpoint `{}`", e.id))?,
        }));
    }
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out)?;
    let job = out.join("job.json");
    let body = serde_json::json!({ "gguf": model, "tokens": record.tokens, "out": out, "variants": VARIANTS, "threads": 2, "checkpoints": checkpoints });
    std::fs::write(&job, serde_json::to_vec_pretty(&body)?)?;
    // LLORCH_REFERENCE_PYTHON: another interpreter (to check what happens without torch).
    let python = match std::env::var_os("LLORCH_REFERENCE_PYTHON") {
        Some(p) => Ok(PathBuf::from(p)),
        None => crate::python::ensure(project),
    };
    let python = python.context(
        "the PyTorch reference needs the project's Python environment (torch, transformers, numpy from PyPI, about 5.6 GB). \
         `cargo xtask compare` creates it in target/llorch/pyenv; where PyPI cannot be reached it cannot, and nothing can be compared",
    )?;
    let script = project.root().join("xtask/python/reference.py");
    let sh = project.shell()?;
    let result = cmd!(sh, "{python} {script} {job}")
        .quiet()
        .ignore_status()
        .output()
        .context("cannot start the project's Python")?;
    if !result.status.success() {
        let stderr = String::from_utf8_lossy(&result.stderr);
        let message = stderr
            .lines()
            .filter(|l| l.starts_with("reference: "))
            .map(|l| l.trim_start_matches("reference: "))
            .collect::<Vec<_>>();
        if message.is_empty() {
            bail!(
                "the PyTorch reference ({}) failed:\n{}",
                script.display(),
                stderr.trim_end()
            );
        }
        bail!(
            "the PyTorch reference could not be built: {}",
            message.join(" ")
        );
    }
    eprint!("{}", String::from_utf8_lossy(&result.stdout));
    let info = out.join("reference.json");
    serde_json::from_slice(&std::fs::read(&info)?)
        .with_context(|| format!("{} is not what reference.py writes", info.display()))
}

/// The ops as the Python script reads them: symbols resolved to numbers.
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
