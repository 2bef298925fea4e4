//! `cargo xtask conformance`: every architecture that transformers
//! implements as a causal LM and the pinned converter registers, tried end
//! to end on a tiny random model and classified (`runs/conformance`); the
//! table written to `docs/conformance.md` and `.json` from every
//! result made with the current versions. Each result is kept
//! (`target/llorch/conformance/cache`), keyed by architecture, seed and the
//! versions that make it, so a run stopped by its budget or a signal goes
//! on where it stopped, and a second run redoes nothing.
//!
//! One architecture at a time: each comparison's two sides already use
//! every core.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use llorch_checkpoint_spec::files::write_atomically;

use crate::models::model::tiny_architectures;
use crate::project::Project;
use crate::runs::conformance::{try_one, Row, Table, Versions};

#[derive(clap::Args)]
pub struct Conformance {
    /// Only these architectures (transformers' model types, comma-separated) [default: every one].
    #[arg(long, value_delimiter = ',', value_name = "ARCH,...")]
    arch: Vec<String>,
    /// Print the architectures both transformers and the pinned converter know, and stop.
    #[arg(long)]
    list: bool,
    /// Seed of the tiny models' weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start no architecture after this many minutes; the results so far are kept and written,
    /// and the next run goes on from there.
    #[arg(long, value_name = "MINUTES")]
    budget: Option<f64>,
    /// Try each architecture again, even where a result made with the same versions is kept.
    #[arg(long)]
    fresh: bool,
    /// Where the table goes (and its JSON beside it, .json) [default: docs/conformance.md].
    #[arg(long, value_name = "FILE")]
    table: Option<PathBuf>,
}

impl Conformance {
    pub fn run(self, project: &Project) -> Result<()> {
        let known = tiny_architectures(project)?;
        if self.list {
            for (arch, class) in &known {
                println!("{arch:<28} {class}");
            }
            println!("{} architectures", known.len());
            return Ok(());
        }
        let chosen = self.chosen(&known)?;
        let versions = Versions::now(project)?;
        let cache = Cache::new(project, &versions, self.seed);
        let started = Instant::now();
        let mut timed = Vec::new();
        for (i, arch) in chosen.iter().enumerate() {
            if let Some(row) = cache.get(arch).filter(|_| !self.fresh) {
                println!("[{}/{}] {}", i + 1, chosen.len(), said(&row, "kept"));
                continue;
            }
            if self
                .budget
                .is_some_and(|m| started.elapsed().as_secs_f64() > m * 60.0)
            {
                println!(
                    "budget of {} min spent: {} architectures left for the next run",
                    self.budget.unwrap_or(0.0),
                    chosen.len() - i
                );
                break;
            }
            let row = try_one(project, arch, &known[arch], self.seed, &cache.out(arch));
            cache.put(&row)?;
            timed.push(row.seconds);
            let left = chosen[i + 1..]
                .iter()
                .filter(|a| self.fresh || cache.get(a).is_none())
                .count();
            println!(
                "[{}/{}] {}; {}",
                i + 1,
                chosen.len(),
                said(&row, &format!("{:.0} s", row.seconds)),
                eta(&timed, left)
            );
        }
        let rows: Vec<Row> = known.keys().filter_map(|a| cache.get(a)).collect();
        let table = Table::new(versions, known.len(), rows);
        let md = self
            .table
            .clone()
            .unwrap_or_else(|| project.root().join("docs/conformance.md"));
        if let Some(dir) = md.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_atomically(&md, table.markdown().as_bytes())?;
        write_atomically(
            &md.with_extension("json"),
            &serde_json::to_vec_pretty(&table)?,
        )?;
        println!(
            "{} in {}\ntable: {}",
            table.counts_line(),
            crate::step::seconds(started.elapsed()),
            md.display()
        );
        Ok(())
    }

    /// The architectures to try: `--arch`'s, each checked, or every one.
    fn chosen(&self, known: &BTreeMap<String, String>) -> Result<Vec<String>> {
        if self.arch.is_empty() {
            return Ok(known.keys().cloned().collect());
        }
        for arch in &self.arch {
            if !known.contains_key(arch) {
                bail!("--arch {arch}: not one of the {} architectures both transformers and the pinned converter know (`cargo xtask conformance --list`)", known.len());
            }
        }
        Ok(self.arch.clone())
    }
}

/// A row in one line.
fn said(row: &Row, time: &str) -> String {
    format!(
        "{}: {} ({time}): {}",
        row.arch,
        row.outcome.name(),
        row.reason
    )
}

/// Time left at the mean pace so far.
fn eta(timed: &[f64], left: usize) -> String {
    let mean = timed.iter().sum::<f64>() / timed.len().max(1) as f64;
    let left_s = mean * left as f64;
    format!(
        "{left} left, about {} more",
        crate::step::seconds(Duration::from_secs_f64(left_s))
    )
}

/// The kept results: one file per architecture and seed, with the versions it was made with.
struct Cache {
    dir: PathBuf,
    versions: Versions,
    seed: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    versions: Versions,
    row: Row,
}

impl Cache {
    fn new(project: &Project, versions: &Versions, seed: u64) -> Cache {
        Cache {
            dir: project.work_dir().join("conformance"),
            versions: versions.clone(),
            seed,
        }
    }

    /// Where `arch`'s comparison is written.
    fn out(&self, arch: &str) -> PathBuf {
        self.dir.join(format!("{arch}-s{}", self.seed))
    }

    fn file(&self, arch: &str) -> PathBuf {
        self.dir
            .join("cache")
            .join(format!("{arch}-s{}.json", self.seed))
    }

    /// `arch`'s row, if one made with these versions is kept.
    fn get(&self, arch: &str) -> Option<Row> {
        let bytes = std::fs::read(self.file(arch)).ok()?;
        let kept: Kept = serde_json::from_slice(&bytes).ok()?;
        (kept.versions == self.versions).then_some(kept.row)
    }

    /// Keeps `row`, and drops its comparison's bulk (both sides' tensors), keeping the reports.
    fn put(&self, row: &Row) -> Result<()> {
        let kept = Kept {
            versions: self.versions.clone(),
            row: row.clone(),
        };
        let file = self.file(&row.arch);
        std::fs::create_dir_all(file.parent().context("no cache directory")?)?;
        write_atomically(&file, &serde_json::to_vec_pretty(&kept)?)?;
        let out = self.out(&row.arch);
        for bulk in ["auto", "llama", "reference", "checkpoints"] {
            let _ = std::fs::remove_dir_all(out.join(bulk));
        }
        Ok(())
    }
}
