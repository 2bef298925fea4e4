//! `cargo xtask kills`: the output directory under fire. Extractor runs into
//! one directory, each with a random `--layers`, killed by SIGKILL, SIGINT or
//! SIGTERM at a random moment of a random phase (decode, writing, commit).
//! After each, the directory must hold exactly one complete run (every file
//! its run.json lists, with its sha256, and nothing else:
//! `llorch-checkpoint-validate`), and the next run goes into it. Seeded, so a
//! failure replays; verify runs a fixed budget, this command as many as asked.
//!
//! The runs use the extractor built with its test hooks: `--test-phases`
//! says on stderr which phase the run is in, and stretches the commit so that
//! a signal can land inside it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::project::Project;
use crate::step::Step;

#[derive(clap::Args)]
pub struct Kills {
    /// Killed runs into the one directory.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Seed of the choices (layers, signal, phase, moment): the same seed replays the same campaign.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A GGUF path or a catalogue model [default: the synthetic GPT-2 of `cargo xtask model`].
    #[arg(long)]
    model: Option<String>,
    /// Checkpoint manifest [default: the catalogue model's, else manifests/gpt2.yaml].
    #[arg(long)]
    manifest: Option<PathBuf>,
}

impl Kills {
    pub fn run(self, project: &Project) -> Result<()> {
        crate::llama_cpp::build::pinned_extractor(project, crate::llama_cpp::build::Backend::Cpu)?;
        let (model, manifest) = crate::models::model::model_and_manifest(
            project,
            self.model.as_deref(),
            self.manifest.as_deref(),
        )?;
        let campaign =
            Campaign::prepare(project, model, manifest, &project.work_dir().join("kills"))?;
        let tally = campaign.run(project, self.runs, self.seed)?;
        println!("{}", tally.summary());
        ensure!(
            tally.broken.is_empty(),
            "broken states:\n{}",
            tally.broken.join("\n")
        );
        Ok(())
    }
}

/// Where a run was when its signal was sent, as its `--test-phases` lines said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Loading the model (no marker yet).
    Load,
    /// A pass computing (and copying the nodes it captures).
    Decode,
    /// The writer writing a pass's files.
    Writing,
    /// Writing logits and run.json, up to the swap.
    Commit,
    /// After the swap: the previous run being removed.
    Published,
    /// The run had ended before the signal.
    Ended,
}

impl Phase {
    fn from_marker(line: &str) -> Option<Phase> {
        match line.strip_prefix("test hook: phase ")? {
            "decode" => Some(Phase::Decode),
            "writing" => Some(Phase::Writing),
            "commit" => Some(Phase::Commit),
            "published" => Some(Phase::Published),
            _ => None,
        }
    }
}

const SIGNALS: [&str; 3] = ["KILL", "INT", "TERM"];
const LAYERS: [&str; 4] = ["all", "-1", "0,1,2", "5"];

pub struct Campaign {
    extractor: PathBuf,
    validator: PathBuf,
    model: PathBuf,
    manifest: PathBuf,
    /// The one output directory every run writes to.
    out: PathBuf,
}

#[derive(Default)]
pub struct Tally {
    pub runs: usize,
    kills: BTreeMap<(&'static str, Phase), usize>,
    /// Each broken state: the run, what it was doing, what the validator said.
    pub broken: Vec<String>,
    seconds: f64,
}

impl Campaign {
    /// Builds the extractor with its test hooks (debug, beside what `cargo
    /// test` built) and starts from an empty directory under `work`.
    pub fn prepare(
        project: &Project,
        model: PathBuf,
        manifest: PathBuf,
        work: &Path,
    ) -> Result<Campaign> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "llorch-checkpoint-extractor",
                "--features",
                "test-hooks",
                "--bins",
            ])
            .current_dir(project.root())
            .status()?;
        ensure!(
            status.success(),
            "cannot build the extractor with its test hooks"
        );
        let bin = project.root().join("target/debug");
        let _ = std::fs::remove_dir_all(work);
        std::fs::create_dir_all(work)?;
        Ok(Campaign {
            extractor: bin.join("llorch-checkpoint-extractor"),
            validator: bin.join("llorch-checkpoint-validate"),
            model,
            manifest,
            out: work.join("run"),
        })
    }

    /// `runs` killed runs, then one that must finish and leave nothing beside the directory.
    pub fn run(&self, project: &Project, runs: usize, seed: u64) -> Result<Tally> {
        let started = Instant::now();
        let step = Step::start(
            project,
            "kills",
            &format!("{runs} killed runs into one directory (seed {seed})"),
        )?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tally = Tally::default();
        for i in 0..runs {
            // Once the directory holds a run, it always must.
            let had_a_run = self.out.exists();
            let (signal, phase) = self.killed_run(&mut rng)?;
            *tally.kills.entry((signal, phase)).or_default() += 1;
            tally.runs += 1;
            if let Err(defect) = self.one_complete_run(had_a_run) {
                tally
                    .broken
                    .push(format!("run {i} (SIG{signal} in {phase:?}): {defect:#}"));
            }
            step.progress(i as u64 + 1, runs as u64);
        }
        self.final_run().context("the run after the campaign")?;
        tally.seconds = started.elapsed().as_secs_f64();
        step.finish(&tally.summary());
        Ok(tally)
    }

    /// One run with a random `--layers`, signalled at a random moment of a random phase.
    fn killed_run(&self, rng: &mut ChaCha8Rng) -> Result<(&'static str, Phase)> {
        let layers = LAYERS[rng.random_range(0..LAYERS.len())];
        let signal = SIGNALS[rng.random_range(0..SIGNALS.len())];
        let (target, window_ms) = [
            (Phase::Decode, 40),
            (Phase::Writing, 15),
            (Phase::Commit, 70),
        ][rng.random_range(0..3)];
        let delay = Duration::from_millis(rng.random_range(0..window_ms));
        let mut child = Command::new(&self.extractor)
            .args(["-t", "2", "--test-phases", &format!("--layers={layers}")])
            .arg("-m")
            .arg(&self.model)
            .arg("--manifest")
            .arg(&self.manifest)
            .arg("--out")
            .arg(&self.out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the extractor")?;
        let markers = phase_markers(child.stderr.take().expect("piped"));
        let mut phase = wait_for(&markers, target)?;
        std::thread::sleep(delay);
        phase = markers.try_iter().last().unwrap_or(phase);
        if child.try_wait()?.is_some() {
            phase = Phase::Ended;
        } else {
            send(child.id(), signal)?;
        }
        let status = child.wait()?;
        check_exit(status, signal, phase)?;
        Ok((signal, phase))
    }

    /// The directory holds exactly one complete run (or, before any run
    /// finished, nothing at all).
    fn one_complete_run(&self, must_exist: bool) -> Result<()> {
        if !self.out.exists() && !must_exist {
            return Ok(());
        }
        let out = Command::new(&self.validator).arg(&self.out).output()?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stdout);
            let failures: Vec<&str> = said.lines().filter(|l| !l.starts_with("ok ")).collect();
            bail!(
                "{}{}",
                failures.join("\n"),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A run left alone finishes, validates, and nothing stays beside its directory.
    fn final_run(&self) -> Result<()> {
        let out = Command::new(&self.extractor)
            .args(["-t", "2", "-m"])
            .arg(&self.model)
            .arg("--manifest")
            .arg(&self.manifest)
            .arg("--out")
            .arg(&self.out)
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.one_complete_run(true)?;
        let parent = self.out.parent().expect("under work");
        let beside: Vec<String> = std::fs::read_dir(parent)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        ensure!(
            beside == ["run"],
            "left beside the output directory: {beside:?}"
        );
        Ok(())
    }
}

/// The run's phase markers, as they come on its stderr.
fn phase_markers(stderr: std::process::ChildStderr) -> Receiver<Phase> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(phase) = Phase::from_marker(&line) {
                let _ = tx.send(phase);
            }
        }
    });
    rx
}

/// Waits until the run reaches `target` (or a later phase, or its end).
fn wait_for(markers: &Receiver<Phase>, target: Phase) -> Result<Phase> {
    let mut last = Phase::Load;
    while last < target {
        last = match markers.recv_timeout(Duration::from_secs(120)) {
            Ok(phase) => phase,
            Err(RecvTimeoutError::Disconnected) => return Ok(Phase::Ended),
            Err(RecvTimeoutError::Timeout) => bail!("the run did not reach {target:?} in 120 s"),
        };
    }
    Ok(last)
}

fn send(pid: u32, signal: &str) -> Result<()> {
    // The run may end between the check and the signal: kill then fails, which is fine.
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context("cannot run kill")?;
    Ok(())
}

/// SIGKILL kills; SIGINT and SIGTERM end the run with 130; a run that ended first succeeded.
fn check_exit(status: ExitStatus, signal: &str, phase: Phase) -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    let fine = status.success()
        || status.code() == Some(130)
        || (signal == "KILL" && status.signal() == Some(9));
    ensure!(
        fine,
        "the run ended with {status} after SIG{signal} in {phase:?}"
    );
    Ok(())
}

impl Tally {
    pub fn summary(&self) -> String {
        let by = |pick: &dyn Fn(&(&str, Phase)) -> bool| -> usize {
            self.kills
                .iter()
                .filter(|(k, _)| pick(k))
                .map(|(_, n)| n)
                .sum()
        };
        let signals: Vec<String> = SIGNALS
            .iter()
            .map(|s| format!("SIG{s} {}", by(&|k| k.0 == *s)))
            .collect();
        let phases: Vec<String> = [
            Phase::Load,
            Phase::Decode,
            Phase::Writing,
            Phase::Commit,
            Phase::Published,
            Phase::Ended,
        ]
        .iter()
        .map(|p| format!("{} {}", format!("{p:?}").to_lowercase(), by(&|k| k.1 == *p)))
        .collect();
        format!(
            "{} runs in {:.0} s; signals: {}; phase at the signal: {}; broken states: {}",
            self.runs,
            self.seconds,
            signals.join(", "),
            phases.join(", "),
            self.broken.len()
        )
    }
}
