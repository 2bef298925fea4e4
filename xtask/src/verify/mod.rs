//! `cargo xtask verify`: the project's test command (what CI runs).
//!
//! `cargo test --workspace`, then six groups of checks, one PASS/FAIL line
//! each with its figures, and a closing `N passed, M failed`:
//! build (clean build, unpatched build, bindings fresh, no AMX kernels,
//! formatting), runtime (with and without extraction: same token,
//! bitwise-equal logits, every checkpoint once), format (the validator on the
//! run, and on corrupted copies), performance (decode-time ratio with/without
//! extraction, throughput and peak memory with the all-layers manifest),
//! compare (every checkpoint against the PyTorch GPT-2, and a deliberate 1e-2
//! error must be caught), and real weights (SmolLM2 from PyPI: first and last
//! layer against transformers, the same next token, bitwise-equal logits).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use llorch_checkpoint_spec::record::RunRecord;
use xshell::cmd;

use crate::build::{self, Backend};
use crate::extract::ensure_extractor;
use crate::pin::{Flavour, Pin};
use crate::project::Project;

mod browser;
mod cargo_test;
mod checks;
mod rpc;
use checks::{
    candidate_caught, clean_build, corrupted_copy_rejected, logits_unchanged, no_amx,
    overhead_ratio, quietly, real_model_compare, seen_once, sliding_window_masks, throughput,
    validate, CORRUPTIONS,
};

#[derive(clap::Args)]
pub struct Verify {
    /// Skip the clean rebuilds (fresh build directory, unpatched tree): for day-to-day use.
    #[arg(long)]
    quick: bool,
    /// Fail the performance check when the steady-state decode with extraction exceeds this multiple of the time without.
    #[arg(long, default_value_t = 1.5)]
    max_overhead_ratio: f64,
    /// Steady-state passes per side for the performance ratio (alternating, in one process; medians).
    #[arg(long, default_value_t = 9)]
    perf_runs: usize,
    /// Manifest for the runtime and format checks [default: manifests/gpt2.yaml].
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// GGUF model to check [default: the synthetic GPT-2 of `cargo xtask model`].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Skip `cargo test --workspace` (when it just ran).
    #[arg(long)]
    no_tests: bool,
}

/// ~120 tokens of ordinary English: long enough for stable timings.
/// The catalogue models verify checks real weights with: one per architecture.
const REAL_MODELS: [&str; 2] = ["smollm2-135m", "gemma3-270m"];

/// Verify's fuzzing: libFuzzer's seed and inputs per target (20-30 s each on
/// two cores); `cargo xtask fuzz --seconds N` explores further.
const FUZZ_SEED: u64 = 1;
const FUZZ_RUNS: u64 = 30_000;

pub const PERF_PROMPT: &str = "The history of natural language processing generally started in the 1950s, although work can be \
found from earlier periods. In 1950, Alan Turing published an article titled Computing Machinery and Intelligence which \
proposed what is now called the Turing test as a criterion of intelligence. The Georgetown experiment in 1954 involved \
fully automatic translation of more than sixty Russian sentences into English. The authors claimed that within three or \
five years, machine translation would be a solved problem. However, real progress was much slower, and after a report \
in 1966 found that ten years of research had failed to fulfill the expectations, funding was dramatically reduced.";

struct Report {
    passed: usize,
    failed: usize,
    lines: Vec<serde_json::Value>,
    section: String,
}

impl Report {
    fn section(&mut self, name: &str) {
        self.section = name.to_string();
        println!("\n== {name}");
    }

    fn check(&mut self, name: &str, started: Instant, result: Result<String>) -> bool {
        let secs = started.elapsed().as_secs_f64();
        let (ok, text) = match &result {
            Ok(figures) => (true, figures.clone()),
            Err(err) => (false, format!("{err:#}").replace('\n', "\n        ")),
        };
        println!(
            "{} {name} ({secs:.1} s): {text}",
            if ok { "PASS" } else { "FAIL" }
        );
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        self.lines.push(serde_json::json!({ "section": self.section, "check": name, "pass": ok, "seconds": secs, "detail": text }));
        ok
    }
}

impl Verify {
    pub fn run(self, project: &Project) -> Result<()> {
        let started = Instant::now();
        let mut report = Report {
            passed: 0,
            failed: 0,
            lines: Vec::new(),
            section: String::new(),
        };
        let work = project.work_dir().join("verify");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let sh = project.shell()?;
        let manifest = match &self.manifest {
            Some(m) => std::path::absolute(m)?,
            None => project.root().join("manifests/gpt2.yaml"),
        };

        // What a failure elsewhere may hinge on, for whoever reads the log.
        println!(
            "machine: {} cores, {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            crate::doctor::free_gb(project.root()).map_or("free disk unknown".into(), |gb| {
                format!("{gb:.0} GB free under the project (a fresh run needs about 10)")
            })
        );
        println!("== setup: llama.cpp, extractor, default model");
        let t = Instant::now();
        let exe = ensure_extractor(project, Backend::Cpu)?;
        let model = match &self.model {
            Some(m) => std::path::absolute(m)?,
            None => crate::model::default_model(project)?,
        };
        println!(
            "ready in {:.1} s: {} and {}",
            t.elapsed().as_secs_f64(),
            exe.display(),
            model.display()
        );
        let validator = exe.with_file_name("llorch-checkpoint-validate");

        if !self.no_tests {
            report.section("tests");
            let t = Instant::now();
            report.check("cargo test --workspace", t, cargo_test::run(project));
        }

        report.section("build");
        if self.quick {
            println!("skip clean and unpatched builds (--quick)");
        } else {
            let t = Instant::now();
            report.check(
                "clean build of patched llama.cpp + extractor in a fresh directory",
                t,
                clean_build(project, &work),
            );
            let t = Instant::now();
            let result = build::build_llama(project, Backend::Cpu, Flavour::Unpatched, None)
                .map(|dir| format!("unpatched tree builds ({})", dir.display()));
            report.check("unpatched llama.cpp builds", t, result);
        }
        let t = Instant::now();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let result = cmd!(sh, "{cargo} xtask bindgen --check")
            .quiet()
            .run()
            .map(|()| "bindings.rs equals bindgen's output for the pinned headers".into());
        report.check(
            "bindings match the pinned headers",
            t,
            result.context("extractor/src/ffi/bindings.rs is stale or edited by hand: regenerate it with `cargo xtask bindgen`"),
        );

        let t = Instant::now();
        report.check(
            "the CPU library has no AMX kernels (they crash on AMX hosts)",
            t,
            no_amx(&sh, &exe),
        );

        let t = Instant::now();
        let result = cmd!(sh, "{cargo} fmt --all --check")
            .quiet()
            .run()
            .map(|()| "cargo fmt --check is clean".into());
        report.check("code is formatted", t, result.context("run `cargo fmt`"));

        report.section("runtime");
        let with = work.join("with");
        let without = work.join("without");
        let prompt = "Hello world";
        let run = |out: &Path, extra: &[&str]| -> Result<()> {
            quietly(cmd!(sh, "{exe} -m {model} --manifest {manifest} -p {prompt} -n 1 -t 2 --out {out} {extra...}"))
        };
        let t = Instant::now();
        let ran_with = report.check(
            "extractor runs with extraction",
            t,
            run(&with, &[]).map(|()| format!("wrote {}", with.display())),
        );
        let t = Instant::now();
        let ran_without = report.check(
            "extractor runs with --no-extract",
            t,
            run(&without, &["--no-extract"]).map(|()| "ok".into()),
        );
        if ran_with && ran_without {
            let t = Instant::now();
            match (RunRecord::read(&with), RunRecord::read(&without)) {
                (Ok(a), Ok(b)) => {
                    let result = if a.generated == b.generated {
                        Ok(format!("both generate {:?}", a.generated))
                    } else {
                        Err(anyhow::anyhow!(
                            "with extraction {:?}, without {:?}",
                            a.generated,
                            b.generated
                        ))
                    };
                    report.check("same generated token", t, result);
                    let t = Instant::now();
                    let result = if a.logits.sha256 == b.logits.sha256 {
                        Ok(format!(
                            "logits.bin sha256 {} in both runs",
                            &a.logits.sha256[..16]
                        ))
                    } else {
                        Err(anyhow::anyhow!(
                            "logits differ: {} vs {}",
                            a.logits.sha256,
                            b.logits.sha256
                        ))
                    };
                    report.check("bitwise-equal logits", t, result);
                    let t = Instant::now();
                    report.check(
                        "every manifest checkpoint seen exactly once",
                        t,
                        seen_once(&sh, &validator, &with, &manifest, &a),
                    );
                }
                (Err(err), _) | (_, Err(err)) => {
                    report.check("run records readable", t, Err(err));
                }
            }
        }

        report.section("format");
        if ran_with {
            let t = Instant::now();
            let result = validate(&sh, &validator, &with, &manifest);
            report.check(
                "checkpoint files valid (exist, parse, manifest shape, finite, sha256)",
                t,
                result,
            );
            for (defect, expect) in CORRUPTIONS {
                let t = Instant::now();
                let result = corrupted_copy_rejected(
                    &sh, &validator, &with, &manifest, &work, defect, expect,
                );
                report.check(
                    &format!("validator rejects a copy with {defect}"),
                    t,
                    result,
                );
            }
        } else {
            println!("skip: no run to check");
        }

        report.section("performance");
        let t = Instant::now();
        let result = overhead_ratio(
            &sh,
            &exe,
            &model,
            &manifest,
            &work,
            self.perf_runs,
            self.max_overhead_ratio,
        );
        report.check(
            &format!(
                "steady-state decode time with/without extraction <= {}",
                self.max_overhead_ratio
            ),
            t,
            result,
        );
        let t = Instant::now();
        let all_layers = project.root().join("manifests/gpt2-all-layers.yaml");
        report.check(
            "all-layers extraction throughput and peak memory",
            t,
            throughput(&sh, &exe, &model, &all_layers, &work),
        );

        report.section("compare");
        let t = Instant::now();
        let result = crate::compare::run_self_test(
            project,
            &crate::compare::LlamaCpp::new(project),
            &crate::compare::PyTorch::new(project),
        );
        report.check(
            "checkpoints match PyTorch GPT-2 (f64) within tolerance; a 1e-2 perturbation is caught",
            t,
            result,
        );
        let t = Instant::now();
        let page = project
            .work_dir()
            .join("compare-self-test/perturbed/report.html");
        report.check(
            "report.html renders in headless Chromium (sections, tables, pictures, links, no script)",
            t,
            browser::report_renders(&page, &work),
        );

        for name in REAL_MODELS {
            real_model_checks(&mut report, project, &sh, &exe, name, &work);
        }
        rpc_checks(&mut report, project, &sh, &exe, &model, &work);
        fuzz_checks(&mut report, project);

        let pin = Pin::load(&project.pin_file())?;
        let summary = serde_json::json!({
            "pin": pin.id(), "quick": self.quick, "seconds": started.elapsed().as_secs_f64(),
            "passed": report.passed, "failed": report.failed, "checks": report.lines,
        });
        let report_path = work.join("report.json");
        std::fs::write(&report_path, serde_json::to_vec_pretty(&summary)?)?;
        println!(
            "\nreport: {} ({:.0} s in all)",
            report_path.display(),
            started.elapsed().as_secs_f64()
        );
        println!("{} passed, {} failed", report.passed, report.failed);
        for line in &report.lines {
            if line["pass"] == false {
                let detail = line["detail"].as_str().unwrap_or_default();
                println!(
                    "  FAIL {} / {}: {}",
                    line["section"].as_str().unwrap_or_default(),
                    line["check"].as_str().unwrap_or_default(),
                    detail.lines().next().unwrap_or_default()
                );
            }
        }
        if report.failed > 0 {
            bail!("{} check(s) failed", report.failed);
        }
        Ok(())
    }
}

/// Fetch, compare and non-interference checks on one catalogue model; for a
/// sliding-window model also the window's mask.
fn real_model_checks(
    report: &mut Report,
    project: &Project,
    sh: &xshell::Shell,
    exe: &Path,
    name: &str,
    work: &Path,
) {
    report.section(&format!("real weights: {name}, from PyPI"));
    let t = Instant::now();
    let (model, manifest) = match crate::catalogue::model_and_manifest(project, Some(name), None) {
        Ok(found) => found,
        Err(err) => {
            report.check("the catalogue model is fetched and checked", t, Err(err));
            return;
        }
    };
    report.check(
        "the catalogue model is fetched and checked",
        t,
        Ok(format!("{} (sha256 as pinned)", model.display())),
    );
    let work = work.join(name);
    let t = Instant::now();
    report.check(
        "first and last layer match transformers (f64) within the manifest's tolerance; same next token",
        t,
        real_model_compare(project, &model, &manifest, &work),
    );
    let t = Instant::now();
    report.check(
        "bitwise-equal logits with and without extraction",
        t,
        logits_unchanged(sh, exe, &model, &manifest, &work),
    );
    if name == "smollm2-135m" {
        let t = Instant::now();
        report.check(
            "a candidate whose layer-7 FFN output is scaled by 1.01 diverges from llama.cpp there first",
            t,
            candidate_caught(project, &model, &manifest, &work),
        );
    }
    if name == "gemma3-270m" {
        let t = Instant::now();
        report.check(
            "a prompt past the 512-token window: sliding layer 0 gives 0 beyond it, global layer 5 does not",
            t,
            sliding_window_masks(sh, exe, &model, &manifest, &work),
        );
    }
}

/// Two RPC servers on loopback, half the layers on each (they are killed
/// when this returns, whatever happened).
fn rpc_checks(
    report: &mut Report,
    project: &Project,
    sh: &xshell::Shell,
    exe: &Path,
    gpt2: &Path,
    work: &Path,
) {
    report.section("rpc: layers on two llorch-checkpoint-rpc-servers on 127.0.0.1");
    let t = Instant::now();
    let servers = match (rpc::Server::start(exe), rpc::Server::start(exe)) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(err), _) | (_, Err(err)) => {
            report.check("two RPC servers start", t, Err(err));
            return;
        }
    };
    report.check(
        "two RPC servers start",
        t,
        Ok(format!(
            "{} and {}",
            servers[0].endpoint, servers[1].endpoint
        )),
    );
    let work = work.join("rpc");
    let all_layers = project.root().join("manifests/gpt2-all-layers.yaml");
    let t = Instant::now();
    report.check(
        "GPT-2, every layer: the same checkpoints and logits as on the local CPU",
        t,
        rpc::split_matches_local(sh, exe, &servers, gpt2, &all_layers, 12, &work.join("gpt2")),
    );
    let t = Instant::now();
    let smol = crate::catalogue::model_and_manifest(project, Some("smollm2-135m"), None).and_then(
        |(model, manifest)| {
            rpc::split_matches_local(
                sh,
                exe,
                &servers,
                &model,
                &manifest,
                30,
                &work.join("smollm2"),
            )
        },
    );
    report.check(
        "SmolLM2, every layer: the same checkpoints and logits as on the local CPU",
        t,
        smol,
    );
    let t = Instant::now();
    report.check(
        "capture over RPC: steady-state ratio and bytes fetched per checkpoint",
        t,
        rpc::cost(sh, exe, &servers, gpt2, &all_layers, &work),
    );
}

/// Each fuzz target on a fixed seed and number of inputs (a budget that does
/// not depend on the machine's speed), where the nightly toolchain is present.
fn fuzz_checks(report: &mut Report, project: &Project) {
    report.section(&format!(
        "fuzz: checkpoint files, manifests, run.json ({FUZZ_RUNS} inputs each, seed {FUZZ_SEED})"
    ));
    if !crate::fuzz::nightly_available() {
        println!("skipped: no nightly (rustup toolchain install nightly)");
        return;
    }
    let t = Instant::now();
    let fuzzer = match crate::fuzz::Fuzzer::prepare(project) {
        Ok(fuzzer) => fuzzer,
        Err(e) => {
            report.check("cargo-fuzz and the seed corpus", t, Err(e));
            return;
        }
    };
    let budget = crate::fuzz::Budget::Runs {
        seed: FUZZ_SEED,
        runs: FUZZ_RUNS,
    };
    for target in crate::fuzz::TARGETS {
        let t = Instant::now();
        let result = fuzzer.run(target, budget).and_then(|outcome| {
            anyhow::ensure!(outcome.crash.is_none(), "{}", outcome.summary());
            Ok(outcome.summary())
        });
        report.check(&format!("fuzz target {target}"), t, result);
    }
}
