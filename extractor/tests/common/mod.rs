//! What the extractor's integration tests share: the model, the manifests,
//! and running the binary.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use llorch_checkpoint_extractor::format::{self, Tensor};

pub fn model() -> PathBuf {
    if let Some(path) = std::env::var_os("LLORCH_TEST_MODEL") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let path = root.join("target/llorch/models/gpt2-synthetic-0-12l-f32.gguf");
    assert!(
        path.exists(),
        "no test model at {}: run `cargo xtask model` first (or set LLORCH_TEST_MODEL)",
        path.display()
    );
    path
}

pub fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("manifests")
}

pub fn extractor(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_llorch-checkpoint-extractor"))
        .args(["-t", "2"])
        .args(args)
        .output()
        .expect("the extractor runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

pub fn run_ok(args: &[&str]) {
    let out = extractor(args);
    assert!(
        out.status.success(),
        "extractor failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn run_err(args: &[&str]) -> String {
    let out = extractor(args);
    assert!(!out.status.success(), "extractor should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Files in `dir`, hidden ones included, sorted (empty if `dir` does not exist).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn read(dir: &Path, name: &str) -> Tensor {
    format::read(&dir.join(name)).unwrap()
}
