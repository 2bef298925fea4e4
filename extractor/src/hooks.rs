//! Test hooks, compiled only with the `test-hooks` feature (`cargo test
//! --features test-hooks`; `cargo xtask verify` enables it): hidden flags that
//! let the integration tests make a run panic inside the eval callback, pause
//! it where a signal or a change to its model must be handled, say which phase
//! it is in (for the kill campaign), or fail its writes as a full disk would. A build
//! without the feature has neither the flags nor any check on the capture's
//! or the writer's path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// The hidden flags; `main` flattens them into its command line.
#[derive(clap::Args, Debug)]
pub struct HookArgs {
    /// Test hook: panic inside the eval callback when observing this node.
    #[arg(long, hide = true)]
    inject_panic: Option<String>,
    /// Test hook: wait 3 s at the first node observed (`decode`) or file written (`write`).
    #[arg(long, hide = true, value_parser = ["decode", "write"])]
    test_pause: Option<String>,
    /// Test hook: print `test hook: phase NAME` on stderr as the run enters each
    /// phase (decode: a pass starts; writing: the writer takes a pass's files;
    /// commit: each step of it; published: the swap is done), and stretch the commit
    /// (20 ms per step) so that a signal at a random moment can land inside it.
    #[arg(long, hide = true)]
    test_phases: bool,
    /// Test hook: every checkpoint write fails with "No space left on device"
    /// once the run has written this many bytes, as a full disk would.
    #[arg(long, hide = true, value_name = "BYTES")]
    test_fail_write_at: Option<u64>,
}

static PANIC_ON: OnceLock<Vec<u8>> = OnceLock::new();
static PAUSE_AT: OnceLock<String> = OnceLock::new();
static PAUSED: AtomicBool = AtomicBool::new(false);
static PHASES: AtomicBool = AtomicBool::new(false);
static FAIL_AT: OnceLock<u64> = OnceLock::new();
static WRITTEN: AtomicU64 = AtomicU64::new(0);

impl HookArgs {
    /// Arms the hooks for this process (once; later calls change nothing).
    pub fn install(&self) {
        if let Some(node) = &self.inject_panic {
            let _ = PANIC_ON.set(node.clone().into_bytes());
        }
        if let Some(point) = &self.test_pause {
            let _ = PAUSE_AT.set(point.clone());
        }
        if let Some(bytes) = self.test_fail_write_at {
            let _ = FAIL_AT.set(bytes);
        }
        PHASES.store(self.test_phases, Ordering::SeqCst);
    }
}

/// Called by the capture for every node it observes: the `decode` pause, and
/// the panic under `--inject-panic NODE` (proves no panic crosses into C).
pub fn observing(node_name: &[u8]) {
    pause("decode");
    if PANIC_ON
        .get()
        .is_some_and(|name| name.as_slice() == node_name)
    {
        panic!(
            "injected panic (test hook) while observing `{}`",
            String::from_utf8_lossy(node_name)
        );
    }
}

/// Called by the writer after each checkpoint file: the `write` pause.
pub fn written() {
    pause("write");
}

/// The first time the run reaches `point` (`decode`: the first node observed;
/// `write`: the first file written) under `--test-pause point`: say so on
/// stderr and wait 3 s, for a test to signal the run or change its model there.
fn pause(point: &str) {
    if PAUSE_AT.get().is_some_and(|p| p == point) && !PAUSED.swap(true, Ordering::SeqCst) {
        eprintln!("test hook: paused in the {point}");
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
}

/// The run enters `name` (`--test-phases`); commit steps are stretched.
pub fn phase(name: &str) {
    if !PHASES.load(Ordering::SeqCst) {
        return;
    }
    eprintln!("test hook: phase {name}");
    if name == "commit" {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Called before each write of `n` bytes to a checkpoint file: under
/// `--test-fail-write-at BYTES`, the disk is full once BYTES were written.
pub fn writing(n: usize) -> std::io::Result<()> {
    let Some(&limit) = FAIL_AT.get() else {
        return Ok(());
    };
    if WRITTEN.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "No space left on device (test hook: --test-fail-write-at)",
        ));
    }
    Ok(())
}
