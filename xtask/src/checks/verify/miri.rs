//! verify's Miri check: the unit tests of the eval hook's ownership (the
//! pointers llama.cpp keeps, the stop flag read from another thread) and of
//! the capture-to-writer handoff, under Miri's Stacked and Tree Borrows
//! models. They call no C, so Miri interprets all of them; where the nightly
//! toolchain is missing the check says SKIPPED, and where only Miri is
//! missing it is installed (SKIPPED, with the command, where that fails).

use std::process::Command;

use anyhow::{ensure, Context, Result};

use super::report::Checked;
use crate::project::Project;

/// The tests Miri runs (filters of the extractor's library tests).
const FILTERS: [&str; 2] = ["ffi::eval", "handoff"];

/// Both aliasing models Miri knows: Stacked Borrows (its default) and Tree Borrows.
const MODELS: [(&str, &str); 2] = [
    ("Stacked Borrows", ""),
    ("Tree Borrows", "-Zmiri-tree-borrows"),
];

pub fn check(project: &Project) -> Result<Checked> {
    if !crate::checks::fuzz::nightly_available() {
        return Ok(Checked::Skipped(
            "no nightly toolchain (rustup toolchain install nightly --component miri)".into(),
        ));
    }
    if let Err(why) = ensure_miri() {
        // The toolchain is there but Miri cannot be added here (no network to
        // rustup's server, a locked toolchain): the check cannot run, it did not fail.
        return Ok(Checked::Skipped(format!("{why:#}")));
    }
    let mut figures = Vec::new();
    for (model, flags) in MODELS {
        let out = Command::new("cargo")
            .args([
                "+nightly",
                "miri",
                "test",
                "-p",
                "llorch-checkpoint-extractor",
                "--lib",
                "--",
            ])
            .args(FILTERS)
            .env("MIRIFLAGS", flags)
            .current_dir(project.root())
            .output()
            .context("cannot run cargo +nightly miri")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let result = text
            .lines()
            .find(|l| l.starts_with("test result:"))
            .unwrap_or_default();
        // No result line: Miri stopped before the tests ended (a full disk, a
        // sysroot that would not build), which is not a finding about the code.
        ensure!(
            !result.is_empty() || text.contains("Undefined Behavior"),
            "Miri ({model}) did not run to the end of the tests:\n{}",
            last_lines(&text, 40)
        );
        ensure!(
            out.status.success() && result.contains(" 0 failed"),
            "Miri ({model}) found a defect:\n{}",
            last_lines(&text, 40)
        );
        figures.push(format!(
            "{model}: {}",
            result.trim_start_matches("test result: ")
        ));
    }
    Ok(Checked::Pass(figures.join("; ")))
}

/// Miri for the nightly toolchain, and its sysroot.
fn ensure_miri() -> Result<()> {
    let has_miri = |args: &[&str]| {
        Command::new("cargo")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has_miri(&["+nightly", "miri", "--version"]) {
        println!("installing Miri: rustup component add miri --toolchain nightly");
        let ok = Command::new("rustup")
            .args([
                "component",
                "add",
                "miri",
                "rust-src",
                "--toolchain",
                "nightly",
            ])
            .status()
            .is_ok_and(|s| s.success());
        ensure!(
            ok,
            "cannot install Miri: rustup component add miri rust-src --toolchain nightly"
        );
    }
    ensure!(
        has_miri(&["+nightly", "miri", "setup"]),
        "cargo +nightly miri setup failed (it builds Miri's sysroot; run it by hand to see why)"
    );
    Ok(())
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
