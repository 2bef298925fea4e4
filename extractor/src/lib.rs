//! llorch-checkpoint's extractor: reads checkpoints out of a llama.cpp
//! inference through the backend scheduler's eval callback.
//!
//! - [`ffi`]: all `unsafe`: bindings, model/context owners, the callback trampoline.
//! - [`manifest`], [`record`], [`format`](mod@format): the manifest, `run.json` and the
//!   checkpoint files, from the pure `llorch-checkpoint-spec` crate that xtask
//!   reads them with too.
//! - [`capture`]: the eval-callback logic: which nodes, copied how, sent where.
//! - [`captured`]: one captured checkpoint, as the capture hands it to the writer.
//! - [`kv_cells`]: a KV-cache node's axis of cells, so that its padding is not written.
//! - [`handoff`]: captured tensors to the writer, a pass at a time, memory bounded by bytes.
//! - [`output`]: the writer thread and the run's files, committed whole.
//! - [`rundir`]: the staging directory beside `--out`, swapped into its place in one step.
//! - [`cleanup`]: nothing left behind by a run that ggml aborts or a signal ends.
//! - [`preflight`]: what is refused before any compute (architecture, layers, context).
//! - [`run`]: one extraction run, from model load to `run.json`.
//! - [`load`]: the model and the prompt's tokens, the context size and symbols.
//! - [`decode`]: a run's decode passes, captured, and `--repeat`'s timing passes.
//! - [`list_nodes`]: `--list-nodes`, the graph as the callback sees it.
//! - [`check`]: validation of a run directory's files.
//! - [`cli`]: logging and exit codes shared by the binaries.
//! - [`diff`]: two runs (CPU and GPU) compared checkpoint by checkpoint, and their timings.
//! - [`gpt2_model`]: the seeded synthetic GPT-2 written through ggml's gguf API.
//! - `hooks` (feature `test-hooks` only): the integration tests' hidden flags.

#![deny(unsafe_code)]

pub mod capture;
pub mod captured;
pub mod check;
pub mod cleanup;
pub mod cli;
pub mod decode;
pub mod diff;
#[allow(unsafe_code)]
pub mod ffi;
pub mod gpt2_model;
pub mod handoff;
#[cfg(feature = "test-hooks")]
pub mod hooks;
pub mod kv_cells;
pub mod list_nodes;
pub mod load;
pub mod names;
pub use llorch_checkpoint_spec::{flags, format, manifest, record};
pub mod output;
pub mod preflight;
pub mod run;
pub mod rundir;
