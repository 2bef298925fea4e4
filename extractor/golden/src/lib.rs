//! llama.cpp's checkpoints as golden tensors in your inference engine's own
//! tests.
//!
//! `cargo xtask extract` writes a run directory: one file per checkpoint
//! (norm outputs, Q/K/V, the KV cache, attention scores and outputs, FFN
//! outputs, per layer) and a `run.json` that names each. This crate opens
//! such a run, hands you each checkpoint as `f32` data with its shape,
//! compares your engine's tensor with it and gives a [`Verdict`] that reads
//! well in a failed assertion, and writes your engine's tensors as a
//! candidate directory for `cargo xtask compare --candidate`.
//!
//! ```no_run
//! use llorch_checkpoint_golden::Run;
//!
//! # fn my_engine_ln1(tokens: &[i32]) -> Vec<f32> { vec![0.0; tokens.len() * 768] }
//! let run = Run::open("checkpoints")?;
//! let ln1 = run.checkpoint("01_ln1_output", 0)?;
//! let mine = my_engine_ln1(run.tokens());
//! let verdict = ln1.compare(&mine)?;
//! assert!(verdict.pass(), "{verdict}");
//! # Ok::<(), llorch_checkpoint_golden::Error>(())
//! ```
//!
//! Which tolerance: [`Checkpoint::compare`] asks "does my engine compute
//! what llama.cpp computes?" and judges by [`Tolerance::against_llama_cpp`],
//! set by what two correct llama.cpp runs differ by; a 1% error fails it.
//! [`Checkpoint::manifest_tolerance`] is the looser one llama.cpp itself is
//! held to against float64.
//!
//! The file formats and the metrics are those of the tool itself (the
//! `llorch-checkpoint-spec` and `llorch-checkpoint-compare` crates); this
//! crate's types are its own, so they can stay put while those change.

#![deny(missing_docs)]

mod candidate;
mod error;
mod run;
mod tensor;
mod verdict;

pub use candidate::{Candidate, Format};
pub use error::{Error, Result};
pub use run::{Checkpoint, Run};
pub use tensor::Tensor;
pub use verdict::{compare, Tolerance, Verdict};
