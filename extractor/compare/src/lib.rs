//! llorch-checkpoint's comparison: a llama.cpp run's checkpoints against a
//! reference implementation's tensors (PyTorch in f32 and f64), and against a
//! candidate engine's, with metrics, verdicts, the first divergence and
//! reports a person reads.
//!
//! The comparison runs neither llama.cpp nor Python itself: it asks an
//! [`Extractor`] for runs and a [`Reference`] for reference tensors
//! ([`sides`]). `cargo xtask` implements both; the tests here use fakes.
//!
//! - [`entries`]: what is compared: checkpoints per layer, in graph order.
//! - [`metrics`]: how far a tensor is from another; a run's scores; the verdict.
//! - [`reference`]: the job the reference computes, and what it reports.
//! - [`candidate`]: a third side, another engine's tensors.
//! - [`overrides`]: `--tolerance GLOB=...` over the manifest's tolerances.
//! - [`attribution`]: which setting of llama.cpp each error comes from.
//! - [`replay`]: each node's own error, from the replay of its op in f64.
//! - [`sequential`]: the prompt as one batch against one token per pass.
//! - the reports (table, report.json, report.html, errors.svg) are the
//!   `llorch-checkpoint-report` crate's, filled here.
//! - [`auto`]: the whole flow without a manifest: the probe, the matcher
//!   (`llorch-checkpoint-matching`), the drafted manifest.
//! - [`compare`](mod@compare): the whole flow; [`self_test`](mod@self_test): the flow checking itself.

pub mod attribution;
pub mod auto;
pub mod candidate;
pub mod compare;
pub mod entries;
pub mod metrics;
pub mod next_token;
pub mod overrides;
pub mod reference;
pub mod replay;
pub mod self_test;
pub mod sequential;
pub mod sides;

pub use compare::{compare, Options, Outcome};
pub use self_test::self_test;
pub use sides::{Extraction, Extractor, Reference, ReferenceJob};
