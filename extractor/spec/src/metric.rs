//! How far one tensor is from another, defined once for every comparison
//! this project makes (llama.cpp vs PyTorch, CPU vs GPU, batch vs
//! sequential, an engine's tensor vs llama.cpp's): NMSE, the metrics of a
//! checkpoint against its reference and the tolerance it is held to; and
//! the summary of one tensor a run record keeps (min, max, mean).

use serde::Serialize;

use crate::manifest::Tolerance;

/// NMSE from its two sums: `sum((test-ref)^2) / sum((ref-mean(ref))^2)`,
/// which is `mean((test-ref)^2) / var(ref)`, the measure llama.cpp's own
/// model-conversion checks use. Infinite when the reference is constant and
/// the test is not; 0 when both agree exactly; NaN when a sum is (never a
/// perfect score for a NaN).
pub fn nmse_from_sums(squared_error: f64, variance: f64) -> f64 {
    if squared_error.is_nan() || variance.is_nan() {
        f64::NAN
    } else if variance > 0.0 {
        squared_error / variance
    } else if squared_error > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// NMSE of `test` against `reference` (same length), in f64.
pub fn nmse<T: Copy + Into<f64>>(test: &[T], reference: &[T]) -> f64 {
    assert_eq!(
        test.len(),
        reference.len(),
        "NMSE of tensors of different sizes"
    );
    let n = reference.len().max(1) as f64;
    let mean = reference.iter().map(|&r| r.into()).sum::<f64>() / n;
    let (mut squared_error, mut variance) = (0f64, 0f64);
    for (&t, &r) in test.iter().zip(reference) {
        let (t, r): (f64, f64) = (t.into(), r.into());
        squared_error += (t - r) * (t - r);
        variance += (r - mean) * (r - mean);
    }
    nmse_from_sums(squared_error, variance)
}

/// NMSE in decibels: `10 log10(nmse)` (-inf when equal).
pub fn db(nmse: f64) -> f64 {
    10.0 * nmse.log10()
}

/// Candidate vs llama.cpp asks "does it compute what llama.cpp computes?",
/// a tighter question than llama.cpp vs float64. This default is set by
/// what correct llama.cpp runs of the synthetic f32 GPT-2 (all 12 layers,
/// 119 tokens) differ by: 2 threads vs 1, bitwise equal; f16 vs f32 KV
/// cache, NMSE up to 3.4e-6 and |diff| up to 2.2e-3 of the largest |value|;
/// flash attention on vs off, 4.0e-7; the prompt as one batch vs one token
/// at a time, 3.9e-6 and 2.6e-3. NMSE 2e-5 sits 5x above the worst and 5x
/// below a 1.01 scaling's 1e-4; 0.005 of the largest |value| 2x above.
/// On a quantised model llama.cpp quantises each matmul's input to 8 bits,
/// so a rounding difference upstream moves values by whole steps (SmolLM2
/// Q4_1, batch vs sequential: NMSE 8.8e-5 at layer 0's FFN, 6.5e-3 at layer
/// 29): an engine that does not quantise them alike exceeds this, which is
/// the true answer; `Manifest` asks the looser question.
pub const AGAINST_LLAMA_CPP: Tolerance = Tolerance {
    atol: 0.0,
    atol_of_max: 5e-3,
    rtol: 0.0,
    nmse: 2e-5,
};

/// How far a llama.cpp checkpoint is from a reference.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Metrics {
    pub max_abs: f64,
    /// The element of the largest |test-ref| (flat, row-major).
    pub max_abs_at: usize,
    /// Quantiles of |test-ref|: median, 99th and 99.9th percentile.
    pub p50_abs: f64,
    pub p99_abs: f64,
    pub p999_abs: f64,
    /// max |test-ref| / |ref| over elements with ref != 0 (inf if ref == 0 != test).
    pub max_rel: f64,
    /// mean((test-ref)^2) / var(ref).
    pub nmse: f64,
    pub nmse_db: f64,
    pub cosine: f64,
    /// Elements with |test-ref| > atol + rtol*|ref|, and their share.
    pub n_outside: usize,
    pub outside: f64,
    /// max |test-ref| / (atol + rtol*|ref|): above 1 means outside.
    pub worst_ratio: f64,
    /// The element with the largest ratio (flat, row-major).
    pub worst: usize,
    /// The absolute bound these elements were held to (the tolerance's
    /// atol plus its share of the reference's largest |value|).
    pub atol: f64,
}

pub fn metrics(test: &[f64], reference: &[f64], tol: &Tolerance) -> Metrics {
    assert_eq!(test.len(), reference.len());
    let n = test.len().max(1) as f64;
    let mean_ref = reference.iter().sum::<f64>() / n;
    let atol = tol.atol_for(reference.iter().fold(0f64, |m, r| m.max(r.abs())));
    let (mut max_abs, mut max_rel, mut sq, mut var, mut dot, mut tt, mut rr) =
        (0f64, 0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
    let (mut n_outside, mut worst_ratio, mut worst, mut max_abs_at) =
        (0usize, 0f64, 0usize, 0usize);
    let mut abs = Vec::with_capacity(test.len());
    for (i, (&t, &r)) in test.iter().zip(reference).enumerate() {
        let d = (t - r).abs();
        abs.push(d);
        if d > max_abs || (d.is_nan() && !max_abs.is_nan()) {
            max_abs = d;
            max_abs_at = i;
        }
        if r != 0.0 {
            max_rel = max_rel.max(d / r.abs());
        } else if d != 0.0 {
            max_rel = f64::INFINITY;
        }
        sq += d * d;
        var += (r - mean_ref) * (r - mean_ref);
        dot += t * r;
        tt += t * t;
        rr += r * r;
        let allowed = atol + tol.rtol * r.abs();
        let ratio = if allowed > 0.0 {
            d / allowed
        } else if d > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        if d > allowed || d.is_nan() {
            n_outside += 1;
        }
        if ratio > worst_ratio || (d.is_nan() && !worst_ratio.is_nan()) {
            worst_ratio = if d.is_nan() { f64::NAN } else { ratio };
            worst = i;
        }
    }
    let nmse = nmse_from_sums(sq, var);
    let cosine = if tt > 0.0 && rr > 0.0 {
        dot / (tt.sqrt() * rr.sqrt())
    } else if tt == rr {
        1.0
    } else {
        0.0
    };
    let [p50_abs, p99_abs, p999_abs] = [0.5, 0.99, 0.999].map(|q| quantile(&mut abs, q));
    // A NaN anywhere makes the sums NaN, which the branches above read as 0:
    // say NaN instead of a perfect score.
    let (nmse, cosine, max_rel) = match max_abs.is_nan() {
        true => (f64::NAN, f64::NAN, f64::NAN),
        false => (nmse, cosine, max_rel),
    };
    Metrics {
        max_abs,
        max_abs_at,
        p50_abs,
        p99_abs,
        p999_abs,
        max_rel,
        nmse,
        nmse_db: db(nmse),
        cosine,
        n_outside,
        outside: n_outside as f64 / n,
        worst_ratio,
        worst,
        atol,
    }
}

/// The `q` quantile of `v` (nearest rank; NaN sorts last); reorders `v`.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    *v.select_nth_unstable_by(k, f64::total_cmp).1
}

impl Metrics {
    pub fn passes(&self, tol: &Tolerance) -> bool {
        self.n_outside == 0 && self.nmse <= tol.nmse
    }
}

/// How `test` stands against a per-element allowance around `reference`
/// (what a replayed op's kernel may differ by: see `replay`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Allowed {
    /// max |test-ref| / allowance (0 when every element is exact; a
    /// difference where nothing is allowed counts as infinite).
    pub worst_ratio: f64,
    /// The element of that ratio (flat, row-major).
    pub worst: usize,
    /// Elements beyond their allowance (a NaN in either counts).
    pub n_outside: usize,
}

/// `test` against `reference` with `allow[i]` the largest |test-ref| element
/// `i` may have. Equal values (equal infinities too) differ by nothing.
pub fn within(test: &[f64], reference: &[f64], allow: &[f64]) -> Allowed {
    assert!(test.len() == reference.len() && allow.len() == reference.len());
    let mut out = Allowed {
        worst_ratio: 0.0,
        worst: 0,
        n_outside: 0,
    };
    for (i, ((&t, &r), &a)) in test.iter().zip(reference).zip(allow).enumerate() {
        let d = if t == r { 0.0 } else { (t - r).abs() };
        let ratio = if d.is_nan() || (d > 0.0 && a <= 0.0) {
            f64::INFINITY
        } else if d == 0.0 {
            0.0
        } else {
            d / a
        };
        out.n_outside += (ratio > 1.0) as usize;
        if ratio > out.worst_ratio {
            out.worst_ratio = ratio;
            out.worst = i;
        }
    }
    out
}

/// Row-major flat index -> multi-index (a dimension of 0 taken as 1).
pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        index[i] = flat % d.max(1);
        flat /= d.max(1);
    }
    index
}

/// A checkpoint record's `min`, `max` and `mean`: over the finite values (`None` without any), and how many are not finite.
pub fn value_stats(data: &[f32]) -> (Option<f32>, Option<f32>, Option<f64>, usize) {
    // Eight independent lanes, branch-free: the compiler vectorizes this, and
    // the f64 sums do not wait on each other (a single running sum costs a
    // float add's latency per element: the writer's slowest step).
    const LANES: usize = 8;
    let mut min = [f32::INFINITY; LANES];
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut sum = [0f64; LANES];
    let mut finite = [0usize; LANES];
    let mut add = |lane: usize, v: f32| {
        let ok = v.is_finite();
        min[lane] = if ok { min[lane].min(v) } else { min[lane] };
        max[lane] = if ok { max[lane].max(v) } else { max[lane] };
        sum[lane] += if ok { v as f64 } else { 0.0 };
        finite[lane] += ok as usize;
    };
    let chunks = data.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in chunk.iter().enumerate() {
            add(lane, v);
        }
    }
    for (lane, &v) in rest.iter().enumerate() {
        add(lane, v);
    }
    let finite: usize = finite.iter().sum();
    if finite == 0 {
        return (None, None, None, data.len());
    }
    let min = min.iter().copied().fold(f32::INFINITY, f32::min);
    let max = max.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mean = sum.iter().sum::<f64>() / finite as f64;
    (Some(min), Some(max), Some(mean), data.len() - finite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_skip_non_finite_values_in_every_lane() {
        let mut data: Vec<f32> = (0..37).map(|i| i as f32 - 10.0).collect();
        data[3] = f32::NAN;
        data[20] = f32::INFINITY;
        let (min, max, mean, non_finite) = value_stats(&data);
        let finite: Vec<f64> = data
            .iter()
            .filter(|v| v.is_finite())
            .map(|&v| v as f64)
            .collect();
        assert_eq!((min, max, non_finite), (Some(-10.0), Some(26.0), 2));
        let expected = finite.iter().sum::<f64>() / finite.len() as f64;
        assert!((mean.unwrap() - expected).abs() < 1e-12);
        assert_eq!(value_stats(&[f32::NAN; 3]), (None, None, None, 3));
        assert_eq!(value_stats(&[]), (None, None, None, 0));
    }

    #[test]
    fn an_allowance_is_held_element_by_element() {
        let reference = [1.0, -2.0, f64::NEG_INFINITY, 0.0];
        let allow = [0.1, 0.5, 0.0, 0.0];
        let exact = within(&reference, &reference, &allow);
        assert_eq!((exact.worst_ratio, exact.n_outside), (0.0, 0));
        let inside = within(&[1.0625, -2.25, f64::NEG_INFINITY, 0.0], &reference, &allow);
        assert_eq!(
            (inside.worst_ratio, inside.worst, inside.n_outside),
            (0.625, 0, 0)
        );
        let nothing_allowed = within(&[1.0, -2.0, f64::NEG_INFINITY, 1e-30], &reference, &allow);
        assert_eq!((nothing_allowed.worst, nothing_allowed.n_outside), (3, 1));
        assert!(nothing_allowed.worst_ratio.is_infinite());
        let outside = within(&[1.3, f64::NAN, f64::NEG_INFINITY, 0.0], &reference, &allow);
        assert_eq!(outside.n_outside, 2);
    }

    const TOL: Tolerance = Tolerance {
        atol: 1e-3,
        atol_of_max: 0.0,
        rtol: 1e-2,
        nmse: 1e-4,
    };

    #[test]
    fn nmse_follows_its_definition_and_its_edge_cases() {
        // ref [1, 2]: mean 1.5, variance sum 0.5; test off by 0.5 once: 0.25 / 0.5.
        assert_eq!(nmse(&[1.0f64, 2.5], &[1.0, 2.0]), 0.5);
        assert_eq!(nmse(&[1.0f32, 2.0], &[1.0, 2.0]), 0.0);
        assert_eq!(nmse(&[2.0f32, 2.5], &[2.0, 2.0]), f64::INFINITY);
        assert_eq!(nmse_from_sums(0.0, 0.0), 0.0);
        assert!(nmse(&[f64::NAN, 1.0], &[1.0, 1.0]).is_nan());
        assert!(nmse(&[1.0, 1.0], &[f64::NAN, 1.0]).is_nan());
        assert_eq!(db(0.01), -20.0);
        assert_eq!(db(0.0), f64::NEG_INFINITY);
    }

    #[test]
    fn metrics_of_a_known_difference() {
        let reference = [1.0, -2.0, 3.0, 0.0];
        let test = [1.0, -2.0, 3.06, 0.0];
        let m = metrics(&test, &reference, &TOL);
        assert!((m.max_abs - 0.06).abs() < 1e-12);
        assert!((m.max_rel - 0.02).abs() < 1e-12);
        // var(ref): mean 0.5, squares 0.25 + 6.25 + 6.25 + 0.25 = 13 over 4 = 3.25; mse 0.0036/4 = 0.0009.
        assert!((m.nmse - 0.0009 / 3.25).abs() < 1e-15, "{}", m.nmse);
        assert!((m.nmse_db - 10.0 * (0.0009f64 / 3.25).log10()).abs() < 1e-9);
        let cos = (1.0 + 4.0 + 3.0 * 3.06) / (14f64.sqrt() * (1.0 + 4.0 + 3.06f64 * 3.06).sqrt());
        assert!((m.cosine - cos).abs() < 1e-15);
        // 0.06 > 1e-3 + 1e-2 * 3 = 0.031: one element of four is outside, at ratio 0.06/0.031.
        assert_eq!((m.n_outside, m.worst), (1, 2));
        assert_eq!(m.outside, 0.25);
        assert!((m.worst_ratio - 0.06 / 0.031).abs() < 1e-12);
        assert!(!m.passes(&TOL));
        // |diff| is [0, 0, 0.06, 0]: the median 0, the 99th and 99.9th percentiles at the largest.
        assert_eq!(m.max_abs_at, 2);
        assert_eq!(m.p50_abs, 0.0);
        assert!((m.p99_abs - 0.06).abs() < 1e-12 && (m.p999_abs - 0.06).abs() < 1e-12);
    }

    #[test]
    fn identical_tensors_pass_with_zero_error() {
        let x = [0.5, 0.0, -1.5];
        let m = metrics(&x, &x, &TOL);
        assert_eq!(
            (m.max_abs, m.max_rel, m.nmse, m.n_outside),
            (0.0, 0.0, 0.0, 0)
        );
        assert_eq!(m.nmse_db, f64::NEG_INFINITY);
        assert!((m.cosine - 1.0).abs() < 1e-15);
        assert!(m.passes(&TOL));
    }

    #[test]
    fn nmse_alone_can_fail_and_zero_reference_gives_infinite_relative_error() {
        // Every element inside atol, but the reference barely varies: NMSE is large.
        let reference = [1.0, 1.0001, 1.0];
        let test = [1.0009, 1.0, 1.0009];
        let m = metrics(
            &test,
            &reference,
            &Tolerance {
                atol: 1e-3,
                atol_of_max: 0.0,
                rtol: 0.0,
                nmse: 1.0,
            },
        );
        assert_eq!(m.n_outside, 0);
        assert!(m.nmse > 1.0, "{}", m.nmse);
        assert!(!m.passes(&Tolerance {
            atol: 1e-3,
            atol_of_max: 0.0,
            rtol: 0.0,
            nmse: 1.0
        }));
        let m = metrics(&[1e-9], &[0.0], &TOL);
        assert_eq!(m.max_rel, f64::INFINITY);
    }
}
