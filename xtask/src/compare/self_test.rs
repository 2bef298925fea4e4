//! `compare --self-test`: the comparison must pass on a clean run and catch a
//! single element moved by 1e-2, naming it.

use anyhow::{bail, ensure, Context, Result};

use super::metrics::{read_tensor, unravel};
use super::{compare, entries, Options};
use crate::project::Project;

/// The comparison on the default run must pass, and a copy of that run with one
/// element of the first checkpoint changed by 1e-2 must fail, naming that
/// checkpoint and element. Returns both verdicts in one line.
pub fn self_test(project: &Project) -> Result<String> {
    let out = project.work_dir().join("compare-self-test");
    let manifest = project.root().join("manifests/gpt2.yaml");
    let opts = Options::new(&manifest, None, "Hello world", out.join("clean"));
    let clean = compare(project, &opts)?;
    if let Some(why) = clean.failure {
        bail!("the unmodified run fails: {why}");
    }
    let entries = entries(
        &llorch_checkpoint_spec::manifest::Manifest::load(&manifest)?,
        &[],
    )?;
    let victim = entries.first().context("the manifest has no checkpoint")?;
    let run = out.join("clean/llama");
    let copy = out.join("perturbed-run");
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy)?;
    for entry in std::fs::read_dir(&run)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name()))?;
        }
    }
    let file = copy.join(format!("{}.bin", victim.stem));
    let tensor = read_tensor(&file)?;
    let element = tensor.data.len() / 3; // somewhere inside, not the first value
    let mut bytes = std::fs::read(&file)?;
    let at = 4 + 8 * tensor.shape.len() + 4 * element;
    let v = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) + 1e-2;
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    std::fs::write(&file, &bytes)?;
    let opts = Options {
        out: out.join("perturbed"),
        run: Some(copy),
        ..opts
    };
    let perturbed = compare(project, &opts)?;
    let why = perturbed
        .failure
        .context("a checkpoint perturbed by 1e-2 passed the comparison")?;
    let index = format!("{:?}", unravel(element, &tensor.shape));
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
