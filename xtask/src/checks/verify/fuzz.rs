//! verify's fuzzing: each reader of checkpoint files, manifests and
//! run.json under libFuzzer on a fixed budget; `cargo xtask fuzz --seconds
//! N` explores further.

use std::time::Instant;

use super::report::{Checked, Report};
use crate::project::Project;

/// libFuzzer's seed and inputs per target (20-30 s each on two cores).
const FUZZ_SEED: u64 = 1;
const FUZZ_RUNS: u64 = 30_000;

/// Each fuzz target on a fixed seed and number of inputs (a budget that does
/// not depend on the machine's speed), where the nightly toolchain is present.
pub fn checks(report: &mut Report, project: &Project) {
    report.section(&format!(
        "fuzz: checkpoint files, manifests, run.json ({FUZZ_RUNS} inputs each, seed {FUZZ_SEED})"
    ));
    let t = Instant::now();
    let fuzzer = match crate::checks::fuzz::nightly_available() {
        false => Ok(None),
        true => crate::checks::fuzz::Fuzzer::prepare(project).map(Some),
    };
    let fuzzer = match fuzzer {
        Ok(fuzzer) => fuzzer,
        Err(e) => {
            report.check("cargo-fuzz and the seed corpus", t, Err(e));
            return;
        }
    };
    let budget = crate::checks::fuzz::Budget::Runs {
        seed: FUZZ_SEED,
        runs: FUZZ_RUNS,
    };
    for target in crate::checks::fuzz::TARGETS {
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
