//! Test hooks, compiled only with the `test-hooks` feature (`cargo test
//! --features test-hooks`; `cargo xtask verify` enables it): hidden flags that
//! let the integration tests make a run panic inside the eval callback, or
//! pause it where a signal or a change to its model must be handled. A build
//! without the feature has neither the flags nor any check on the capture's
//! or the writer's path.

use std::sync::atomic::{AtomicBool, Ordering};
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
}

static PANIC_ON: OnceLock<Vec<u8>> = OnceLock::new();
static PAUSE_AT: OnceLock<String> = OnceLock::new();
static PAUSED: AtomicBool = AtomicBool::new(false);

impl HookArgs {
    /// Arms the hooks for this process (once; later calls change nothing).
    pub fn install(&self) {
        if let Some(node) = &self.inject_panic {
            let _ = PANIC_ON.set(node.clone().into_bytes());
        }
        if let Some(point) = &self.test_pause {
            let _ = PAUSE_AT.set(point.clone());
        }
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
