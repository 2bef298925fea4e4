//! The eval-callback logic: which nodes to capture, checked and copied how,
//! handed to whom.
//!
//! `wants` (ask = true) runs for each of the ~450 nodes of every pass: a hash
//! lookup of the node's name bytes (a manifest), or a glob match of the name
//! (`--tensors`), allocation-free either way. `observe` (ask = false) runs only
//! for the nodes we asked for: it checks the shape against the manifest, copies
//! the node to f32 (strides and type respected, padded KV cells dropped) and
//! keeps it for the writer thread (see `handoff`). It never touches the disk.

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::captured::Captured;
use crate::ffi::eval::Observer;
use crate::ffi::tensor::Node;
use crate::handoff::Outbox;
use crate::manifest::{Checkpoint, Resolved, Symbols, UnderFlashAttn};
use crate::record::AbsentCheckpoint;

/// `--tensors`: globs over node names, separated by commas
/// (`'attn_norm-*,ffn_out-*'`); a node is wanted when any matches.
#[derive(Clone, Debug)]
pub struct NodeFilter {
    text: String,
    patterns: Vec<glob::Pattern>,
}

impl std::str::FromStr for NodeFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<NodeFilter, String> {
        let patterns = text
            .split(',')
            .map(|g| glob::Pattern::new(g.trim()).map_err(|e| format!("`{g}` is not a glob: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NodeFilter {
            text: text.to_string(),
            patterns,
        })
    }
}

impl NodeFilter {
    /// Allocation-free: the eval callback's ask path calls it for every node.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// What a pass does with the nodes it asks for. The timing passes of
/// `--repeat` copy and discard; the ask-only ones isolate what the scheduler's
/// stops cost (over RPC: a sub-graph sent and waited for per captured node)
/// from what reading the nodes costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Copy each node and hand it to the writer.
    Keep,
    /// Copy each node, then drop it.
    Discard,
    /// Stop the graph at each node, read nothing.
    AskOnly,
}

/// What a capture takes from each pass.
pub enum Selection {
    /// The manifest's checkpoints, each seen exactly once per pass.
    Manifest(Vec<Checkpoint>),
    /// Every node whose name matches (`--tensors '*'`: the whole graph), as it
    /// is; files are named `<graph index>_<name made file-safe>`.
    Glob(NodeFilter),
}

pub struct Capture {
    /// The manifest's checkpoints (none with a glob).
    checkpoints: Vec<Checkpoint>,
    glob: Option<NodeFilter>,
    /// The graph index of the node last asked about (glob mode's file names).
    node_index: usize,
    /// Nodes the glob matched this pass.
    matched: usize,
    /// Node name -> checkpoints with that name (several only when `op` disambiguates).
    by_name: HashMap<Box<[u8]>, Vec<usize>>,
    /// Operand name -> checkpoints found by an operand alone (no `tensor`).
    by_operand: HashMap<Box<[u8]>, Vec<usize>>,
    resolved: Vec<Resolved>,
    /// The layout under flash attention, where the manifest gives one.
    resolved_fa: Vec<Option<Resolved>>,
    seen: Vec<bool>,
    /// Which layout each node had: Some(true) flash attention's, Some(false)
    /// its own, None when only one is given or both fit.
    layout_fa: Vec<Option<bool>>,
    /// Checkpoints the prompt pass's graph did not have, by flash attention.
    absent: Vec<AbsentCheckpoint>,
    /// Capturing this pass? Between passes, and for passes not captured, nothing is wanted.
    active: bool,
    /// What this pass does with the nodes it asked for.
    reading: Reading,
    /// A FLASH_ATTN_EXT node was asked about this pass: the graph fuses attention.
    flash_attn_seen: bool,
    step: usize,
    scratch: Vec<u8>,
    outbox: Outbox,
}

impl Capture {
    pub fn new(selection: Selection, outbox: Outbox) -> Capture {
        let (checkpoints, glob) = match selection {
            Selection::Manifest(checkpoints) => (checkpoints, None),
            Selection::Glob(pattern) => (Vec::new(), Some(pattern)),
        };
        let mut by_name: HashMap<Box<[u8]>, Vec<usize>> = HashMap::new();
        let mut by_operand: HashMap<Box<[u8]>, Vec<usize>> = HashMap::new();
        for (i, cp) in checkpoints.iter().enumerate() {
            let (map, key) = match (&cp.operand, cp.tensor.is_empty()) {
                (Some(operand), true) => (&mut by_operand, operand.as_str()),
                _ => (&mut by_name, cp.tensor.as_str()),
            };
            map.entry(key.as_bytes().into()).or_default().push(i);
        }
        let n = checkpoints.len();
        let placeholder = Resolved {
            ne: [1; 4],
            n_dims: 1,
            kv_dims: [false; 4],
        };
        Capture {
            checkpoints,
            glob,
            node_index: 0,
            matched: 0,
            by_name,
            by_operand,
            resolved: vec![placeholder; n],
            resolved_fa: vec![None; n],
            seen: vec![false; n],
            layout_fa: vec![None; n],
            absent: Vec::new(),
            active: false,
            reading: Reading::Keep,
            flash_attn_seen: false,
            step: 0,
            scratch: Vec::new(),
            outbox,
        }
    }

    /// Arms the capture for one forward pass with that pass's symbol values.
    pub fn begin_pass(&mut self, step: usize, symbols: &Symbols, reading: Reading) -> Result<()> {
        for (i, cp) in self.checkpoints.iter().enumerate() {
            self.resolved[i] = cp.resolve(symbols)?;
            self.resolved_fa[i] = match &cp.flash_attn {
                Some(UnderFlashAttn::Layout { shape, .. }) => Some(
                    Checkpoint {
                        shape: shape.clone(),
                        ..cp.clone()
                    }
                    .resolve(symbols)?,
                ),
                _ => None,
            };
        }
        self.seen.fill(false);
        self.layout_fa.fill(None);
        self.flash_attn_seen = false;
        self.step = step;
        self.reading = reading;
        self.node_index = 0;
        self.matched = 0;
        self.active = true;
        Ok(())
    }

    /// Disarms; every checkpoint not seen in the pass is an error naming it
    /// (a node renamed upstream must not go unnoticed).
    pub fn end_pass(&mut self) -> Result<()> {
        self.active = false;
        // The pass's copies are written before anything else is computed.
        self.outbox.drain()?;
        if let (Some(pattern), 0) = (&self.glob, self.matched) {
            bail!(
                "no node of pass {} has a name matching `{}` (--list-nodes prints them)",
                self.step,
                pattern.as_str()
            );
        }
        self.check_graph()
    }

    /// Every checkpoint seen, in the layout of the graph's flash attention
    /// setting, except those the manifest says it fuses away (recorded).
    fn check_graph(&mut self) -> Result<()> {
        let fa = self.flash_attn_seen;
        let mut missing = Vec::new();
        let mut wrong_layout = Vec::new();
        for (i, cp) in self.checkpoints.iter().enumerate() {
            match (self.seen[i], &cp.flash_attn) {
                (false, Some(UnderFlashAttn::Absent(why))) if fa => {
                    if self.step == 0 {
                        self.absent.push(AbsentCheckpoint {
                            id: cp.id.clone(),
                            file: cp.file_stem.clone(),
                            reason: format!("flash attention on: {why}"),
                        });
                    }
                }
                (false, _) => missing.push(format!("{} ({})", cp.id, cp.node())),
                (true, _) if self.layout_fa[i] == Some(!fa) => wrong_layout.push(cp.id.clone()),
                (true, _) => {}
            }
        }
        if !missing.is_empty() {
            let hint = match fa {
                true => " Flash attention was on in this graph: a node that exists only without it needs \
                         --flash-attn off, or `flash_attn: {absent: <why>}` in its manifest entry.",
                false => "",
            };
            bail!(
                "{} checkpoint(s) not seen in pass {}: {}.\nThe graph has no node of that name: a typo in the manifest, \
                 a node renamed upstream, or the patches not applied (see `cargo xtask fetch`). Run with \
                 --list-nodes to see the graph's node names.{hint}",
                missing.len(),
                self.step,
                missing.join(", ")
            );
        }
        if !wrong_layout.is_empty() {
            bail!(
                "checkpoint(s) {} have the layout of flash attention {}, but the graph ran with it {}",
                wrong_layout.join(", "),
                if fa { "off" } else { "on" },
                if fa { "on" } else { "off" }
            );
        }
        Ok(())
    }

    /// No more passes will be kept: the writer may finish.
    pub fn close(&mut self) {
        self.outbox.close();
    }

    /// Whether the last captured pass's graph had a FLASH_ATTN_EXT node.
    pub fn flash_attn_seen(&self) -> bool {
        self.flash_attn_seen
    }

    /// The checkpoints the prompt pass's graph did not have, with the reason.
    pub fn absent(&self) -> &[AbsentCheckpoint] {
        &self.absent
    }

    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    /// A manifest checkpoint: its shape checked, padded KV cells dropped.
    fn copy_checkpoint(&mut self, index: usize, node: &Node<'_>) -> Result<Captured> {
        let cp = &self.checkpoints[index];
        if std::mem::replace(&mut self.seen[index], true) {
            bail!(
                "checkpoint {}: {} matched two nodes in one pass; ggml gives this name to several nodes, \
                 so add `op: {}` (or another op) to its manifest entry",
                cp.id,
                cp.node(),
                node.op_name()
            );
        }
        let (own, under_fa) = (self.resolved[index], self.resolved_fa[index]);
        let (resolved, keep) = match (
            own.keep(node.ne()),
            under_fa.map(|r| (r, r.keep(node.ne()))),
        ) {
            (Ok(keep), None) => (own, keep),
            (Ok(keep), Some((_, fits_fa))) => {
                self.layout_fa[index] = fits_fa.is_err().then_some(false);
                (own, keep)
            }
            (Err(_), Some((fa, Ok(keep)))) => {
                self.layout_fa[index] = Some(true);
                (fa, keep)
            }
            (Err(mismatch), _) => bail!(
                "checkpoint {} ({}, manifest shape {}{}): shape mismatch: {mismatch}",
                cp.id,
                cp.node(),
                cp.shape_text(),
                if under_fa.is_some() {
                    ", nor its flash attention layout"
                } else {
                    ""
                }
            ),
        };
        let mut data = Vec::new();
        let fetched = node.copy_to_f32(keep, &mut self.scratch, &mut data)?;
        Ok(Captured {
            fetched,
            id: cp.id.clone(),
            layer: cp.layer,
            // The node's own name: what the graph calls it, however it was found.
            tensor: node.name_lossy(),
            file_stem: cp.file_stem.clone(),
            step: self.step,
            ggml_ne: node.ne(),
            shape: keep[..resolved.n_dims].iter().rev().copied().collect(),
            source_dtype: node.type_name(),
            op: node.op_name(),
            buffer: node.buffer_name(),
            data,
        })
    }

    /// A node of the whole graph, as it is.
    fn copy_whole(&mut self, node: &Node<'_>) -> Result<Captured> {
        let ne = node.ne();
        let mut data = Vec::new();
        let fetched = node.copy_to_f32(ne, &mut self.scratch, &mut data)?;
        let name = node.name_lossy();
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let file_stem = format!("{:04}_{}", self.node_index, safe.trim_matches('_'));
        let n_dims = ne.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
        Ok(Captured {
            fetched,
            id: file_stem.clone(),
            layer: name.rsplit_once('-').and_then(|(_, l)| l.parse().ok()),
            tensor: name,
            file_stem,
            step: self.step,
            ggml_ne: ne,
            shape: ne[..n_dims].iter().rev().copied().collect(),
            source_dtype: node.type_name(),
            op: node.op_name(),
            buffer: node.buffer_name(),
            data,
        })
    }

    /// The checkpoint this node is: by its name, else by an operand's name;
    /// `op` and `operand`, where given, must fit too. Allocation-free.
    fn find(&self, node: &Node<'_>) -> Option<usize> {
        let fits = |&i: &usize| {
            let cp = &self.checkpoints[i];
            cp.op.as_ref().is_none_or(|op| op == node.op_name())
                && cp
                    .operand
                    .as_ref()
                    .is_none_or(|operand| node.source_names().any(|s| s == operand.as_bytes()))
        };
        if let Some(i) = self
            .by_name
            .get(node.name())
            .and_then(|c| c.iter().copied().find(fits))
        {
            return Some(i);
        }
        if self.by_operand.is_empty() {
            return None;
        }
        node.source_names()
            .find_map(|s| self.by_operand.get(s)?.iter().copied().find(fits))
    }
}

impl Observer for Capture {
    fn wants(&mut self, node: &Node<'_>) -> bool {
        if !self.active {
            return false;
        }
        // A comparison of static strings: the ask path allocates nothing.
        self.flash_attn_seen |= node.op_name() == "FLASH_ATTN_EXT";
        match &self.glob {
            None => self.find(node).is_some(),
            Some(pattern) => {
                self.node_index += 1;
                let wanted = node.converts_to_f32()
                    && std::str::from_utf8(node.name()).is_ok_and(|name| pattern.matches(name));
                self.matched += wanted as usize;
                wanted
            }
        }
    }

    fn observe(&mut self, node: &Node<'_>) -> Result<()> {
        #[cfg(feature = "test-hooks")]
        crate::hooks::observing(node.name());
        if self.reading == Reading::AskOnly {
            if let (None, Some(index)) = (&self.glob, self.find(node)) {
                self.seen[index] = true;
            }
            return Ok(());
        }
        let captured = match &self.glob {
            Some(_) => self.copy_whole(node)?,
            None => match self.find(node) {
                Some(index) => self.copy_checkpoint(index, node)?,
                None => return Ok(()),
            },
        };
        if self.reading == Reading::Discard {
            return Ok(());
        }
        self.outbox.push(captured)
    }
}
