//! `cargo xtask fuzz`: the readers of files other programs write, under
//! libFuzzer (cargo-fuzz, nightly): checkpoint and candidate files (`.bin`,
//! `.npy`), manifests with the shape resolver, and `run.json`.
//!
//! The GGUF header is not among them: ggml's own `gguf_init_from_file` reads
//! it (fuzzed upstream under OSS-Fuzz), and our code only asks it for keys.
//!
//! Seeds are real files: a run of the extractor on the default GPT-2 in both
//! formats, its `run.json`, and the project's manifests. libFuzzer runs with a
//! 512 MB allocation limit, so a header that makes a reader allocate for data
//! the bytes do not hold is a finding, like a panic.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::cmd;

use crate::project::Project;
use crate::runs::extractor::ExtractorRun;

#[derive(clap::Args)]
pub struct Fuzz {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only this target (repeatable) [default: all of them].
    #[arg(long = "target", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    targets: Vec<String>,
}

/// The fuzz targets of `extractor/fuzz`.
pub const TARGETS: [&str; 3] = ["checkpoint_file", "manifest", "run_record"];

/// cargo-fuzz, pinned, installed into `target/llorch/tools` when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What one target's run gave: libFuzzer's final figures.
pub struct Outcome {
    pub seconds: f64,
    pub executions: u64,
    pub exec_per_sec: u64,
    /// Coverage edges and features reached (libFuzzer's `cov:` and `ft:`).
    pub coverage: u64,
    pub features: u64,
    pub corpus: usize,
    /// The input that crashed the target, if one did.
    pub crash: Option<PathBuf>,
    pub log: PathBuf,
}

impl Outcome {
    pub fn summary(&self) -> String {
        format!(
            "{} executions ({}/s) in {:.0} s, coverage {} edges / {} features, corpus {}, {}",
            self.executions,
            self.exec_per_sec,
            self.seconds,
            self.coverage,
            self.features,
            self.corpus,
            match &self.crash {
                None => "no finding".to_string(),
                Some(input) => format!("FINDING: {} (log {})", input.display(), self.log.display()),
            }
        )
    }
}

/// How long a target runs: wall-clock for exploration, or a fixed seed and
/// number of inputs (verify: a budget that does not depend on the machine's
/// speed; the seeds' `run.json` timings still differ from run to run).
#[derive(Clone, Copy)]
pub enum Budget {
    Seconds(u64),
    Runs { seed: u64, runs: u64 },
}

impl Budget {
    fn flags(self) -> Vec<String> {
        match self {
            Budget::Seconds(s) => vec![format!("-max_total_time={s}")],
            Budget::Runs { seed, runs } => vec![format!("-seed={seed}"), format!("-runs={runs}")],
        }
    }
}

impl Fuzz {
    pub fn run(self, project: &Project) -> Result<()> {
        let targets: Vec<&str> = match self.targets.is_empty() {
            true => TARGETS.to_vec(),
            false => self.targets.iter().map(String::as_str).collect(),
        };
        let fuzzer = Fuzzer::prepare(project)?;
        let mut findings = 0;
        for target in targets {
            let outcome = fuzzer.run(target, Budget::Seconds(self.seconds))?;
            println!("{target:<16} {}", outcome.summary());
            findings += outcome.crash.is_some() as usize;
        }
        if findings > 0 {
            bail!(
                "{findings} target(s) found an input that crashes them; reproduce with \
                 `cargo +nightly fuzz run --fuzz-dir extractor/fuzz TARGET INPUT`"
            );
        }
        Ok(())
    }
}

/// Whether `cargo +nightly` works here.
pub fn nightly_available() -> bool {
    Command::new("cargo")
        .args(["+nightly", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// cargo-fuzz and the seed runs, ready to run any target.
pub struct Fuzzer<'a> {
    project: &'a Project,
    cargo_fuzz: PathBuf,
    seed_runs: Vec<PathBuf>,
}

impl<'a> Fuzzer<'a> {
    pub fn prepare(project: &'a Project) -> Result<Self> {
        if !nightly_available() {
            bail!("fuzzing needs the nightly toolchain: rustup toolchain install nightly");
        }
        Ok(Fuzzer {
            project,
            cargo_fuzz: ensure_cargo_fuzz(project)?,
            seed_runs: seed_runs(project)?,
        })
    }

    /// Builds (once) and runs `target` within `budget` on its seeded corpus.
    pub fn run(&self, target: &str, budget: Budget) -> Result<Outcome> {
        let dir = self.project.work_dir().join("fuzz");
        let corpus = dir.join("corpus").join(target);
        seed(self.project, target, &self.seed_runs, &corpus)?;
        let artifacts = dir.join("artifacts").join(target);
        let logs = dir.join("logs");
        std::fs::create_dir_all(&artifacts)?;
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{target}.log"));
        crate::step::note(
            "fuzz",
            &format!(
                "{target}: building, then fuzzing (log {})",
                self.project.shown(&log)
            ),
        );
        let started = Instant::now();
        let output = Command::new(&self.cargo_fuzz)
            .current_dir(self.project.root())
            .env("RUSTUP_TOOLCHAIN", "nightly")
            .args([
                "fuzz",
                "run",
                "--fuzz-dir",
                "extractor/fuzz",
                "--target-dir",
            ])
            .arg(dir.join("target"))
            .arg(target)
            .arg(&corpus)
            .arg("--")
            .args(budget.flags())
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .args([
                "-print_final_stats=1",
                "-malloc_limit_mb=512",
                "-rss_limit_mb=2048",
                "-max_len=65536",
                "-timeout=10",
            ])
            .output()
            .context("cannot run cargo-fuzz")?;
        let text = [output.stdout, output.stderr].concat();
        std::fs::write(&log, &text)?;
        let text = String::from_utf8_lossy(&text);
        let crash = text.lines().find_map(|l| {
            l.split_once("Test unit written to ")
                .map(|(_, p)| PathBuf::from(p.trim()))
        });
        if !output.status.success() && crash.is_none() {
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            bail!(
                "cargo fuzz run {target} failed without a finding:\n{}\n(whole log: {})",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                log.display()
            );
        }
        outcome(&text, started, &corpus, crash, log)
    }
}

/// libFuzzer's final figures, from its `stat::` lines and last status line.
fn outcome(
    text: &str,
    started: Instant,
    corpus: &Path,
    crash: Option<PathBuf>,
    log: PathBuf,
) -> Result<Outcome> {
    let stat = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The last status line: `#N  DONE   cov: C ft: F corp: ...`.
    let status = text
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains("cov:"))
        .unwrap_or("");
    let after = |key: &str| {
        status
            .split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Outcome {
        seconds: started.elapsed().as_secs_f64(),
        executions: stat("number_of_executed_units"),
        exec_per_sec: stat("average_exec_per_sec"),
        coverage: after("cov:"),
        features: after("ft:"),
        corpus: std::fs::read_dir(corpus)?.count(),
        crash,
        log,
    })
}

/// cargo-fuzz on the PATH, or the pinned one in `target/llorch/tools/cargo-fuzz`.
fn ensure_cargo_fuzz(project: &Project) -> Result<PathBuf> {
    let root = project.tools_dir().join("cargo-fuzz");
    let local = root.join("bin/cargo-fuzz");
    if local.exists() {
        return Ok(local);
    }
    if Command::new("cargo-fuzz")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(PathBuf::from("cargo-fuzz"));
    }
    crate::step::note(
        "fuzz",
        &format!(
            "installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (about two minutes)",
            project.shown(&root)
        ),
    );
    let sh = project.shell()?;
    cmd!(
        sh,
        "cargo install --quiet --locked --version {CARGO_FUZZ_VERSION} --root {root} cargo-fuzz"
    )
    .quiet()
    .run()
    .context("cannot install cargo-fuzz from crates.io")?;
    Ok(local)
}

/// The first time, fills `corpus` with real files the project writes.
fn seed(project: &Project, target: &str, runs: &[PathBuf], corpus: &Path) -> Result<()> {
    if corpus.exists() && std::fs::read_dir(corpus)?.next().is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(corpus)?;
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    match target {
        "checkpoint_file" => {
            for run in runs {
                for entry in std::fs::read_dir(run)? {
                    let path = entry?.path();
                    if matches!(
                        path.extension().and_then(|e| e.to_str()),
                        Some("bin" | "npy")
                    ) {
                        seeds.push((file_name(&path), std::fs::read(&path)?));
                    }
                }
            }
        }
        "manifest" => {
            // GPT-2's symbols for a 2-token pass, then the manifest's text.
            let symbols: Vec<u8> = [768i64, 12, 12, 64, 768, 3072, 50257, 512, 2, 2]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            for entry in std::fs::read_dir(project.root().join("manifests"))? {
                let path = entry?.path();
                seeds.push((
                    file_name(&path),
                    [symbols.clone(), std::fs::read(&path)?].concat(),
                ));
            }
        }
        _ => {
            for run in runs {
                seeds.push((
                    format!("{}-run.json", file_name(run)),
                    std::fs::read(run.join("run.json"))?,
                ));
            }
        }
    }
    for (name, bytes) in seeds {
        std::fs::write(corpus.join(name), bytes)?;
    }
    Ok(())
}

/// The extractor's nine GPT-2 checkpoints of `Hello world`, in `.bin` and `.npy`.
fn seed_runs(project: &Project) -> Result<Vec<PathBuf>> {
    let dir = project.work_dir().join("fuzz/seed-runs");
    let exe =
        crate::llama_cpp::build::pinned_extractor(project, crate::llama_cpp::build::Backend::Cpu)?;
    let model = crate::models::model::default_model(project)?;
    let manifest = project.root().join("manifests/gpt2.yaml");
    let sh = project.shell()?;
    let mut runs = Vec::new();
    for format in ["bin", "npy"] {
        let out = dir.join(format);
        if !out.join("run.json").exists() {
            ExtractorRun::new(&exe, &model, &out)
                .manifest(&manifest)
                .prompt("Hello world")
                .generate(1)
                .args(["--format", format])
                .run(&sh)
                .context("the seed run of the extractor failed")?;
        }
        runs.push(out);
    }
    Ok(runs)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}
