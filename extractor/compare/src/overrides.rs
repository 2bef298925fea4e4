//! `--tolerance 'GLOB=atol:1e-2,nmse:1e-4'`: tolerances from the command line,
//! over the manifest's, for the checkpoints whose id or node name matches.

use anyhow::{bail, Context, Result};
use llorch_checkpoint_spec::manifest::Tolerance;

/// One `--tolerance` argument.
#[derive(Clone, Debug)]
pub struct Override {
    pattern: glob::Pattern,
    atol: Option<f64>,
    atol_of_max: Option<f64>,
    rtol: Option<f64>,
    nmse: Option<f64>,
}

impl std::str::FromStr for Override {
    type Err = String;

    fn from_str(text: &str) -> Result<Override, String> {
        parse(text).map_err(|e| format!("{e:#}"))
    }
}

fn parse(text: &str) -> Result<Override> {
    let (glob, values) = text
        .split_once('=')
        .context("expected GLOB=atol:X,rtol:Y,nmse:Z (any of them; atol_of_max:F for a fraction of max |ref|), e.g. 'ffn_*=atol:1e-2'")?;
    let pattern = glob::Pattern::new(glob).with_context(|| format!("`{glob}` is not a glob"))?;
    let mut o = Override {
        pattern,
        atol: None,
        atol_of_max: None,
        rtol: None,
        nmse: None,
    };
    for pair in values.split(',') {
        let (key, value) = pair
            .split_once(':')
            .with_context(|| format!("`{pair}`: expected name:value, e.g. atol:1e-2"))?;
        let value: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| *v >= 0.0)
            .with_context(|| format!("`{pair}`: {value} is not a non-negative number"))?;
        match key.trim() {
            "atol" => o.atol = Some(value),
            "atol_of_max" => o.atol_of_max = Some(value),
            "rtol" => o.rtol = Some(value),
            "nmse" => o.nmse = Some(value),
            other => bail!("`{other}`: a tolerance has atol, atol_of_max, rtol and nmse"),
        }
    }
    Ok(o)
}

/// The tolerance of checkpoint `id` (node `tensor`): the manifest's, with the
/// last matching override's values on top.
pub fn apply(overrides: &[Override], id: &str, tensor: &str, tolerance: Tolerance) -> Tolerance {
    overrides
        .iter()
        .filter(|o| o.pattern.matches(id) || o.pattern.matches(tensor))
        .fold(tolerance, |t, o| Tolerance {
            atol: o.atol.unwrap_or(t.atol),
            atol_of_max: o.atol_of_max.unwrap_or(t.atol_of_max),
            rtol: o.rtol.unwrap_or(t.rtol),
            nmse: o.nmse.unwrap_or(t.nmse),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_match_ids_or_node_names_and_replace_what_they_name() {
        let overrides: Vec<Override> = ["ffn_*=atol:1e-2", "*_l_out=rtol:0,nmse:1e-9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let base = Tolerance::DEFAULT;
        let ffn = apply(&overrides, "07_ffn_out", "ffn_out-7", base);
        assert_eq!((ffn.atol, ffn.rtol, ffn.nmse), (1e-2, base.rtol, base.nmse));
        let l_out = apply(&overrides, "08_l_out", "l_out-7", base);
        assert_eq!((l_out.atol, l_out.rtol, l_out.nmse), (base.atol, 0.0, 1e-9));
        assert_eq!(apply(&overrides, "01_attn_norm", "attn_norm-7", base), base);
        for bad in ["ffn_*", "x=atol", "x=atol:-1", "x=speed:3"] {
            assert!(bad.parse::<Override>().is_err(), "{bad}");
        }
    }
}
