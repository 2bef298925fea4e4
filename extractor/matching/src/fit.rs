//! How well one tensor explains another: the NMSE of a node's values
//! against a candidate's times the best scalar, a lower bound of it over
//! every layout (from sorted values alone), and the scales that have a
//! reason to be there.

use llorch_checkpoint_spec::manifest::Symbols;

/// A candidate's values `t` fitted to a node's `l`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    /// The scalar `s` minimising |l - s*t|^2.
    pub scale: f64,
    /// |l - s*t|^2 / |l - mean(l)|^2 at that scale.
    pub nmse: f64,
    /// The same at scale 1.
    pub nmse_unit: f64,
}

/// `sum((l - mean l)^2)`: what the NMSEs here are relative to.
pub fn spread(l: &[f64]) -> f64 {
    let mean = l.iter().sum::<f64>() / l.len().max(1) as f64;
    l.iter().map(|x| (x - mean) * (x - mean)).sum()
}

/// `|l - s*t|^2 / spread`, summed directly (no cancellation at 1e-15).
pub fn nmse_at(l: &[f64], t: &[f64], s: f64, spread: f64) -> f64 {
    l.iter()
        .zip(t)
        .map(|(a, b)| (a - s * b) * (a - s * b))
        .sum::<f64>()
        / spread
}

/// The best scale for `t` and the NMSE there and at 1.
pub fn fit(l: &[f64], t: &[f64], spread: f64) -> Fit {
    let lt: f64 = l.iter().zip(t).map(|(a, b)| a * b).sum();
    let tt: f64 = t.iter().map(|b| b * b).sum();
    let scale = if tt > 0.0 { lt / tt } else { 1.0 };
    Fit {
        scale,
        nmse: nmse_at(l, t, scale, spread),
        nmse_unit: nmse_at(l, t, 1.0, spread),
    }
}

/// The smallest NMSE any arrangement of `t`'s values, at any scale, can
/// have against `l`'s: both sorted ascending (for a positive scale, sorted
/// pairs are the closest arrangement) or against each other (negative).
pub fn lower_bound(l_sorted: &[f64], t_sorted: &[f64], spread: f64) -> f64 {
    let best = |t: &mut dyn Iterator<Item = f64>, positive: bool| {
        let t: Vec<f64> = t.collect();
        let lt: f64 = l_sorted.iter().zip(&t).map(|(a, b)| a * b).sum();
        let tt: f64 = t.iter().map(|b| b * b).sum();
        let s = if tt > 0.0 { lt / tt } else { 0.0 };
        let s = if positive { s.max(0.0) } else { s.min(0.0) };
        nmse_at(l_sorted, &t, s, spread)
    };
    best(&mut t_sorted.iter().copied(), true).min(best(&mut t_sorted.iter().rev().copied(), false))
}

/// A scale with a reason: 1, a power of two, or the square root of a
/// dimension (Q pre-scaled by 1/sqrt(head_dim), embeddings by sqrt(n_embd)).
#[derive(Clone, Debug, PartialEq)]
pub struct Reasoned {
    pub value: f64,
    pub why: String,
}

pub fn reasoned_scales(symbols: &Symbols) -> Vec<Reasoned> {
    let mut out = vec![Reasoned {
        value: -1.0,
        why: "-1".into(),
    }];
    for name in ["head_dim", "n_embd", "n_head", "n_head_kv", "n_ff"] {
        let v = symbols.get(name).unwrap_or(0) as f64;
        if v > 1.0 {
            out.push(Reasoned {
                value: v.sqrt(),
                why: format!("sqrt({name})"),
            });
            out.push(Reasoned {
                value: 1.0 / v.sqrt(),
                why: format!("1/sqrt({name})"),
            });
        }
    }
    for k in 1..=10 {
        let p = f64::from(1u32 << k);
        out.push(Reasoned {
            value: p,
            why: format!("{p}"),
        });
        out.push(Reasoned {
            value: 1.0 / p,
            why: format!("1/{p}"),
        });
    }
    out
}

/// How a pair's scale is read.
#[derive(Clone, Debug, PartialEq)]
pub enum Scale {
    /// 1 fits as well as the best scale.
    One,
    /// A scale with a reason fits as well as the best one.
    Reasoned(Reasoned),
    /// The best scale has no reason: the pair is the same tensor up to it,
    /// and its verdict is taken at 1 (a wrong factor is a bug to show).
    Unexplained(f64),
}

impl Scale {
    /// The factor the reference is multiplied by for the verdict.
    pub fn factor(&self) -> f64 {
        match self {
            Scale::Reasoned(r) => r.value,
            _ => 1.0,
        }
    }
}

/// Reads a fitted scale: 1 or a reasoned one where it does as well (within
/// 0.1% of the fit: a factor ggml applies is exact, and one that comes near
/// a reason by chance rarely comes that near; and NMSE at most twice the
/// fit's plus rounding).
pub fn read_scale(f: &Fit, l: &[f64], t: &[f64], spread: f64, reasoned: &[Reasoned]) -> Scale {
    let as_good = |nmse: f64| nmse <= 2.0 * f.nmse + 1e-15;
    if as_good(f.nmse_unit) {
        return Scale::One;
    }
    for r in reasoned {
        if (f.scale / r.value - 1.0).abs() < 1e-3 && as_good(nmse_at(l, t, r.value, spread)) {
            return Scale::Reasoned(r.clone());
        }
    }
    Scale::Unexplained(f.scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_copy_fits_at_its_scale_and_the_bound_never_exceeds_a_fit() {
        let l: Vec<f64> = (0..50).map(|i| ((i * 7 % 13) as f64).sin()).collect();
        let t: Vec<f64> = l.iter().map(|x| x * 4.0).collect();
        let s = spread(&l);
        let f = fit(&l, &t, s);
        assert!((f.scale - 0.25).abs() < 1e-12 && f.nmse < 1e-25, "{f:?}");
        assert!(f.nmse_unit > 1.0);
        let symbols = llorch_checkpoint_spec::record::example().symbols;
        // head_dim 64 in the example: 1/4 is a power of two before it is 1/sqrt(16).
        assert_eq!(
            read_scale(&f, &l, &t, s, &reasoned_scales(&symbols)),
            Scale::Reasoned(Reasoned {
                value: 0.25,
                why: "1/4".into()
            })
        );
        // Shuffled, the values fit no better than the bound says.
        let mut shuffled = t.clone();
        shuffled.reverse();
        let mut ls = l.clone();
        ls.sort_by(f64::total_cmp);
        let mut ts = t.clone();
        ts.sort_by(f64::total_cmp);
        let bound = lower_bound(&ls, &ts, s);
        assert!(bound <= fit(&l, &shuffled, s).nmse + 1e-12);
        assert!(bound < 1e-25, "sorted copies are a perfect fit: {bound}");
        // A factor of 1.01 has no reason: it is shown, and the verdict is at 1.
        let off: Vec<f64> = l.iter().map(|x| x / 1.01).collect();
        let f = fit(&l, &off, s);
        assert!(
            matches!(read_scale(&f, &l, &off, s, &reasoned_scales(&symbols)), Scale::Unexplained(x) if (x - 1.01).abs() < 1e-9)
        );
    }
}
