//! The greedy next token after the prompt, llama.cpp's against the f64
//! reference's, and when they differ, whether the reference itself all but
//! ties them: a quantised model's logits carry noise, and two tokens whose
//! reference logits differ by less than that noise can swap on another CPU.

use std::path::Path;

use anyhow::{Context, Result};
use llorch_checkpoint_spec::format;

/// A different token is a near tie when the reference's gap between the two
/// is within this many standard deviations of the run's own logit noise.
pub const TIE_SIGMAS: f64 = 3.0;

/// Both sides' greedy token, and the evidence when they differ.
#[derive(Debug, Clone, PartialEq)]
pub struct NextToken {
    pub llama: Option<i32>,
    pub reference: Option<i64>,
    /// Where the tokens differ and both sides' logits could be read.
    pub tie: Option<Tie>,
}

/// The two tokens' reference logits and the noise they are judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tie {
    /// f64 logits of the reference's token and of llama.cpp's.
    pub reference_logit: f64,
    pub llama_token_logit: f64,
    /// Standard deviation of llama.cpp's logits minus the reference's, over
    /// the vocabulary, once their mean offset is taken out.
    pub noise: f64,
}

impl Tie {
    pub fn gap(&self) -> f64 {
        self.reference_logit - self.llama_token_logit
    }

    pub fn is_near(&self) -> bool {
        self.gap() <= TIE_SIGMAS * self.noise
    }
}

impl NextToken {
    /// Reads llama.cpp's prompt-pass logits (`logits`, row 0) and the
    /// reference's (`next_logits`, written by the reference beside its tensors).
    pub fn judge(
        llama: Option<i32>,
        reference: Option<i64>,
        logits: &Path,
        next_logits: &Path,
    ) -> Self {
        let tie = match (llama, reference) {
            (Some(l), Some(r)) if i64::from(l) != r => {
                tie(logits, next_logits, l as usize, r as usize).ok()
            }
            _ => None,
        };
        Self {
            llama,
            reference,
            tie,
        }
    }

    /// The same token, or a near tie of the reference's.
    pub fn agrees(&self) -> bool {
        match (self.llama, self.reference) {
            (Some(l), Some(r)) if i64::from(l) == r => true,
            _ => self.tie.is_some_and(|t| t.is_near()),
        }
    }

    pub fn describe(&self) -> String {
        let (l, r) = (self.llama.unwrap_or(-1), self.reference.unwrap_or(-1));
        if i64::from(l) == r {
            return format!("next token {l} in both");
        }
        let Some(t) = self.tie else {
            return format!(
                "next token llama.cpp {l}, f64 {r} (the logits could not be read to weigh them)"
            );
        };
        format!(
            "next token llama.cpp {l}, f64 {r}: {} (f64 logits {:.3} and {:.3}, gap {:.3}; \
             llama.cpp's logit noise {:.3}, std of its logits minus f64's, centred: {TIE_SIGMAS}x is {:.3})",
            if t.is_near() { "a near tie of the reference's" } else { "NOT a near tie" },
            t.reference_logit,
            t.llama_token_logit,
            t.gap(),
            t.noise,
            TIE_SIGMAS * t.noise
        )
    }
}

fn tie(logits: &Path, next_logits: &Path, llama: usize, reference: usize) -> Result<Tie> {
    let ours = format::read(logits)?;
    let vocab = *ours.shape.last().context("logits.bin has no shape")? as usize;
    let ours = ours.data.get(..vocab).context("logits.bin holds no row")?;
    let (_, theirs) = format::read_f64(next_logits)?;
    anyhow::ensure!(
        theirs.len() == vocab,
        "the vocabularies differ: {} and {vocab}",
        theirs.len()
    );
    let diff: Vec<f64> = ours
        .iter()
        .zip(&theirs)
        .map(|(&o, &t)| f64::from(o) - t)
        .collect();
    let mean = diff.iter().sum::<f64>() / vocab as f64;
    let noise = (diff.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / vocab as f64).sqrt();
    Ok(Tie {
        reference_logit: *theirs
            .get(reference)
            .context("token out of the vocabulary")?,
        llama_token_logit: *theirs.get(llama).context("token out of the vocabulary")?,
        noise,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, shape: &[i64], data: &[f32]) {
        format::write_file(path, shape, data).unwrap();
    }

    #[test]
    fn a_swap_within_the_noise_is_a_near_tie_and_one_beyond_it_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let (ours, theirs) = (
            tmp.path().join("logits.bin"),
            tmp.path().join("next_logits.npy"),
        );
        // Reference: token 0 leads token 1 by 0.1. llama.cpp: +1 offset and
        // +-0.1 noise on every token, which swaps them.
        let reference = [5.0f32, 4.9, 1.0, 2.0, 3.0, 0.0];
        let noise = [-0.1f32, 0.1, 0.1, -0.1, 0.1, -0.1];
        let llama: Vec<f32> = reference
            .iter()
            .zip(noise)
            .map(|(r, n)| r + 1.0 + n)
            .collect();
        write(&ours, &[2, 6], &[llama.clone(), llama].concat());
        write(&theirs, &[6], &reference);
        let next = NextToken::judge(Some(1), Some(0), &ours, &theirs);
        let tie = next.tie.unwrap();
        assert!(
            (tie.gap() - 0.1).abs() < 1e-6 && (tie.noise - 0.1).abs() < 1e-6,
            "{tie:?}"
        );
        assert!(next.agrees(), "{}", next.describe());
        assert!(
            next.describe().contains("a near tie"),
            "{}",
            next.describe()
        );
        // Token 4 is 2 below the reference's pick: 20 sigmas, a real difference.
        let far = NextToken::judge(Some(4), Some(0), &ours, &theirs);
        assert!(!far.agrees());
        assert!(
            far.describe().contains("NOT a near tie"),
            "{}",
            far.describe()
        );
        // The same token needs no logits at all.
        let same = NextToken::judge(Some(3), Some(3), &tmp.path().join("none"), &theirs);
        assert!(same.agrees() && same.tie.is_none());
        assert_eq!(same.describe(), "next token 3 in both");
        // Unreadable logits never pass a different token.
        let unread = NextToken::judge(Some(1), Some(0), &tmp.path().join("none"), &theirs);
        assert!(!unread.agrees());
    }
}
