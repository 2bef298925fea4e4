//! Running llama.cpp and the reference: one typed extractor run (`extractor`),
//! the comparison's two sides (`sides`) and how the reference holds a model
//! (`reference_memory`), one run through two trees (`two_trees`), each
//! node's op replayed in f64 (`replay`),
//! one architecture tried on a tiny model for the conformance table (`conformance`).

pub mod conformance;
pub mod extractor;
pub mod reference_memory;
pub mod replay;
pub mod sides;
pub mod two_trees;
