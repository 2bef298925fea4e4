//! What a comparison without a hand-written manifest may expect of
//! llama.cpp, from the precision the GGUF stores its weights in, and never
//! from the run it judges: a tolerance set before anything is measured.
//!
//! - f32 weights: llama.cpp agrees with float64 at -60 dB and better (the
//!   tiny models' logits: -64 to -82 dB; GPT-2's manifest, from 12 layers of
//!   the f32 synthetic GPT-2: worst -60 dB). NMSE 1e-5 (-50 dB) leaves 10 dB.
//! - f16 and bf16 weights: the weights themselves are rounded (2^-11 and
//!   2^-8 relative), 10 dB more: 1e-4.
//! - quantized weights: ggml also rounds activations to 8 bits before every
//!   quantized product. The hand-written manifests measured these bands
//!   (their tolerances are 3x the worst error over every layer): SmolLM2's
//!   Q4_1 up to 1e-2, Gemma 3's Q4_K_M up to 3e-2 (its post-attention norm).
//!   NMSE 3e-2 (-15 dB), the widest of them.
//!
//! Elements are held to `atol_of_max` of the reference's largest |value|
//! plus `rtol` of their own: residual streams carry outlier channels a
//! hundred times their neighbours, so a bound in absolute units would be
//! either loose everywhere or tight on the outliers. With f32 weights the
//! f16 KV cache is the largest rounding (2^-11 per element): ten of those
//! of the largest value, 5e-3; bf16 weights round at 2^-8: 4e-2; quantized
//! ones, as the manifests measured (SmolLM2's FFN output is allowed 30 where
//! its outliers reach the hundreds, Gemma's residual 1800 of thousands): 0.25.

use std::collections::BTreeMap;

use llorch_checkpoint_spec::manifest::Tolerance;

/// The weights' precision, as far as the comparison is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Full,
    Half,
    Quantized,
}

impl Precision {
    /// From run.json's count of matrices per ggml type: quantized if any is.
    pub fn of(weights: &BTreeMap<String, u64>) -> Precision {
        let is = |names: &[&str]| weights.keys().any(|t| names.contains(&t.as_str()));
        if weights
            .keys()
            .any(|t| !["f32", "f64", "f16", "bf16"].contains(&t.as_str()))
        {
            Precision::Quantized
        } else if is(&["f16", "bf16"]) {
            Precision::Half
        } else {
            Precision::Full
        }
    }

    /// The tolerance every checkpoint is judged by.
    pub fn tolerance(self) -> Tolerance {
        let (atol_of_max, rtol, nmse) = match self {
            Precision::Full => (5e-3, 1e-2, 1e-5),
            Precision::Half => (4e-2, 3e-2, 1e-4),
            Precision::Quantized => (0.25, 0.1, 3e-2),
        };
        Tolerance {
            atol: 0.0,
            atol_of_max,
            rtol,
            nmse,
        }
    }

    /// The largest NMSE at which the matcher pairs a node with a tensor:
    /// 20 dB above the tolerance for full and half weights (a norm before
    /// its weight, -8 dB from after it on the tiny models, stays unpaired),
    /// and -13 dB for quantized ones.
    pub fn accept(self) -> f64 {
        match self {
            Precision::Full => 1e-3,
            Precision::Half => 1e-2,
            Precision::Quantized => 5e-2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Full => "f32 weights",
            Precision::Half => "f16/bf16 weights",
            Precision::Quantized => "quantized weights",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_quantized_matrix_makes_the_model_quantized() {
        let of =
            |types: &[&str]| Precision::of(&types.iter().map(|t| (t.to_string(), 1)).collect());
        assert_eq!(of(&["f32"]), Precision::Full);
        assert_eq!(of(&["f32", "f16"]), Precision::Half);
        assert_eq!(of(&["q4_1", "q8_0"]), Precision::Quantized);
        assert_eq!(of(&["f32", "q4_K", "q6_K"]), Precision::Quantized);
        assert!(Precision::Full.tolerance().nmse < Precision::Quantized.tolerance().nmse);
        assert!(Precision::Full.accept() > 10.0 * Precision::Full.tolerance().nmse);
    }
}
