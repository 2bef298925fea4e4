//! How far one tensor is from another, defined once for every comparison
//! this project makes (llama.cpp vs PyTorch, CPU vs GPU, batch vs sequential).

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
