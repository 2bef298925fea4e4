//! A manifest as a graph with flash attention on sees it: the entries'
//! `flash_attn:` layouts in place, the absent ones set aside.

use super::flash_attn::UnderFlashAttn;
use super::{Checkpoint, Manifest};

impl Manifest {
    /// The checkpoints as a graph with flash attention on has them: each
    /// `flash_attn:` layout in place of its own, the absent ones taken out
    /// and returned with their reason.
    pub fn under_flash_attn(self) -> (Manifest, Vec<(Checkpoint, String)>) {
        let mut absent = Vec::new();
        let mut checkpoints = Vec::new();
        for cp in self.checkpoints {
            match cp.flash_attn.clone() {
                Some(UnderFlashAttn::Absent(why)) => absent.push((cp, why)),
                Some(UnderFlashAttn::Layout { shape, reference }) => checkpoints.push(Checkpoint {
                    shape,
                    reference: reference.or(cp.reference.clone()),
                    ..cp
                }),
                None => checkpoints.push(cp),
            }
        }
        (
            Manifest {
                checkpoints,
                ..self
            },
            absent,
        )
    }

    /// The checkpoints that only a graph without flash attention has (the
    /// scores): a run that wants every checkpoint turns it off.
    pub fn absent_under_flash_attn(&self) -> impl Iterator<Item = &Checkpoint> {
        self.checkpoints
            .iter()
            .filter(|cp| matches!(cp.flash_attn, Some(UnderFlashAttn::Absent(_))))
    }
}
