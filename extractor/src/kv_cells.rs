//! Which axis of a KV-cache node holds the cache's cells, so that every-node
//! capture writes the filled cells and not the padding.
//!
//! llama.cpp stores layer `il`'s keys and values as `cache_k_l{il}` and
//! `cache_v_l{il}`, `[n_embd_gqa, kv_size, n_stream]`: one row per cell. A
//! read is a view of the first `n_kv` cells, padded to 256, and a write's
//! node is the whole cache. The filled cells are the first `n_kv` (the
//! symbol: a single sequence from a cleared cache), along one axis of the
//! node that is found by its stride alone:
//! - **row-major**: the axis whose stride is the cache's row (K, and V with
//!   flash attention; the writes);
//! - **transposed** (V without flash attention): axis 0, a cell per element,
//!   every other axis a whole multiple of `kv_size` cells away.
//!
//! Where both or neither fit (a coincidence of sizes, a layout another
//! llama.cpp invented, the transposed V write's `[1, kv_size * n_embd]`), the
//! node is written whole: dropping a cell that holds a token must never happen.

/// A tensor's extent and strides, innermost first, as ggml keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub ne: [i64; 4],
    /// Bytes between neighbours along each axis.
    pub nb: [usize; 4],
}

/// Whether `name` is a KV cache's (`cache_k_l3`, `cache_v_l0`, and tagged
/// ones such as an iSWA cache's), not a recurrent state (`cache_r_l0`).
pub fn is_cache(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(b"cache_") else {
        return false;
    };
    let Some(at) = rest.windows(2).rposition(|w| w == b"_l") else {
        return false;
    };
    let (kind, layer) = (&rest[..at], &rest[at + 2..]);
    matches!(kind.last(), Some(b'k' | b'v'))
        && !layer.is_empty()
        && layer.iter().all(u8::is_ascii_digit)
}

/// The axis of `node`, a view of (or write to) the cache `root`, along which
/// only the first `n_kv` indices are filled cells; `None` when nothing is
/// padding or the axis cannot be told for certain.
pub fn cell_axis(node: Geometry, root: Geometry, type_size: usize, n_kv: i64) -> Option<usize> {
    let (kv_size, row) = (root.ne[1], root.nb[1]);
    let padded = |d: usize| node.ne[d] > n_kv && node.ne[d] <= kv_size;
    let row_major = (0..4).filter(|&d| padded(d) && node.nb[d] == row);
    let cells = kv_size as usize * type_size;
    let transposed = padded(0)
        && node.nb[0] == type_size
        && (1..4).all(|d| node.ne[d] == 1 || (cells > 0 && node.nb[d].is_multiple_of(cells)));
    let mut axes = row_major.chain(transposed.then_some(0));
    match (n_kv > 0, axes.next(), axes.next()) {
        (true, Some(axis), None) => Some(axis),
        _ => None,
    }
}

/// `ne` with the padded cells dropped along `axis` (the node whole without one).
pub fn filled(ne: [i64; 4], axis: Option<usize>, n_kv: i64) -> [i64; 4] {
    let mut keep = ne;
    if let Some(axis) = axis {
        keep[axis] = n_kv;
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    // GPT-2-sized: 12 heads of 64, a 512-cell f16 cache, 3 tokens filled.
    const TS: usize = 2;
    const HEAD: i64 = 64;
    const HEADS: i64 = 12;
    const EMBD: i64 = HEAD * HEADS;
    const KV: i64 = 512;
    const N_KV: i64 = 3;

    fn cache() -> Geometry {
        let row = EMBD as usize * TS;
        Geometry {
            ne: [EMBD, KV, 1, 1],
            nb: [TS, row, row * KV as usize, row * KV as usize],
        }
    }

    fn view(ne: [i64; 4], nb: [i64; 3]) -> Geometry {
        let nb = nb.map(|n| n as usize * TS);
        Geometry {
            ne,
            nb: [TS, nb[0], nb[1], nb[2]],
        }
    }

    #[test]
    fn cache_names_are_k_and_v_with_a_layer() {
        for name in ["cache_k_l0", "cache_v_l31", "cache_swa_k_l2"] {
            assert!(is_cache(name.as_bytes()), "{name}");
        }
        for name in [
            "cache_r_l0",
            "cache_s_l1",
            "cache_k_l",
            "cache_k_lx",
            "k_l0",
            "attn_norm-0",
        ] {
            assert!(!is_cache(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn a_key_view_is_cut_along_its_cells() {
        // get_k: [head_dim, n_head_kv, n_kv padded to 256, streams].
        let k = view([HEAD, HEADS, 256, 1], [HEAD, EMBD, EMBD * KV]);
        assert_eq!(cell_axis(k, cache(), TS, N_KV), Some(2));
        assert_eq!(filled(k.ne, Some(2), N_KV), [HEAD, HEADS, N_KV, 1]);
    }

    #[test]
    fn a_write_is_cut_to_the_filled_rows() {
        // set_rows' result: the whole cache.
        let write = cache();
        assert_eq!(cell_axis(write, cache(), TS, N_KV), Some(1));
    }

    #[test]
    fn a_transposed_value_view_is_cut_along_axis_zero() {
        // get_v without flash attention: [n_kv, n_head_kv, head_dim, streams].
        let v = view([256, HEADS, HEAD, 1], [KV * HEAD, KV, KV * EMBD]);
        assert_eq!(cell_axis(v, cache(), TS, N_KV), Some(0));
    }

    #[test]
    fn what_cannot_be_told_for_certain_is_kept_whole() {
        // The transposed write, [1, kv_size * n_embd]: cells interleaved.
        let write = Geometry {
            ne: [1, KV * EMBD, 1, 1],
            nb: [TS, TS, TS * (KV * EMBD) as usize, TS * (KV * EMBD) as usize],
        };
        assert_eq!(cell_axis(write, cache(), TS, N_KV), None);
        // A cache as wide as it is long: the row stride and a transposed
        // view's head stride coincide, so the axis is ambiguous.
        let square = Geometry {
            ne: [KV, KV, 1, 1],
            nb: [TS, KV as usize * TS, 0, 0],
        };
        let v = view([256, 8, KV / 8, 1], [KV * KV / 8, KV, KV * KV]);
        assert_eq!(cell_axis(v, square, TS, N_KV), None);
        // Nothing to drop: every cell filled, or none.
        let k = view([HEAD, HEADS, 256, 1], [HEAD, EMBD, EMBD * KV]);
        assert_eq!(cell_axis(k, cache(), TS, 256), None);
        assert_eq!(cell_axis(k, cache(), TS, 0), None);
        assert_eq!(filled(k.ne, None, N_KV), k.ne);
    }
}
