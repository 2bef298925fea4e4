//! What is compared: the manifest's checkpoints, one per layer, in graph
//! order, each with the reference tensor it is compared with; and the
//! reference variants the verdict can be taken against.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use llorch_checkpoint_spec::format::Format;
use llorch_checkpoint_spec::manifest::Manifest;
use llorch_checkpoint_spec::record::RunRecord;

use crate::overrides::{self, Override};
use llorch_checkpoint_report::findings::Entry;

/// The manifest's checkpoints in graph order, `--tolerance` applied; each
/// must name its reference.
pub fn entries(manifest: &Manifest, overrides: &[Override]) -> Result<Vec<Entry>> {
    manifest
        .graph_order()
        .into_iter()
        .map(|cp| {
            let reference = cp.reference.as_ref().with_context(|| {
                format!("checkpoint `{}` has no `reference:` (which PyTorch tensor it corresponds to); add one to compare it", cp.id)
            })?;
            let n = cp.shape.len();
            let head_axis = cp
                .shape
                .iter()
                .position(|d| matches!(d.to_string().trim(), "n_head" | "n_head_kv"))
                .map(|ggml_axis| n - 1 - ggml_axis);
            Ok(Entry {
                id: cp.id.clone(),
                layer: cp.layer,
                head_axis,
                stem: cp.file_stem.clone(),
                capture: reference.capture.clone(),
                ops: reference.ops.clone(),
                tolerance: overrides::apply(overrides, &cp.id, &cp.tensor, cp.tolerance),
            })
        })
        .collect()
}

/// The run record of a run directory the comparison can read.
pub fn read_run(dir: &Path) -> Result<RunRecord> {
    let record = RunRecord::read(dir)?;
    ensure!(
        record.format == Format::Bin,
        "{}: compare reads .bin checkpoints; rerun the extractor with --format bin",
        dir.join("run.json").display()
    );
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Manifest {
        Manifest::parse(&format!("architecture: gpt2\n{text}")).unwrap()
    }

    #[test]
    fn entries_come_in_graph_order_and_each_needs_a_reference() {
        let m = manifest("layers: [0, 1]\ncheckpoints:\n  - {id: a, tensor: 'x-{layer}', shape: [1], file: 'a{layer}', reference: {capture: 'h.{layer}.ln_1'}}\n  - {id: b, tensor: 'y-{layer}', shape: [1], file: 'b{layer}', reference: {capture: 'h.{layer}.mlp'}}\n");
        let keys: Vec<_> = entries(&m, &[])
            .unwrap()
            .iter()
            .map(|e| (e.key(), e.capture.clone()))
            .collect();
        assert_eq!(
            keys,
            [
                ("a@0".into(), "h.0.ln_1".into()),
                ("b@0".into(), "h.0.mlp".into()),
                ("a@1".into(), "h.1.ln_1".into()),
                ("b@1".into(), "h.1.mlp".into())
            ]
        );
        let m = manifest("checkpoints:\n  - {id: c, tensor: t, shape: [1], file: f}\n");
        let err = entries(&m, &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("checkpoint `c` has no `reference:`"),
            "{err}"
        );
    }

    #[test]
    fn a_run_record_of_a_future_schema_is_refused_naming_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = serde_json::to_value(llorch_checkpoint_spec::record::example()).unwrap();
        record["schema_version"] = 99.into();
        std::fs::write(dir.path().join("run.json"), record.to_string()).unwrap();
        let err = format!("{:#}", read_run(dir.path()).unwrap_err());
        assert!(err.contains("schema version 99 is newer"), "{err}");
    }
}
