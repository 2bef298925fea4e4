//! Running llama.cpp and the reference: one typed extractor run (`extractor`),
//! the comparison's two sides (`sides`), one run through two trees (`two_trees`).

pub mod extractor;
pub mod sides;
pub mod two_trees;
