//! The project's own house rules, checked by `cargo test` (as rust-analyzer's
//! `tidy` test does): formatting, and files short enough to read whole.

use std::path::Path;
use std::process::Command;

/// A hand-written source file longer than this is split by job.
const MAX_LINES: usize = 600;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn code_is_formatted() {
    let out = Command::new(env!("CARGO"))
        .args(["fmt", "--all", "--check"])
        .current_dir(root())
        .output()
        .expect("cargo fmt runs");
    assert!(
        out.status.success(),
        "run `cargo fmt`:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn hand_written_files_are_at_most_600_lines() {
    let out = Command::new("git")
        .args(["ls-files", "*.rs", "*.py", "*.sh"])
        .current_dir(root())
        .output()
        .expect("git ls-files runs");
    let listed = String::from_utf8(out.stdout).unwrap();
    let generated = ["extractor/src/ffi/bindings.rs"];
    let long: Vec<String> = listed
        .lines()
        .filter(|path| !generated.contains(path))
        .filter_map(|path| {
            let lines = std::fs::read_to_string(root().join(path))
                .ok()?
                .lines()
                .count();
            (lines > MAX_LINES).then(|| format!("{path}: {lines} lines"))
        })
        .collect();
    assert!(
        !listed.is_empty() && long.is_empty(),
        "split these by job (at most {MAX_LINES} lines): {long:?}"
    );
}
