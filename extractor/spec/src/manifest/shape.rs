//! Shapes in symbols (`[n_embd, n_tokens]`), their values for one pass, and
//! the check of a node's `ne` against them.

use anyhow::{Context, Result};
use serde::Deserialize;

/// Symbols a shape may use; resolved from the model and the pass at run time.
pub const SYMBOLS: &[&str] = &[
    "n_embd",
    "n_head",
    "n_head_kv",
    "head_dim",
    "n_embd_gqa",
    "n_ff",
    "n_vocab",
    "n_ctx",
    "n_tokens",
    "n_kv",
];

/// A dimension, of a shape or of an op: a number, a symbol of the run
/// (`n_embd`), or a product or quotient (`2*n_embd`, `n_head*head_dim`, `head_dim/2`).
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Dim {
    Fixed(i64),
    Expr(String),
}

impl Dim {
    /// Resolves `n_embd`, `2*n_embd`, `head_dim/2`, `7` against the run's
    /// symbols: numbers and symbols joined by `*` and `/`, left to right; a
    /// division must be exact.
    pub fn resolve(&self, symbols: &Symbols) -> Result<i64> {
        let expr = match self {
            Dim::Fixed(n) => return Ok(*n),
            Dim::Expr(expr) => expr,
        };
        let value = |factor: &str| -> Result<i64> {
            let factor = factor.trim();
            match factor.parse::<i64>() {
                Ok(n) => Ok(n),
                Err(_) => symbols.get(factor).with_context(|| {
                    format!(
                        "unknown symbol `{factor}` in `{expr}`; known: {}",
                        SYMBOLS.join(", ")
                    )
                }),
            }
        };
        let mut rest = expr.as_str();
        let end = rest.find(['*', '/']).unwrap_or(rest.len());
        let mut acc = value(&rest[..end])?;
        rest = &rest[end..];
        while let Some(op) = rest.chars().next() {
            rest = &rest[1..];
            let end = rest.find(['*', '/']).unwrap_or(rest.len());
            let v = value(&rest[..end])?;
            rest = &rest[end..];
            acc = match op {
                '*' => acc
                    .checked_mul(v)
                    .with_context(|| format!("`{expr}` overflows: {acc} * {v}"))?,
                _ if v > 0 && acc % v == 0 => acc / v,
                _ => anyhow::bail!("`{expr}` divides {acc} by {v}, which does not go exactly"),
            };
        }
        // A GGUF chooses the symbols: a negative or zero one is no dimension.
        anyhow::ensure!(acc >= 1, "`{expr}` is {acc}, not a positive dimension");
        Ok(acc)
    }
}

impl Dim {
    /// Whether every factor is a number or a known symbol (checked when the
    /// manifest is read, so a typo costs no model load).
    pub fn check(&self) -> Result<(), String> {
        match self {
            Dim::Fixed(n) if *n < 1 => Err(format!("dimension {n} must be positive")),
            Dim::Fixed(_) => Ok(()),
            Dim::Expr(expr) => {
                for factor in expr.split(['*', '/']).map(str::trim) {
                    if factor.parse::<i64>().is_err() && !SYMBOLS.contains(&factor) {
                        return Err(format!(
                            "unknown symbol `{factor}` in `{expr}`; known: {}",
                            SYMBOLS.join(", ")
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// `n_kv`: a dimension of padded KV-cache cells.
    pub fn is_kv_cells(&self) -> bool {
        matches!(self, Dim::Expr(e) if e.trim() == "n_kv")
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Expr(e) => write!(f, "{e}"),
        }
    }
}

/// The values of the shape symbols for one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Symbols {
    pub n_embd: i64,
    /// Query heads.
    pub n_head: i64,
    /// Key/value heads (fewer than `n_head` with grouped-query attention).
    pub n_head_kv: i64,
    /// Per head: GGUF `<arch>.attention.key_length`, else `n_embd / n_head`.
    pub head_dim: i64,
    /// The width of K and V: `head_dim * n_head_kv`.
    pub n_embd_gqa: i64,
    pub n_ff: i64,
    pub n_vocab: i64,
    pub n_ctx: i64,
    pub n_tokens: i64,
    /// KV-cache cells holding tokens (history included).
    pub n_kv: i64,
}

impl Symbols {
    pub fn get(&self, name: &str) -> Option<i64> {
        Some(match name {
            "n_embd" => self.n_embd,
            "n_head" => self.n_head,
            "n_head_kv" => self.n_head_kv,
            "head_dim" => self.head_dim,
            "n_embd_gqa" => self.n_embd_gqa,
            "n_ff" => self.n_ff,
            "n_vocab" => self.n_vocab,
            "n_ctx" => self.n_ctx,
            "n_tokens" => self.n_tokens,
            "n_kv" => self.n_kv,
            _ => return None,
        })
    }
}

/// An expected shape resolved for one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub ne: [i64; 4],
    pub n_dims: usize,
    /// Dimensions written `n_kv`: the node holds the padded cache there, and
    /// only the first `n_kv` (filled) cells are kept.
    pub kv_dims: [bool; 4],
}

impl Resolved {
    /// Checks a node's ne against this shape; returns the ne to keep (padded
    /// KV cells dropped), or a description of the mismatch.
    pub fn keep(&self, actual: [i64; 4]) -> Result<[i64; 4], String> {
        let mut keep = actual;
        for d in 0..4 {
            let ok = if self.kv_dims[d] {
                actual[d] >= self.ne[d]
            } else {
                actual[d] == self.ne[d]
            };
            if !ok {
                return Err(format!(
                    "expected ne {}, got {}",
                    fmt_ne(&self.ne[..self.n_dims.max(1)]),
                    fmt_ne(&trim(actual))
                ));
            }
            keep[d] = self.ne[d];
        }
        Ok(keep)
    }

    /// Whether a node of ne `actual` holds this shape's elements in the same
    /// order, its dimensions only grouped differently: [768, 2] for
    /// [64, 12, 2] (another llama.cpp reshapes later), never [2, 768]. True
    /// when the totals match and every boundary between `actual`'s
    /// dimensions is one of this shape's. Not for shapes over KV cells,
    /// whose padding must be cut per dimension.
    pub fn regroups(&self, actual: [i64; 4]) -> bool {
        let products = |ne: [i64; 4]| {
            let mut p = [1i64; 4];
            let mut acc = 1i64;
            for d in 0..4 {
                acc = acc.saturating_mul(ne[d]);
                p[d] = acc;
            }
            p
        };
        let (mine, theirs) = (products(self.ne), products(actual));
        !self.kv_dims.iter().any(|&k| k)
            && mine[3] == theirs[3]
            && theirs.iter().all(|b| mine.contains(b))
    }

    /// The file's shape: row-major, outermost first (ggml ne reversed).
    pub fn file_shape(&self) -> Vec<i64> {
        self.ne[..self.n_dims].iter().rev().copied().collect()
    }
}

fn trim(ne: [i64; 4]) -> Vec<i64> {
    let n = ne.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
    ne[..n].to_vec()
}

pub fn fmt_ne(ne: &[i64]) -> String {
    let dims: Vec<String> = ne.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}
