//! `cargo xtask verify`: the project's test command (what CI runs).
//!
//! `cargo test --workspace` (with the extractor's test hooks), then groups
//! of checks, each line `PASS`, `FAIL` or `SKIPPED` with its figures, or
//! `INFO` for figures nothing judges, and a closing `N passed, M failed, K
//! skipped`:
//! - build: clean build, bindings fresh, no AMX kernels, clippy;
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
//!   the hand-written manifests; a sample of the conformance table tried
//!   again, one architecture of each outcome;
//! - real sizes: the streamed reference bitwise the whole-model one, and each
//!   layer replayed from llama.cpp's input;
//! - your own llama.cpp: an older tree as a read-only directory, built and
//!   compared with the pin checkpoint by checkpoint, unchanged after; a
//!   tree too old refused by name;
//! - rpc: every layer over two servers, bitwise equal to the local CPU;
//! - miri: the eval hook's and the handoff's tests under Stacked and Tree Borrows;
//! - fuzz: the readers, on a fixed budget.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use llorch_checkpoint_spec::record::{FlashAttnMode, RunRecord};
use xshell::cmd;

use crate::llama_cpp::build::pinned_extractor;
use crate::llama_cpp::build::Backend;
use crate::llama_cpp::pin::Pin;
use crate::project::Project;

mod browser;
mod cargo_test;
mod checks;
mod conformance;
mod ctx;
mod docs;
mod engine;
mod faults;
mod fuzz;
mod matching;
mod miri;
mod real;
mod replay;
mod report;
mod rpc;
mod streamed;
mod trees;
mod vulkan;
use checks::{
    clean_build, corrupted_copy_rejected, no_amx, overhead_ratio, seen_once, throughput, validate,
    CORRUPTIONS,
};
use ctx::Ctx;
use report::{Checked, Report};

#[derive(clap::Args)]
pub struct Verify {
    /// Every group of checks (what CI runs): the fast tier's, and the clean and older-tree
    /// builds, real models, matching, real sizes, each node's replay, RPC, Vulkan, Miri, fuzzing and the whole kill campaign.
    #[arg(long)]
    full: bool,
    /// Run only these groups of checks, whatever the tier (for work on one of them).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "GROUP,...")]
    only: Vec<Group>,
    /// Fail the performance check when the steady-state decode with extraction exceeds this multiple of the time without.
    #[arg(long, default_value_t = 1.5)]
    max_overhead_ratio: f64,
    /// Steady-state passes per side for the performance ratio (the extractor's --repeat: alternating, in one process; medians).
    #[arg(long, value_name = "N", default_value_t = 9)]
    repeat: usize,
    /// Manifest for the runtime and format checks [default: manifests/gpt2.yaml].
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// GGUF model to check [default: the synthetic GPT-2 of `cargo xtask model`].
    #[arg(long)]
    model: Option<PathBuf>,
}

/// verify's groups of checks, for `--only`, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    Tests,
    Build,
    Runtime,
    Docs,
    Faults,
    Performance,
    Compare,
    Real,
    Matching,
    Sizes,
    Replay,
    Trees,
    Rpc,
    Vulkan,
    Miri,
    Fuzz,
}

impl Group {
    /// The fast tier: a contributor's check, minutes on a 2-core machine.
    fn is_fast(self) -> bool {
        matches!(
            self,
            Group::Tests
                | Group::Build
                | Group::Runtime
                | Group::Docs
                | Group::Faults
                | Group::Performance
                | Group::Compare
        )
    }
}

impl Verify {
    fn runs(&self, group: Group) -> bool {
        match self.only.is_empty() {
            true => self.full || group.is_fast(),
            false => self.only.contains(&group),
        }
    }

    fn tier(&self) -> &'static str {
        match (self.only.is_empty(), self.full) {
            (false, _) => "only",
            (true, true) => "full",
            (true, false) => "fast",
        }
    }

    /// `cli`: the `cargo xtask` command line, for the docs' checks.
    pub fn run(self, project: &Project, cli: &clap::Command) -> Result<()> {
        let started = Instant::now();
        let mut report = Report::sampling_disk();
        println!("verify, {} tier", self.tier());
        let mut ctx = self.setup(project)?;
        if self.runs(Group::Tests) {
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
        if self.runs(Group::Docs) {
            docs::checks(&mut report, &ctx, cli);
        }
        if self.runs(Group::Faults) {
            let kills = match self.whole() {
                true => faults::KILLS_FULL,
                false => faults::KILLS_FAST,
            };
            faults::checks(&mut report, &ctx, kills);
        }
        if self.runs(Group::Performance) {
            self.performance_checks(&mut report, &ctx);
        }
        if self.runs(Group::Compare) {
            compare_checks(&mut report, &ctx, self.whole());
        }
        if self.runs(Group::Real) {
            for name in real::REAL_MODELS {
                real::checks(&mut report, &ctx, name);
            }
        }
        if self.runs(Group::Matching) {
            matching::checks(&mut report, &ctx);
            conformance::checks(&mut report, &ctx);
        }
        if self.runs(Group::Sizes) {
            streamed::checks(&mut report, &ctx);
        }
        if self.runs(Group::Replay) {
            replay::checks(&mut report, &ctx, self.full);
        }
        if self.runs(Group::Trees) {
            trees::tree_checks(&mut report, &ctx, self.full);
        }
        if self.runs(Group::Rpc) {
            rpc::checks(&mut report, &ctx);
        }
        if self.runs(Group::Vulkan) {
            vulkan::checks(&mut report, &ctx);
        }
        self.undefined_behaviour_and_fuzzing(&mut report, project);

        let header = serde_json::json!({
            "pin": Pin::load(&project.pin_file())?.id(), "tier": self.tier(),
        });
        report.finish(&ctx.work.join("report.json"), header, started)?;
        if report.failed() > 0 {
            bail!("{} check(s) failed", report.failed());
        }
        Ok(())
    }

    /// Miri and the fuzzers, where their groups run; the full tier drops
    /// their targets once they passed.
    fn undefined_behaviour_and_fuzzing(&self, report: &mut Report, project: &Project) {
        if self.runs(Group::Miri) {
            report.section("miri: the eval hook's ownership and the handoff");
            let t = Instant::now();
            report.record(
                "the hook's and the handoff's tests under Miri: no undefined behaviour",
                t,
                miri::check(project),
            );
            if self.full {
                report.tidy(&project.root().join("target/miri"));
            }
        }
        if self.runs(Group::Fuzz) {
            fuzz::checks(report, project);
            if self.full {
                report.tidy(&project.work_dir().join("fuzz/target"));
            }
        }
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
                    "{gb:.0} GB free under the project (a fresh clone's full tier takes about {} GB)",
                    crate::host::FULL_VERIFY_GB
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
        let exe = pinned_extractor(project, Backend::Cpu)?;
        let clean_setup = from_nothing.then(|| t.elapsed().as_secs_f64());
        let model = match &self.model {
            Some(m) => std::path::absolute(m)?,
            None => crate::models::model::default_model(project)?,
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
            clean_setup,
        })
    }

    /// Whether a group runs whole, its slow checks too: in the full tier,
    /// and when asked for by name.
    fn whole(&self) -> bool {
        self.full || !self.only.is_empty()
    }

    fn build_checks(&self, report: &mut Report, ctx: &mut Ctx<'_>) {
        report.section("build");
        let (project, sh) = (ctx.project, &ctx.sh);
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
        report.check(
            "clippy finds nothing to warn of",
            t,
            cargo_test::clippy(project),
        );
        if !self.whole() {
            return;
        }
        let t = Instant::now();
        match ctx.clean_setup {
            // A fresh clone (as in CI): setup's build was the clean one, not repeated.
            Some(secs) => report.info(
                "clean build of llama.cpp + extractor",
                t,
                Ok(format!(
                    "setup built llama.cpp and the extractor from nothing in {secs:.0} s \
                     (no build directory, no target/release before it): that was the clean build"
                )),
            ),
            None => {
                let built = clean_build(project, &ctx.work);
                report.check(
                    "clean build of llama.cpp + extractor in a fresh directory",
                    t,
                    built,
                );
            }
        }
    }

    fn performance_checks(&self, report: &mut Report, ctx: &Ctx<'_>) {
        report.section("performance");
        let t = Instant::now();
        let result = overhead_ratio(ctx, self.repeat, self.max_overhead_ratio);
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

/// The extractor with and without extraction on the default model, flash
/// attention off as `cargo xtask extract` runs it: it runs, generates the
/// same token, leaves the logits' bits alone, writes each of the manifest's
/// checkpoints once. True when the run with extraction worked.
fn runtime_checks(report: &mut Report, ctx: &Ctx<'_>) -> bool {
    report.section("runtime");
    let (with, without) = (ctx.work.join("with"), ctx.work.join("without"));
    let run = |out: &Path, extra: &[&str]| -> Result<()> {
        ctx.run(out)
            .prompt("Hello world")
            .generate(1)
            .flash_attn(FlashAttnMode::Off)
            .args(extra)
            .run(&ctx.sh)
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
        "every manifest checkpoint seen exactly once, none absent (flash attention off, as extract runs it)",
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

/// The comparison checking itself on the synthetic GPT-2, and its page in a
/// browser; `whole`: the worked example engine too (it builds a workspace of
/// its own: about a minute).
fn compare_checks(report: &mut Report, ctx: &Ctx<'_>, whole: bool) {
    report.section("compare");
    let project = ctx.project;
    let t = Instant::now();
    let result = crate::runs::sides::run_self_test(
        project,
        &crate::runs::sides::LlamaCpp::new(project),
        &crate::runs::sides::PyTorch::new(project),
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
    report.tidy(&ctx.work.join("candidate-default"));
    let t = Instant::now();
    if whole {
        report.check(
            "the worked example engine (extractor/golden/example, its own workspace) passes its tests against llama.cpp's run; its wrong variant fails naming the checkpoint",
            t,
            engine::example_engine(ctx),
        );
    }
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
    // The runs go once read (a failure keeps them to look at).
    report.tidy(&project.work_dir().join("compare-self-test"));
}
