//! `compare --self-test`: the comparison must pass on a clean run and catch a
//! single element moved by 1e-2, naming it.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_spec::files::copy_run;
use llorch_checkpoint_spec::format;
use llorch_checkpoint_spec::manifest::Manifest;
use llorch_checkpoint_spec::metric::unravel;

use crate::compare::{compare, Options};
use crate::entries::entries;
use crate::sides::{Extractor, Reference};

/// The comparison of `model` on `manifest` must pass, and a copy of that run
/// with one element of the first checkpoint changed by 1e-2 must fail, naming
/// that checkpoint and element. Returns both verdicts in one line; `out`
/// holds both comparisons.
pub fn self_test(
    extractor: &dyn Extractor,
    reference: &dyn Reference,
    manifest: &Path,
    model: &Path,
    out: &Path,
) -> Result<String> {
    let opts = Options::new(manifest, model, "Hello world", out.join("clean"));
    let clean = compare(extractor, reference, &opts)?;
    if let Some(why) = clean.failure {
        bail!("the unmodified run fails: {why}");
    }
    let entries = entries(&Manifest::load(manifest)?, &[])?;
    let victim = entries.first().context("the manifest has no checkpoint")?;
    let copy = out.join("perturbed-run");
    copy_run(&out.join("clean/llama"), &copy)?;
    let file = copy.join(format!("{}.bin", victim.stem));
    let mut tensor = format::read(&file)?;
    let element = tensor.data.len() / 3; // somewhere inside, not the first value
    tensor.data[element] += 1e-2;
    format::write_file(&file, &tensor.shape, &tensor.data)?;
    let shape: Vec<usize> = tensor.shape.iter().map(|&d| d as usize).collect();
    let opts = Options {
        out: out.join("perturbed"),
        run: Some(copy),
        ..opts
    };
    let perturbed = compare(extractor, reference, &opts)?;
    let why = perturbed
        .failure
        .context("a checkpoint perturbed by 1e-2 passed the comparison")?;
    let index = format!("{:?}", unravel(element, &shape));
    ensure!(
        why.contains(&victim.id) && why.contains(&format!("element {index}")),
        "the failure does not name checkpoint {} element {index}: {why}",
        victim.id
    );
    Ok(format!(
        "{}; {} element {index} + 1e-2 is caught: {why}",
        clean.summary, victim.id
    ))
}
