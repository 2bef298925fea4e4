//! What flash attention changes in a manifest entry: the checkpoint is
//! absent from the graph (the scores, fused into FLASH_ATTN_EXT) or in
//! another layout (V, cached untransposed).

use serde::Deserialize;

use super::reference::Reference;
use super::shape::Dim;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUnderFlashAttn {
    #[serde(default)]
    absent: Option<String>,
    #[serde(default)]
    shape: Option<Vec<Dim>>,
    #[serde(default)]
    reference: Option<serde_yaml::Value>,
}

/// A checkpoint under flash attention, where it differs.
#[derive(Debug, Clone, PartialEq)]
pub enum UnderFlashAttn {
    /// No node: flash attention fuses it away. Why, in words.
    Absent(String),
    /// Another layout: its shape and (for compare) its reference.
    Layout {
        shape: Vec<Dim>,
        reference: Option<Reference>,
    },
}

/// `flash_attn:` is either `{absent: why}` or `{shape, reference}`.
pub(super) fn under_flash_attn(raw: &RawUnderFlashAttn) -> Result<UnderFlashAttn, String> {
    match (&raw.absent, &raw.shape) {
        (Some(why), None) if raw.reference.is_none() => Ok(UnderFlashAttn::Absent(why.clone())),
        (None, Some(shape)) => {
            if shape.is_empty() || shape.len() > 4 {
                return Err("`flash_attn.shape` must have 1 to 4 dimensions".into());
            }
            for dim in shape {
                dim.check()
                    .map_err(|e| format!("{e} in flash_attn.shape"))?;
            }
            let reference = raw
                .reference
                .clone()
                .map(serde_yaml::from_value)
                .transpose()
                .map_err(|e| format!("`flash_attn.reference`: {e}"))?;
            Ok(UnderFlashAttn::Layout {
                shape: shape.clone(),
                reference,
            })
        }
        _ => Err(
            "`flash_attn` takes either `absent: <why>` or `shape` (and `reference`), not both"
                .into(),
        ),
    }
}
