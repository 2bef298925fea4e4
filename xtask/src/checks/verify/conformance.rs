//! verify's sample of the conformance table (`docs/conformance.json`, made
//! by `cargo xtask conformance`): the table made with the current versions,
//! its page generated from its JSON, and a few architectures, one of each
//! outcome the table records, tried again from nothing and held to their
//! recorded outcomes (a divergence to its first diverging checkpoint).

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::ctx::Ctx;
use super::report::Report;
use crate::runs::conformance::{try_one, Row, Table, Versions};

/// One architecture of each outcome the table records (a test keeps it so):
/// olmo2 agrees; deepseek_v3 diverges (the converter writes no gating
/// function, so llama.cpp gates its experts by softmax, not sigmoid);
/// transformers cannot build dbrx from its own config; the converter wants
/// a key (`rotary_pct`) transformers 5's cohere2 config lacks; llama.cpp
/// refuses exaone_moe's GGUF (no gating function there either).
pub const SAMPLE: [&str; 5] = ["olmo2", "deepseek_v3", "dbrx", "cohere2", "exaone_moe"];

/// The table as generated.
pub fn recorded(root: &Path) -> Result<Table> {
    let path = root.join("docs/conformance.json");
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a conformance table", path.display()))
}

pub fn checks(report: &mut Report, ctx: &Ctx<'_>) {
    report.section("conformance: a sample of docs/conformance.json tried again from nothing");
    let t = Instant::now();
    let table = match recorded(ctx.project.root()) {
        Ok(table) => table,
        Err(err) => {
            report.check("docs/conformance.json read", t, Err(err));
            return;
        }
    };
    report.check(
        "docs/conformance.json was made with the pinned llama.cpp, transformers and tiny.py of this commit",
        t,
        current(ctx, &table),
    );
    for arch in SAMPLE {
        let t = Instant::now();
        let Some(row) = table.rows.iter().find(|r| r.arch == arch) else {
            report.check(
                &format!("{arch} is in the table"),
                t,
                Err(anyhow::anyhow!("no row")),
            );
            continue;
        };
        report.check(
            &format!("tiny {arch}: {} as the table records", row.outcome.name()),
            t,
            again(ctx, row),
        );
    }
}

fn current(ctx: &Ctx<'_>, table: &Table) -> Result<String> {
    let now = Versions::now(ctx.project)?;
    ensure!(
        table.versions == now,
        "the table was made with {:?}, this commit has {now:?}: regenerate it with `cargo xtask conformance`",
        table.versions
    );
    Ok(table.counts_line())
}

/// `recorded`'s architecture tried again: the same outcome (and first divergence).
fn again(ctx: &Ctx<'_>, recorded: &Row) -> Result<String> {
    let out = ctx.work.join("conformance").join(&recorded.arch);
    let row = try_one(
        ctx.project,
        &recorded.arch,
        &recorded.class,
        recorded.seed,
        &out,
    );
    let _ = std::fs::remove_dir_all(&out);
    let first = |r: &Row| r.finding.as_ref().map(|f| f.checkpoint.clone());
    ensure!(
        row.outcome == recorded.outcome && first(&row) == first(recorded),
        "{}: now {} ({}), recorded {} ({})",
        recorded.arch,
        row.outcome.name(),
        row.reason,
        recorded.outcome.name(),
        recorded.reason
    );
    Ok(format!("{} in {:.0} s", row.reason, row.seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_page_is_generated_from_the_json_and_the_sample_covers_every_outcome() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let table = recorded(root).unwrap();
        let page = std::fs::read_to_string(root.join("docs/conformance.md")).unwrap();
        assert!(
            page == table.markdown(),
            "docs/conformance.md is not what docs/conformance.json makes: regenerate both with `cargo xtask conformance`"
        );
        let outcome = |arch: &str| {
            table
                .rows
                .iter()
                .find(|r| r.arch == arch)
                .map(|r| r.outcome)
        };
        let sampled: BTreeSet<_> = SAMPLE
            .iter()
            .map(|a| outcome(a).expect("sampled arch in the table"))
            .collect();
        let recorded: BTreeSet<_> = table.rows.iter().map(|r| r.outcome).collect();
        assert_eq!(
            sampled, recorded,
            "the sample holds one architecture of each outcome"
        );
        assert_eq!(SAMPLE.len(), recorded.len(), "and no more");
    }
}
