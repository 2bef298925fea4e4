//! How close an engine's tensor is to a checkpoint, and whether that is close enough.

use std::fmt;

use llorch_checkpoint_spec::manifest::Tolerance as SpecTolerance;
use llorch_checkpoint_spec::metric::{metrics, unravel, AGAINST_LLAMA_CPP};

use crate::Tensor;

/// When a tensor agrees with a checkpoint: every element within
/// `atol + atol_of_max * max|checkpoint| + rtol * |checkpoint element|`,
/// and `NMSE = mean(diff²) / var(checkpoint) <= nmse` over the tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// The absolute part of each element's bound.
    pub atol: f64,
    /// The part of the absolute bound that follows the checkpoint's scale: a
    /// fraction of its largest |value|.
    pub atol_of_max: f64,
    /// The part relative to each element's |value|.
    pub rtol: f64,
    /// The bound on the tensor's NMSE.
    pub nmse: f64,
}

impl Tolerance {
    /// "Does my engine compute what llama.cpp computes?": 0.005 of the
    /// checkpoint's largest |value| per element and NMSE 2e-5, five times
    /// what correct llama.cpp runs of an f32 GPT-2 differ by (threads, f16 or
    /// f32 KV cache, batch or one token at a time) and five times below a
    /// 1% error.
    ///
    /// ```
    /// use llorch_checkpoint_golden::{compare, Tensor, Tolerance};
    /// let golden = Tensor::new(vec![4], vec![1.0, -2.0, 3.0, -4.0]).unwrap();
    /// let one_percent_off: Vec<f32> = golden.data().iter().map(|x| x * 1.01).collect();
    /// assert!(!compare(&one_percent_off, &golden, Tolerance::against_llama_cpp()).pass());
    /// ```
    pub fn against_llama_cpp() -> Self {
        Tolerance::from_spec(AGAINST_LLAMA_CPP)
    }
}

// Conversions by hand, not `From`: the spec crate's type stays out of this
// crate's public surface.
impl Tolerance {
    pub(crate) fn from_spec(t: SpecTolerance) -> Self {
        Tolerance {
            atol: t.atol,
            atol_of_max: t.atol_of_max,
            rtol: t.rtol,
            nmse: t.nmse,
        }
    }

    fn to_spec(self) -> SpecTolerance {
        SpecTolerance {
            atol: self.atol,
            atol_of_max: self.atol_of_max,
            rtol: self.rtol,
            nmse: self.nmse,
        }
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bound = Vec::new();
        if self.atol > 0.0 {
            bound.push(format!("{:e}", self.atol));
        }
        if self.atol_of_max > 0.0 {
            bound.push(format!("{}*max|llama.cpp|", self.atol_of_max));
        }
        if self.rtol > 0.0 {
            bound.push(format!("{}*|llama.cpp value|", self.rtol));
        }
        let bound = if bound.is_empty() {
            "0".to_string()
        } else {
            bound.join(" + ")
        };
        write!(f, "|diff| <= {bound}, NMSE <= {:e}", self.nmse)
    }
}

/// An engine's tensor against a checkpoint: the figures, and whether they
/// are within the tolerance. Its `Display` is the message a failed test
/// should print: which checkpoint, the worst element and both values there.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    what: String,
    tolerance: Tolerance,
    /// Why nothing could be compared (the sizes differ).
    problem: Option<String>,
    nmse: f64,
    max_abs: f64,
    worst_index: Vec<usize>,
    engine_value: f64,
    golden_value: f64,
    allowed_there: f64,
    outside: usize,
    elements: usize,
}

/// `engine`'s tensor (row-major, the checkpoint's shape) against `golden`.
///
/// ```
/// use llorch_checkpoint_golden::{compare, Tensor, Tolerance};
/// let golden = Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
/// let verdict = compare(&[1.0, 2.0, 3.0, 4.0000005], &golden, Tolerance::against_llama_cpp());
/// assert!(verdict.pass(), "{verdict}");
/// let wrong = compare(&[1.0, 2.0, 3.5, 4.0], &golden, Tolerance::against_llama_cpp());
/// assert!(!wrong.pass());
/// assert_eq!(wrong.worst_index(), &[1, 0]);
/// assert!(wrong.to_string().contains("element [1, 0] is 3.5000000 in the engine, 3.0000000 in llama.cpp"));
/// ```
pub fn compare(engine: &[f32], golden: &Tensor, tolerance: Tolerance) -> Verdict {
    judge("the tensor", engine, golden, tolerance)
}

pub(crate) fn judge(what: &str, engine: &[f32], golden: &Tensor, tolerance: Tolerance) -> Verdict {
    let mut verdict = Verdict {
        what: what.into(),
        tolerance,
        problem: None,
        nmse: f64::NAN,
        max_abs: f64::NAN,
        worst_index: Vec::new(),
        engine_value: f64::NAN,
        golden_value: f64::NAN,
        allowed_there: f64::NAN,
        outside: golden.len(),
        elements: golden.len(),
    };
    if engine.len() != golden.len() {
        verdict.problem = Some(format!(
            "the engine's tensor has {} elements, llama.cpp's has {} (shape {:?}, row-major)",
            engine.len(),
            golden.len(),
            golden.shape()
        ));
        return verdict;
    }
    let ours: Vec<f64> = engine.iter().map(|&x| x.into()).collect();
    let theirs: Vec<f64> = golden.data().iter().map(|&x| x.into()).collect();
    let m = metrics(&ours, &theirs, &tolerance.to_spec());
    // The element that is worst against its own bound, not merely the largest |diff|.
    let at = m.worst;
    Verdict {
        nmse: m.nmse,
        max_abs: m.max_abs,
        worst_index: unravel(at, golden.shape()),
        engine_value: ours.get(at).copied().unwrap_or(f64::NAN),
        golden_value: theirs.get(at).copied().unwrap_or(f64::NAN),
        allowed_there: m.atol + tolerance.rtol * theirs.get(at).map_or(0.0, |v| v.abs()),
        outside: m.n_outside,
        ..verdict
    }
}

impl Verdict {
    /// Every element within the tolerance, and the NMSE too.
    pub fn pass(&self) -> bool {
        self.problem.is_none() && self.outside == 0 && self.nmse <= self.tolerance.nmse
    }

    /// mean(diff²) / var(checkpoint); NaN when the sizes differ or a value is NaN.
    pub fn nmse(&self) -> f64 {
        self.nmse
    }

    /// The largest |engine - checkpoint| over the tensor.
    pub fn max_abs_diff(&self) -> f64 {
        self.max_abs
    }

    /// The element furthest outside (or least inside) its bound, row-major.
    pub fn worst_index(&self) -> &[usize] {
        &self.worst_index
    }

    /// The engine's and the checkpoint's values at [`Verdict::worst_index`].
    pub fn worst_values(&self) -> (f64, f64) {
        (self.engine_value, self.golden_value)
    }

    /// Elements outside their bound, of how many.
    pub fn outside(&self) -> (usize, usize) {
        (self.outside, self.elements)
    }

    /// The tolerance that judged.
    pub fn tolerance(&self) -> Tolerance {
        self.tolerance
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.pass() {
            "matches"
        } else {
            "DIVERGES from"
        };
        if let Some(problem) = &self.problem {
            return write!(
                f,
                "{} cannot be compared with llama.cpp: {problem}",
                self.what
            );
        }
        write!(
            f,
            "{} {verb} llama.cpp: element {:?} is {:.7} in the engine, {:.7} in llama.cpp \
             (|diff| {:.3e}, allowed {:.3e}); {} of {} elements outside; NMSE {:.3e} (limit {:.0e}); \
             largest |diff| {:.3e}; tolerance {}",
            self.what,
            self.worst_index,
            self.engine_value,
            self.golden_value,
            (self.engine_value - self.golden_value).abs(),
            self.allowed_there,
            self.outside,
            self.elements,
            self.nmse,
            self.tolerance.nmse,
            self.max_abs,
            self.tolerance
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_element_is_named_with_both_values_and_a_wrong_size_is_a_failure() {
        let golden = Tensor::new(vec![2, 3], vec![0.5, -1.0, 2.0, 4.0, -8.0, 1.0]).unwrap();
        let mut mine = golden.data().to_vec();
        mine[4] = -8.2; // 0.2 off where the bound is 0.005 * 8 = 0.04
        let v = compare(&mine, &golden, Tolerance::against_llama_cpp());
        assert!(!v.pass());
        assert_eq!(v.worst_index(), &[1, 1]);
        assert_eq!(v.outside(), (1, 6));
        let (ours, theirs) = v.worst_values();
        assert!((ours + 8.2).abs() < 1e-6 && theirs == -8.0);
        let text = v.to_string();
        assert!(
            text.starts_with("the tensor DIVERGES from llama.cpp: element [1, 1] is -8.1999998"),
            "{text}"
        );
        assert!(text.contains("allowed 4.000e-2"), "{text}");
        let short = compare(&mine[..5], &golden, Tolerance::against_llama_cpp());
        assert!(!short.pass());
        assert!(
            short
                .to_string()
                .contains("has 5 elements, llama.cpp's has 6 (shape [2, 3]"),
            "{short}"
        );
        // NaN never passes.
        mine[4] = f32::NAN;
        assert!(!compare(&mine, &golden, Tolerance::against_llama_cpp()).pass());
    }
}
