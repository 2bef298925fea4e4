//! What a graph node is called: `--tensors`' globs over names, the name
//! of what a scheduler's copy copies, and views named after their base.
//! Allocation-free: the eval callback's ask path uses them.

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

/// The name of the tensor a scheduler's copy was made from: where a graph
/// is split between backends (`-ngl`, a GPU's op offload), ggml-backend
/// hands a node the copy of an operand that lives on another backend,
/// named `BACKEND#NAME#N`; any other name is itself. Allocation-free.
pub fn original_name(name: &[u8]) -> &[u8] {
    let (Some(first), Some(last)) = (
        name.iter().position(|&b| b == b'#'),
        name.iter().rposition(|&b| b == b'#'),
    ) else {
        return name;
    };
    let copy_index = &name[last + 1..];
    match last > first && !copy_index.is_empty() && copy_index.iter().all(u8::is_ascii_digit) {
        true => &name[first + 1..last],
        false => name,
    }
}

/// Whether `name` is `base` or a view of it as ggml names them (`base
/// (view)`, `base (view) (permuted)`, ...).
pub fn derived_from(name: &[u8], base: &[u8]) -> bool {
    name.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b" ("))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduler_copy_is_known_by_the_name_of_what_it_copies() {
        let original = |n: &str| String::from_utf8_lossy(original_name(n.as_bytes())).into_owned();
        assert_eq!(
            original("Vulkan0#blk.0.attn_output.bias#0"),
            "blk.0.attn_output.bias"
        );
        assert_eq!(original("CPU#Kcur-0 (view)#12"), "Kcur-0 (view)");
        assert_eq!(
            original("Vulkan0#cache_k_l0 (view) (permuted)#0"),
            "cache_k_l0 (view) (permuted)"
        );
        for itself in ["kq-0", "a#b", "#3", "x#y#z", "x#y#"] {
            assert_eq!(original(itself), itself);
        }
        assert!(derived_from(b"cache_k_l0 (view) (permuted)", b"cache_k_l0"));
        assert!(derived_from(b"cache_k_l0", b"cache_k_l0"));
        assert!(!derived_from(b"cache_k_l01 (view)", b"cache_k_l0"));
        assert!(!derived_from(b"cache_k_l1 (view)", b"cache_k_l0"));
    }
}
