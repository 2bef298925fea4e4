//! The eval-callback logic: which nodes to capture, checked and copied how,
//! handed to whom.
//!
//! `wants` (ask = true) runs for each of the ~450 nodes of every pass: a hash
//! lookup of the node's name bytes (a manifest), or a glob match of the name
//! (`--tensors`), allocation-free either way. `observe` (ask = false) runs only
//! for the nodes we asked for: it checks the shape against the manifest, copies
//! the node to f32 (strides and type respected, padded KV cells dropped) and
//! keeps it for the writer thread (see `handoff`). It never touches the disk.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};

use crate::captured::{Captured, Place};
use crate::ffi::eval::Observer;
use crate::ffi::tensor::Node;
use crate::handoff::Outbox;
use crate::kv_cells;
use crate::manifest::{Checkpoint, Resolved, Symbols};
use crate::names::{derived_from, original_name, NodeFilter};
use crate::record::{Layout, Operand};

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
    /// Every node whose name matches (`--tensors '*'`: the whole graph);
    /// files are named `<graph index>_<name made file-safe>`. A KV cache's
    /// views and writes keep only their filled cells unless `keep_padding`.
    Glob {
        filter: NodeFilter,
        keep_padding: bool,
        /// `--operands`: the model's tensor names (what tells a weight, which
        /// a replay reads from the GGUF, from an operand to copy).
        operands: Option<HashSet<Box<[u8]>>>,
    },
}

pub struct Capture {
    /// The manifest's checkpoints (none with a glob).
    checkpoints: Vec<Checkpoint>,
    glob: Option<NodeFilter>,
    /// `--keep-padding`: a KV cache's nodes written whole in glob mode.
    keep_padding: bool,
    /// `--operands`: the GGUF's tensor names; `None` without.
    weights: Option<HashSet<Box<[u8]>>>,
    /// The pass's filled KV cells (the `n_kv` symbol).
    n_kv: i64,
    /// The graph index of the node last asked about (glob mode's file names).
    node_index: usize,
    /// Nodes the glob matched this pass.
    matched: usize,
    /// Glob mode: each node copied this pass, by identity -> graph index, so
    /// that the record names an operand's node (filled in `observe`, never
    /// on the ask path).
    copied: HashMap<usize, usize>,
    /// Glob mode: the graph index of the last node copied under each name,
    /// for the operands a split graph hands a node as the scheduler's
    /// copies (`BACKEND#NAME#N`), whose own bytes are read unreliably once
    /// later splits ran.
    copied_by_name: HashMap<Box<[u8]>, usize>,
    /// Node name -> checkpoints with that name (several only when `op` disambiguates).
    by_name: HashMap<Box<[u8]>, Vec<usize>>,
    /// Operand name -> checkpoints found by an operand alone (no `tensor`).
    by_operand: HashMap<Box<[u8]>, Vec<usize>>,
    /// Checkpoints found by an operand further up (`operand_depth` > 1, no `tensor`).
    deep: Vec<usize>,
    resolved: Vec<Resolved>,
    seen: Vec<bool>,
    /// Capturing this pass? Between passes, and for passes not captured, nothing is wanted.
    active: bool,
    /// What this pass does with the nodes it asked for.
    reading: Reading,
    /// Whether the context was made with flash attention (the checkpoints
    /// are in its layouts), and whether this pass's graph had a
    /// FLASH_ATTN_EXT node: the two must agree.
    flash_attn: bool,
    flash_attn_seen: bool,
    step: usize,
    /// Threads a large node's copy may use: the compute's, which wait meanwhile.
    threads: usize,
    scratch: Vec<u8>,
    outbox: Outbox,
}

impl Capture {
    /// `flash_attn`: how the context is made; a manifest's checkpoints must
    /// already be in that graph's layouts (`Manifest::under_flash_attn`).
    /// `threads`: the compute's CPU threads, the most a copy may use.
    pub fn new(selection: Selection, outbox: Outbox, flash_attn: bool, threads: usize) -> Capture {
        let (checkpoints, glob, keep_padding, weights) = match selection {
            Selection::Manifest(checkpoints) => (checkpoints, None, true, None),
            Selection::Glob {
                filter,
                keep_padding,
                operands,
            } => (Vec::new(), Some(filter), keep_padding, operands),
        };
        let mut by_name: HashMap<Box<[u8]>, Vec<usize>> = HashMap::new();
        let mut by_operand: HashMap<Box<[u8]>, Vec<usize>> = HashMap::new();
        let mut deep = Vec::new();
        for (i, cp) in checkpoints.iter().enumerate() {
            let (map, key) = match (&cp.operand, cp.tensor.is_empty()) {
                (Some(_), true) if cp.operand_depth > 1 => {
                    deep.push(i);
                    continue;
                }
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
            keep_padding,
            weights,
            n_kv: 0,
            node_index: 0,
            matched: 0,
            copied: HashMap::new(),
            copied_by_name: HashMap::new(),
            by_name,
            by_operand,
            deep,
            resolved: vec![placeholder; n],
            seen: vec![false; n],
            active: false,
            reading: Reading::Keep,
            flash_attn,
            flash_attn_seen: false,
            step: 0,
            threads,
            scratch: Vec::new(),
            outbox,
        }
    }

    /// Arms the capture for one forward pass with that pass's symbol values.
    pub fn begin_pass(&mut self, step: usize, symbols: &Symbols, reading: Reading) -> Result<()> {
        for (r, cp) in self.resolved.iter_mut().zip(&self.checkpoints) {
            *r = cp.resolve(symbols)?;
        }
        self.seen.fill(false);
        self.flash_attn_seen = false;
        self.step = step;
        self.n_kv = symbols.n_kv;
        self.reading = reading;
        self.node_index = 0;
        self.matched = 0;
        self.copied.clear();
        self.copied_by_name.clear();
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

    /// Every checkpoint seen, in a graph whose flash attention is the one
    /// the context was made with.
    fn check_graph(&self) -> Result<()> {
        if self.flash_attn_seen != self.flash_attn {
            bail!(
                "the context was made with flash attention {} but the graph of pass {} {} a FLASH_ATTN_EXT node \
                 (the backend decided otherwise): run with --flash-attn {}",
                if self.flash_attn { "on" } else { "off" },
                self.step,
                if self.flash_attn_seen { "has" } else { "has no" },
                if self.flash_attn_seen { "on" } else { "off" },
            );
        }
        let missing: Vec<String> = self
            .checkpoints
            .iter()
            .zip(&self.seen)
            .filter(|(_, seen)| !**seen)
            .map(|(cp, _)| format!("{} ({})", cp.id, cp.node()))
            .collect();
        if !missing.is_empty() {
            let hint = match self.flash_attn {
                true => " Flash attention is on: a node that exists only without it needs --flash-attn off, \
                         or `flash_attn: {absent: <why>}` in its manifest entry.",
                false => "",
            };
            bail!(
                "{} checkpoint(s) not seen in pass {}: {}.\nThe graph has no node of that name: a typo in the manifest, \
                 or a node renamed upstream (a node llama.cpp leaves unnamed is selected by `op` and `operand`). \
                 Run with --list-nodes to see the graph's node names and operands.{hint}",
                missing.len(),
                self.step,
                missing.join(", ")
            );
        }
        Ok(())
    }

    /// No more passes will be kept: the writer may finish.
    pub fn close(&mut self) {
        self.outbox.close();
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
        let resolved = self.resolved[index];
        let keep = match resolved.keep(node.ne()) {
            Ok(keep) => keep,
            // Another llama.cpp may reshape later: the same elements in the same order.
            Err(_) if resolved.regroups(node.ne()) => node.ne(),
            Err(mismatch) => bail!(
                "checkpoint {} ({}, manifest shape {}): shape mismatch: {mismatch}",
                cp.id,
                cp.node(),
                cp.shape_text()
            ),
        };
        let mut data = self.outbox.buffer(elements(keep));
        let fetched = node.copy_to_f32(keep, self.threads, &mut self.scratch, &mut data)?;
        Ok(Captured {
            fetched,
            id: cp.id.clone(),
            layer: cp.layer,
            // The node's own name: what the graph calls it, however it was found.
            tensor: node.name_lossy(),
            file_stem: cp.file_stem.clone(),
            step: self.step,
            ggml_ne: node.ne(),
            // The manifest's shape: a regrouped node's elements, in the same order.
            shape: resolved.file_shape(),
            source_dtype: node.type_name(),
            op: node.op_name(),
            buffer: node.buffer_name(),
            data,
            place: Place::default(),
        })
    }

    /// A node of the whole graph, as it is, but for a KV cache's padding;
    /// with `--operands`, after the copies of the operands a replay needs.
    fn copy_whole(&mut self, node: &Node<'_>) -> Result<Vec<Captured>> {
        let ne = node.ne();
        let keep = match self.keep_padding {
            true => ne,
            false => kv_cells::filled(ne, self.cell_axis(node), self.n_kv),
        };
        let name = node.name_lossy();
        let file_stem = format!("{:04}_{}", self.node_index, file_safe(&name));
        let layer = name.rsplit_once('-').and_then(|(_, l)| l.parse().ok());
        let (mut copies, operands) = match self.weights.is_some() {
            true => self.operands_for_replay(node, &file_stem, layer)?,
            false => (Vec::new(), self.operands(node)),
        };
        let mut captured = self.copy_as_is(node, keep, file_stem, layer)?;
        captured.place.graph_index = Some(self.node_index);
        captured.place.operands = operands;
        if self.weights.is_some() {
            let params = node.op_params();
            let used = params.iter().rposition(|&p| p != 0).map_or(0, |i| i + 1);
            captured.place.op_params = params[..used].to_vec();
            captured.place.layout = Some(layout(node));
            captured.place.flags = Some(node.flags());
        }
        self.copied.insert(node.identity(), self.node_index);
        self.copied_by_name
            .insert(node.name().into(), self.node_index);
        copies.push(captured);
        Ok(copies)
    }

    /// A tensor copied whole (but `keep`), under `file_stem`.
    fn copy_as_is(
        &mut self,
        node: &Node<'_>,
        keep: [i64; 4],
        file_stem: String,
        layer: Option<u32>,
    ) -> Result<Captured> {
        let mut data = self.outbox.buffer(elements(keep));
        let fetched = node.copy_to_f32(keep, self.threads, &mut self.scratch, &mut data)?;
        let n_dims = keep.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
        Ok(Captured {
            fetched,
            id: file_stem.clone(),
            layer,
            tensor: node.name_lossy(),
            file_stem,
            step: self.step,
            ggml_ne: node.ne(),
            shape: keep[..n_dims].iter().rev().copied().collect(),
            source_dtype: node.type_name(),
            op: node.op_name(),
            buffer: node.buffer_name(),
            data,
            place: Place::default(),
        })
    }

    /// The node's operands by name, and by graph index where captured (a
    /// scheduler's copy by the node it copies).
    fn operands(&self, node: &Node<'_>) -> Vec<Operand> {
        node.sources()
            .map(|s| {
                let original = original_name(s.name());
                let copy_of = (original.len() < s.name().len())
                    .then(|| self.copied_by_name.get(original))
                    .flatten();
                Operand {
                    name: s.name_lossy(),
                    node: self.copied.get(&s.identity()).or(copy_of).copied(),
                    ..Operand::default()
                }
            })
            .collect()
    }

    /// `--operands`: each operand with its type, extent and layout, and
    /// where a replay finds its values: a node captured before, a weight of
    /// the GGUF, or a copy made now (returned, to be written before the node).
    fn operands_for_replay(
        &mut self,
        node: &Node<'_>,
        file_stem: &str,
        layer: Option<u32>,
    ) -> Result<(Vec<Captured>, Vec<Operand>)> {
        let mut copies = Vec::new();
        let mut operands = self.operands(node);
        for (k, (s, operand)) in node.sources().zip(&mut operands).enumerate() {
            operand.dtype = Some(s.type_name().to_string());
            operand.ggml_ne = Some(s.ne());
            operand.layout = Some(layout(&s));
            if operand.node.is_some() {
                continue;
            }
            let weights = self.weights.as_ref().expect("--operands");
            if s.is_leaf() && weights.contains(original_name(s.name())) {
                operand.weight = true;
                operand.name = String::from_utf8_lossy(original_name(s.name())).into_owned();
            } else if let Some(why) = unavailable(node, &s) {
                operand.unavailable = Some(why.to_string());
            } else {
                let stem = format!("{file_stem}.src{k}");
                let mut copy = self.copy_as_is(&s, s.ne(), stem.clone(), layer)?;
                copy.place.operand_of = Some(self.node_index);
                copy.place.layout = operand.layout.clone();
                copies.push(copy);
                operand.file = Some(stem);
            }
        }
        Ok((copies, operands))
    }

    /// The axis of a KV cache's node along which only `n_kv` cells are filled.
    fn cell_axis(&self, node: &Node<'_>) -> Option<usize> {
        let root = node.view_root().unwrap_or(*node);
        kv_cells::is_cache(root.name())
            .then(|| {
                kv_cells::cell_axis(
                    node.geometry(),
                    root.geometry(),
                    node.type_size(),
                    self.n_kv,
                )
            })
            .flatten()
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
                    .is_none_or(|operand| has_operand(node, operand.as_bytes(), cp.operand_depth))
        };
        if let Some(i) = self
            .by_name
            .get(node.name())
            .and_then(|c| c.iter().copied().find(fits))
        {
            return Some(i);
        }
        if let Some(i) = self.deep.iter().copied().find(fits) {
            return Some(i);
        }
        if self.by_operand.is_empty() {
            return None;
        }
        node.source_names().find_map(|s| {
            self.by_operand
                .get(original_name(s))?
                .iter()
                .copied()
                .find(fits)
        })
    }
}

/// A node name as a file name: what is not a letter, digit, `-`, `_` or
/// `.` becomes `_`.
fn file_safe(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || "-_.".contains(c) {
            true => c,
            false => '_',
        })
        .collect();
    safe.trim_matches('_').to_string()
}

/// Where a tensor's bytes lie, for the record.
fn layout(t: &Node<'_>) -> Layout {
    Layout {
        nb: t.nb().map(|b| b as u64),
        view_of: t.view_root().map(|root| root.name_lossy()),
        offset: t.view_offset() as u64,
    }
}

/// Why an operand's bytes, read once its consumer ran, are not what the
/// consumer read: the consumer wrote them. `None` when they still are.
fn unavailable(node: &Node<'_>, operand: &Node<'_>) -> Option<&'static str> {
    let views = ["VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"];
    let root = node.view_root().map(|r| r.identity());
    if root == Some(operand.identity()) && !views.contains(&node.op_name()) {
        return Some("the node's own destination, which it wrote in place");
    }
    let in_place =
        root.is_none() && !operand.is_leaf() && operand.data_address() == node.data_address();
    in_place.then_some(
        "computed over in place by this node and not captured: capture the node that made it too",
    )
}

/// How many floats a copy keeping `keep` holds.
fn elements(keep: [i64; 4]) -> usize {
    keep.iter().map(|&k| k.max(0) as usize).product()
}

/// Whether `name` is an operand of `node` at most `depth` steps up (1: a
/// direct operand). Allocation-free; deep walks only follow nodes whose op
/// already fits, so they stay rare.
fn has_operand(node: &Node<'_>, name: &[u8], depth: u8) -> bool {
    depth > 0
        && node.sources().any(|s| {
            let own = original_name(s.name());
            // A copy has no operands to walk up: a view of `name` made
            // before the copy is named after it.
            let copied_view = own.len() < s.name().len() && derived_from(own, name);
            own == name || copied_view || has_operand(&s, name, depth - 1)
        })
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
                // A replay needs integer nodes too (argsort's expert choices).
                let copies =
                    node.converts_to_f32() || (self.weights.is_some() && node.is_integer());
                let wanted = copies
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
                Some(index) => vec![self.copy_checkpoint(index, node)?],
                None => return Ok(()),
            },
        };
        for captured in captured {
            match self.reading {
                Reading::Discard => self.outbox.recycle(captured.data),
                _ => self.outbox.push(captured)?,
            }
        }
        Ok(())
    }
}
