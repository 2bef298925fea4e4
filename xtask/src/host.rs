//! What the machine offers that several steps ask about.

use std::path::Path;
use std::process::Command;

/// What a fresh clone's `cargo xtask verify --full` takes on disk at its
/// peak (builds, PyTorch, models, the saved references, the largest check's
/// runs), in GB, with room to spare: 12.2 GB by `df` on a fresh clone.
pub const FULL_VERIFY_GB: u32 = 14;

/// Free space on the file system holding `dir`, in GB (`df`; None if it
/// does not answer).
pub fn free_gb(dir: &Path) -> Option<f64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kb: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kb as f64 / 1048576.0)
}
