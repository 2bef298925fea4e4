//! What a probe found: its two sides, and what the matcher made of them
//! (a leaf: the probe writes it, the summaries read it).

use std::path::PathBuf;

use llorch_checkpoint_spec::record::RunRecord;

use llorch_checkpoint_matching::draft::{Drafted, Skipped};
use llorch_checkpoint_matching::manifest_text::Role;
use llorch_checkpoint_matching::precision::Precision;
use llorch_checkpoint_matching::{Matching, Node, Tensor};
use llorch_checkpoint_report::findings::Info;

/// The probe's two sides and what the matcher made of them.
pub struct Probe {
    pub record: RunRecord,
    pub nodes: Vec<Node>,
    pub tensors: Vec<Tensor>,
    pub info: Info,
    /// The reference variant the tensors are (f64, or f32 where f64 cannot run).
    pub variant: String,
    pub precision: Precision,
    pub matching: Matching,
    pub drafted: Vec<Drafted>,
    pub skipped: Vec<(usize, Skipped)>,
    pub roles: Vec<Role>,
    /// The manifest the comparison ran on.
    pub manifest: PathBuf,
}
