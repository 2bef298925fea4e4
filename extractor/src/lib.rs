//! llorch-checkpoint's extractor: reads checkpoints out of a llama.cpp
//! inference through the backend scheduler's eval callback.
//!
//! - [`ffi`]: all `unsafe`: bindings, model/context owners, the callback trampoline.
//! - [`manifest`]: the YAML checkpoint manifest, validated before inference.
//! - [`capture`]: the eval-callback logic: which nodes, copied how, sent where.
//! - [`format`]: checkpoint files (`.bin`, `.npy`) and the run record.

pub mod ffi;
