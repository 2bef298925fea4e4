//! verify's cargo checks: `cargo test --workspace`, with the extractor's
//! test hooks (a feature release builds lack), quiet, summed up; clippy.

use anyhow::Result;

use crate::project::Project;
use crate::step::{self, Step};

/// The extractor's tests that pause a run or panic inside the callback need this feature.
/// The library's ndarray view is a feature too: its doc test runs.
const TEST_HOOKS: &str = "llorch-checkpoint-extractor/test-hooks,llorch-checkpoint-golden/ndarray";

/// `cargo test --workspace` with its output in `logs/tests.log`: the
/// figures summed over every test binary, or the failures and the log's tail.
pub fn run(project: &Project) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let step = Step::start(
        project,
        "tests",
        &format!("cargo test --workspace --features {TEST_HOOKS}"),
    )?;
    let totals = std::cell::Cell::new([0u64; 3]);
    step.run_watched(
        "cargo test --workspace",
        duct::cmd!(cargo, "test", "--workspace", "--features", TEST_HOOKS).dir(project.root()),
        |step, line| {
            step::cargo_progress(step, line);
            if let Some(counts) = test_result(line) {
                let t = totals.get();
                totals.set([t[0] + counts[0], t[1] + counts[1], t[2] + counts[2]]);
                step.set_detail(&format!("{} passed", totals.get()[0]));
            }
        },
    )?;
    let [passed, failed, ignored] = totals.get();
    step.finish(&format!(
        "{passed} passed, {failed} failed, {ignored} ignored"
    ));
    Ok(format!(
        "{passed} tests passed, {ignored} ignored (log: {})",
        project.work_dir().join("logs/tests.log").display()
    ))
}

/// `cargo clippy` over every crate and target, warnings denied; its output
/// in `logs/clippy.log`.
pub fn clippy(project: &Project) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let what = "cargo clippy --workspace --all-targets -- -D warnings";
    let step = Step::start(project, "clippy", what)?;
    step.run(
        what,
        duct::cmd!(
            cargo,
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings"
        )
        .dir(project.root()),
    )?;
    step.finish("no warnings");
    Ok(format!("{what}: no warnings"))
}

/// `test result: ok. 5 passed; 0 failed; 1 ignored; ...` -> [5, 0, 1].
fn test_result(line: &str) -> Option<[u64; 3]> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |what: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(what))
            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
    };
    Some([count("passed")?, count("failed")?, count("ignored")?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_result_lines_give_their_counts() {
        assert_eq!(
            test_result("test result: ok. 27 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.25s"),
            Some([27, 0, 2])
        );
        assert_eq!(
            test_result(
                "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out"
            ),
            Some([3, 1, 0])
        );
        assert_eq!(test_result("running 3 tests"), None);
    }
}
