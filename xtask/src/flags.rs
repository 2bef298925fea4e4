//! The llama.cpp flags that several tasks hand to the extractor, declared
//! once so they read the same everywhere (`-fa`, `-ngl`: llama.cpp's
//! multi-letter short forms, spelled long by `flags::expand_llama_short`
//! before clap sees the line), and the flags given after `--` that a task
//! takes for its own.

use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;
use llorch_checkpoint_spec::manifest::Manifest;
use llorch_checkpoint_spec::record::FlashAttnMode;

use crate::step;

#[derive(clap::Args, Clone, Default)]
pub struct LlamaFlags {
    /// Flash attention (`-fa`): on, off or auto, llama.cpp's own default [default: off where the
    /// manifest names a node only a graph without it has (the attention scores), else auto].
    #[arg(long = "flash-attn", value_enum, value_name = "on|off|auto")]
    pub flash_attn: Option<FlashAttnMode>,
    /// Layers offloaded to a GPU or RPC backend (`-ngl`) [default: every layer with --backend
    /// vulkan, cuda or metal; none on cpu].
    #[arg(long = "n-gpu-layers", value_name = "N")]
    pub n_gpu_layers: Option<i32>,
    /// CPU threads [default: all cores].
    #[arg(short = 't', long, value_name = "N")]
    pub threads: Option<i32>,
    /// Context size in KV-cache cells [default: the extractor's].
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    pub ctx_size: Option<u32>,
}

impl LlamaFlags {
    /// Takes these flags out of `rest` (the words after `--`): given there,
    /// they replace those given before it.
    pub fn take_from(&mut self, rest: &mut Vec<String>) -> Result<()> {
        if let Some(v) = take(rest, &["--flash-attn"]) {
            self.flash_attn = Some(
                FlashAttnMode::from_str(&v, true)
                    .map_err(|_| anyhow::anyhow!("--flash-attn {v}: use on, off or auto"))?,
            );
        }
        if let Some(v) = take(rest, &["--n-gpu-layers", "--ngl"]) {
            self.n_gpu_layers = Some(number(&v, "--n-gpu-layers")?);
        }
        if let Some(v) = take(rest, &["-t", "--threads"]) {
            self.threads = Some(number(&v, "--threads")?);
        }
        if let Some(v) = take(rest, &["-c", "--ctx-size"]) {
            self.ctx_size = Some(number(&v, "--ctx-size")?);
        }
        Ok(())
    }

    /// The extractor's words for these flags, those given.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(mode) = self.flash_attn {
            args.push(format!("--flash-attn={}", mode.name()));
        }
        if let Some(n) = self.n_gpu_layers {
            args.push(format!("--n-gpu-layers={n}"));
        }
        if let Some(n) = self.threads {
            args.push(format!("--threads={n}"));
        }
        if let Some(n) = self.ctx_size {
            args.push(format!("--ctx-size={n}"));
        }
        args
    }
}

fn number<T: std::str::FromStr>(value: &str, flag: &str) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    value
        .parse()
        .with_context(|| format!("{flag} {value}: not a whole number"))
}

/// Removes every `NAME VALUE` and `NAME=VALUE` of `names` from `rest` and
/// returns the last value (the last word wins, as on any command line).
pub fn take(rest: &mut Vec<String>, names: &[&str]) -> Option<String> {
    let mut value = None;
    let mut kept = Vec::with_capacity(rest.len());
    let mut words = std::mem::take(rest).into_iter();
    while let Some(word) = words.next() {
        if names.contains(&word.as_str()) {
            value = words.next().or(value);
        } else if let Some(v) = names
            .iter()
            .find_map(|n| word.strip_prefix(n)?.strip_prefix('='))
        {
            value = Some(v.to_string());
        } else {
            kept.push(word);
        }
    }
    *rest = kept;
    value
}

/// Refuses words after `--` that a task sets itself: each `(names, use)`
/// says which of the task's own flags to use instead.
pub fn refuse_own(rest: &[String], own: &[(&[&str], &str)]) -> Result<()> {
    for (names, instead) in own {
        if let Some(word) = rest.iter().find(|w| has(&[w.to_string()], names)) {
            anyhow::bail!("`-- {word}`: this task sets it itself; use {instead} instead");
        }
    }
    Ok(())
}

/// Whether `rest` holds any of `names`, alone or as `NAME=VALUE`.
pub fn has(rest: &[String], names: &[&str]) -> bool {
    rest.iter().any(|word| {
        names
            .iter()
            .any(|n| word == n || word.starts_with(&format!("{n}=")))
    })
}

/// Flash attention off where the manifest names a node that only a graph
/// without it has (the scores): a manifest's checkpoints are all asked for.
/// Said on the task's first lines, with how to get llama.cpp's own default.
pub fn every_checkpoint(task: &str, manifest: &Path, shown: &str) -> Result<Option<FlashAttnMode>> {
    let parsed = Manifest::load(manifest)?;
    let ids: std::collections::BTreeSet<&str> = parsed
        .absent_under_flash_attn()
        .map(|cp| cp.id.as_str())
        .collect();
    if ids.is_empty() {
        return Ok(None);
    }
    step::note(
        task,
        &format!(
            "flash attention off for this run: {shown} names {}, which only a graph \
             without it has (`-fa auto`: llama.cpp's own default)",
            Vec::from_iter(ids).join(", ")
        ),
    );
    Ok(Some(FlashAttnMode::Off))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split(' ').map(String::from).collect()
    }

    #[test]
    fn a_flag_after_the_double_dash_is_taken_out_with_its_value_and_the_last_wins() {
        let mut rest = words("--kv-type f32 --out a --format npy --out=b");
        assert_eq!(take(&mut rest, &["--out"]).as_deref(), Some("b"));
        assert_eq!(rest, words("--kv-type f32 --format npy"));
        assert_eq!(take(&mut rest, &["--out"]), None);
    }

    #[test]
    fn llama_flags_after_the_double_dash_replace_those_before_it() {
        let mut flags = LlamaFlags {
            threads: Some(1),
            ..LlamaFlags::default()
        };
        let mut rest = words("--flash-attn off -t 2 --n-gpu-layers 0 --kv-type f32");
        flags.take_from(&mut rest).unwrap();
        assert_eq!(rest, words("--kv-type f32"));
        assert_eq!(
            flags.to_args(),
            ["--flash-attn=off", "--n-gpu-layers=0", "--threads=2"]
        );
        let own: &[(&[&str], &str)] = &[(&["--out"], "its own `--out`")];
        let err = refuse_own(&words("--kv-type f32 --out=x"), own).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`-- --out=x`: this task sets it itself; use its own `--out` instead"
        );
        assert!(refuse_own(&words("--kv-type f32"), own).is_ok());
        let err = flags.take_from(&mut words("-t two")).unwrap_err();
        assert!(format!("{err:#}").contains("--threads two: not a whole number"));
    }
}
