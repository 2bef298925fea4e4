//! What one pass of each side gave, and what the matcher made of it (a
//! leaf: the flow writes it, the comparison and the summaries read it).

use std::path::PathBuf;

use llorch_checkpoint_spec::record::RunRecord;

use llorch_checkpoint_matching::draft::{Drafted, Skipped};
use llorch_checkpoint_matching::manifest_text::Role;
use llorch_checkpoint_matching::precision::Precision;
use llorch_checkpoint_matching::{Matching, Node, Tensor};
use llorch_checkpoint_report::findings::Info;

/// Both sides' whole pass over the compared prompt, paired.
pub struct Matched {
    /// llama.cpp's run of every node (`--tensors '*'`), and its record.
    pub graph_run: PathBuf,
    pub record: RunRecord,
    pub nodes: Vec<Node>,
    /// The reference's every tensor, each variant in its folder.
    pub everything: PathBuf,
    pub tensors: Vec<Tensor>,
    pub info: Info,
    /// The reference variant the tensors are (f64, or f32 where f64 cannot run).
    pub variant: String,
    pub precision: Precision,
    pub matching: Matching,
    pub drafted: Vec<Drafted>,
    pub skipped: Vec<(usize, Skipped)>,
    pub roles: Vec<Role>,
    /// The pairs as a manifest (`auto/manifest.yaml`): for a person, and
    /// for attribution's reruns.
    pub manifest: PathBuf,
    /// Why a manifest drafted from this pass would misname a dimension, if it would.
    pub ambiguous: Option<String>,
}
