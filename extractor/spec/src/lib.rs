//! llorch-checkpoint's file formats, defined once: pure Rust, no native links.
//!
//! - [`manifest`]: the checkpoint manifest (YAML): node names, shapes in
//!   symbols, files, the reference tensor and tolerance of each checkpoint.
//! - [`record`]: `run.json`, the record of one extractor run, versioned.
//! - [`format`]: the checkpoint files themselves (`.bin`, `.npy`).
//! - [`files`]: whole-or-nothing writes, sha256, copying a run directory.
//! - [`metric`]: NMSE, the one definition every comparison uses.
//! - [`flags`]: llama.cpp's `-fa` and `-ngl`, for every binary's command line.
//!
//! The extractor, its validator and diff, and every `cargo xtask` step read
//! and write these files through this crate and nothing else.

pub mod files;
pub mod flags;
pub mod format;
pub mod manifest;
pub mod metric;
pub mod record;
