//! The drafted checkpoints as a manifest's text: entries by role (one
//! with `{layer}` where a node is found the same way in every layer), ids,
//! what flash attention changes, tolerances.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use llorch_checkpoint_spec::manifest::Tolerance;

use super::draft::{templated, Drafted};

/// One entry of the manifest: a drafted checkpoint the same in every layer
/// it was found in (`{layer}` in its names), or outside the layers.
pub struct Role {
    /// The entry's id.
    pub id: String,
    /// The drafted checkpoints it stands for, one per layer (indices into the drafted list).
    pub members: Vec<usize>,
    /// The layers where it was found (none outside the layers).
    pub layers: Vec<u32>,
}

/// How a role is known across layers: selector, capture, ops and shape with the layer templated.
fn role_key(d: &Drafted) -> String {
    let (shape, capture, ops) = layout_key(d);
    format!("{}|{capture}|{ops}|{shape}", selector_key(d))
}

/// How the extractor finds the node, with the layer templated.
pub fn selector_key(d: &Drafted) -> String {
    let t = |s: &str| {
        d.layer
            .and_then(|l| templated(s, l))
            .unwrap_or_else(|| s.to_string())
    };
    format!(
        "{}|{}|{}|{}",
        d.selector.tensor.as_deref().map(t).unwrap_or_default(),
        d.selector.op,
        d.selector.operand.as_deref().map(t).unwrap_or_default(),
        d.selector.depth
    )
}

/// The node's shape and its reference (capture and ops), the layer templated.
fn layout_key(d: &Drafted) -> (String, String, String) {
    let capture = d
        .layer
        .and_then(|l| templated(&d.capture, l))
        .unwrap_or_else(|| d.capture.clone());
    (d.shape.join(", "), capture, d.ops.join(", "))
}

/// What flash attention changes of a role drafted from a graph without it,
/// by the same role in the graph with it: nothing (None), its layout, or
/// its absence; as the manifest's `flash_attn:` value.
pub fn under_flash_attn(off: &Drafted, with: &[Drafted]) -> Option<String> {
    let key = selector_key(off);
    let Some(on) = with.iter().find(|d| selector_key(d) == key) else {
        return Some(
            "{ absent: \"not in llama.cpp's graph with flash attention (FLASH_ATTN_EXT computes it inside)\" }".into(),
        );
    };
    let ((shape, capture, ops), theirs) = (layout_key(on), layout_key(off));
    match (shape.clone(), capture.clone(), ops.clone()) == theirs {
        true => None,
        false => Some(format!(
            "{{ shape: [{shape}], reference: {{ capture: \"{capture}\", ops: [{ops}] }} }}"
        )),
    }
}

/// The drafted checkpoints grouped into the manifest's entries, in graph
/// order: what comes before the layers, the layers', what comes after.
pub fn roles(drafted: &[Drafted]) -> Vec<Role> {
    let mut roles: Vec<Role> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (i, d) in drafted.iter().enumerate() {
        let key = role_key(d);
        match (d.layer, index.get(&key)) {
            (Some(l), Some(&r)) => {
                roles[r].layers.push(l);
                roles[r].members.push(i);
            }
            _ => {
                index.insert(key, roles.len());
                roles.push(Role {
                    id: String::new(),
                    members: vec![i],
                    layers: d.layer.into_iter().collect(),
                });
            }
        }
    }
    let first_layered = drafted
        .iter()
        .find(|d| d.layer.is_some())
        .map_or(usize::MAX, |d| d.node);
    roles.sort_by_key(|r| {
        let d = &drafted[r.members[0]];
        match (r.layers.is_empty(), d.node < first_layered) {
            (true, true) => 0,
            (false, _) => 1,
            (true, false) => 2,
        }
    });
    for (n, r) in roles.iter_mut().enumerate() {
        r.id = format!("{:02}_{}", n + 1, drafted[r.members[0]].slug);
    }
    roles
}

/// The whole manifest as YAML: `header` (comment lines) first, then the
/// entries of `roles`, templated where found in every layer of
/// `all_layers` (else with their own `layers:`); `tolerance` gives each entry's.
pub fn manifest_text(
    architecture: &str,
    header: &str,
    drafted: &[Drafted],
    roles: &[Role],
    all_layers: &[u32],
    tolerance: &dyn Fn(&Role) -> Tolerance,
    flash_attn: &dyn Fn(&Role) -> Option<String>,
) -> String {
    let mut text = String::new();
    for line in header.lines() {
        let _ = writeln!(text, "{}", format!("# {line}").trim_end());
    }
    let _ = writeln!(text, "architecture: {architecture}");
    let _ = writeln!(text, "description: drafted by matching every llama.cpp node with the reference's tensors by value");
    let _ = writeln!(
        text,
        "layers: [{}]",
        all_layers.first().copied().unwrap_or(0)
    );
    let _ = writeln!(text, "checkpoints:");
    for r in roles {
        let _ = writeln!(
            text,
            "{}",
            entry(
                &drafted[r.members[0]],
                r,
                all_layers,
                &tolerance(r),
                flash_attn(r)
            )
        );
    }
    text
}

/// One entry's YAML: with `{layer}` for a node of the layers (and its own
/// `layers:` where it is not in all of them), as it is outside them.
fn entry(
    d: &Drafted,
    r: &Role,
    all_layers: &[u32],
    t: &Tolerance,
    flash_attn: Option<String>,
) -> String {
    let name = |s: &str| -> String {
        d.layer
            .and_then(|l| templated(s, l))
            .unwrap_or_else(|| s.to_string())
    };
    let id = &r.id;
    let file = file_template(id, d.layer.is_some());
    let mut s = String::new();
    let _ = writeln!(s, "  - id: \"{id}\"");
    let _ = writeln!(s, "    what: \"{}\"", d.what.replace('"', "'"));
    let sel = &d.selector;
    if let Some(tensor) = &sel.tensor {
        let _ = writeln!(s, "    tensor: \"{}\"", name(tensor));
    }
    let _ = writeln!(s, "    op: {}", sel.op);
    if let Some(operand) = &sel.operand {
        let _ = writeln!(s, "    operand: \"{}\"", name(operand));
    }
    if sel.depth > 1 {
        let _ = writeln!(s, "    operand_depth: {}", sel.depth);
    }
    if !r.layers.is_empty() && r.layers != all_layers {
        let layers: Vec<String> = r.layers.iter().map(|l| l.to_string()).collect();
        let _ = writeln!(
            s,
            "    layers: [{}]  # the layers that have this node",
            layers.join(", ")
        );
    }
    let _ = writeln!(s, "    shape: [{}]", d.shape.join(", "));
    let _ = writeln!(s, "    file: {file}");
    let _ = writeln!(
        s,
        "    reference: {{ capture: \"{}\", ops: [{}] }}",
        name(&d.capture),
        d.ops.join(", ")
    );
    if let Some(fa) = flash_attn {
        let _ = writeln!(s, "    flash_attn: {fa}");
    }
    let _ = write!(
        s,
        "    tolerance: {{ atol: {}, atol_of_max: {}, rtol: {}, nmse: {} }}",
        number(t.atol),
        number(t.atol_of_max),
        number(t.rtol),
        number(t.nmse)
    );
    s
}

/// An entry's `file:`, `{layer}` in it for a node of the layers: also the
/// stem of the files an automatic comparison writes for it.
pub fn file_template(id: &str, layered: bool) -> String {
    match layered {
        true => format!("checkpoint_{id}_l{{layer}}"),
        false => format!("checkpoint_{id}"),
    }
}

/// A tolerance as a person writes it: two significant digits, no float noise.
fn number(x: f64) -> String {
    match x {
        0.0 => "0".into(),
        x if (1e-2..1e3).contains(&x.abs()) => format!("{}", (x * 1e4).round() / 1e4),
        x => format!("{x:.1e}"),
    }
}
