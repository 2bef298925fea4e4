//! What is refused before any compute: a model whose architecture is not the
//! manifest's, layers the model does not have, a prompt or context past what
//! the model was trained for. Each error names both sides and the fix.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::ffi::gguf::GgufFile;
use crate::ffi::llama::Model;
use crate::manifest::{Layers, Manifest};

/// What the GGUF header says, read before the model is loaded.
pub struct Header {
    pub architecture: String,
    pub n_layer: u32,
    /// How many of the model's matrices (tensors of two or more dimensions)
    /// are stored in each type: what tells f32 weights from quantized ones.
    pub weights: BTreeMap<String, u64>,
    /// Every tensor the file holds, by name.
    pub tensor_names: Vec<String>,
}

impl Header {
    pub fn read(model: &Path) -> Result<Header> {
        let header = GgufFile::open(model)
            .with_context(|| format!("could not load the model {}", model.display()))?;
        let architecture = header.get_str("general.architecture").with_context(|| {
            format!(
                "could not load the model {}: its GGUF header has no general.architecture",
                model.display()
            )
        })?;
        let n_layer = header
            .get_uint(&format!("{architecture}.block_count"))
            .unwrap_or(0) as u32;
        let mut weights = BTreeMap::new();
        for t in header.tensors().iter().filter(|t| t.ne.len() >= 2) {
            *weights.entry(t.type_name().to_string()).or_insert(0) += 1;
        }
        let tensor_names = header.tensors().iter().map(|t| t.name.clone()).collect();
        Ok(Header {
            architecture,
            n_layer,
            weights,
            tensor_names,
        })
    }
}

/// The manifest at `path` with `--layers` applied (checked against the
/// model's layer count), and the layers it was expanded to.
pub fn load_manifest(
    path: &Path,
    layers: Option<&Layers>,
    header: &Header,
) -> Result<(Manifest, Option<Vec<u32>>)> {
    let layers = layers.map(|l| l.resolve(header.n_layer)).transpose()?;
    let manifest = Manifest::load_with_layers(path, layers.as_deref())?;
    Ok((manifest, layers))
}

/// Refuses a model whose architecture is not the manifest's before it is
/// loaded: its graph has other node names, and the run would fail late.
pub fn check_architecture(
    manifest: &Manifest,
    manifest_path: &Path,
    model: &Path,
    header: &Header,
) -> Result<()> {
    let arch = &header.architecture;
    if *arch == manifest.architecture {
        return Ok(());
    }
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let fitting = crate::manifest::for_architecture(dir, arch);
    let hint = if fitting.is_empty() {
        format!(
            "no manifest in {} is written for `{arch}` yet: write one (`--list-nodes` prints the graph's node names)",
            dir.display()
        )
    } else {
        let names: Vec<String> = fitting.iter().map(|p| p.display().to_string()).collect();
        format!("manifests for `{arch}`: {}", names.join(", "))
    };
    bail!(
        "{} is a `{arch}` model, but the manifest {} describes the graph of `{}`; {hint}",
        model.display(),
        manifest_path.display(),
        manifest.architecture
    )
}

/// What a run asks of its context.
#[derive(Clone, Copy, Debug)]
pub struct ContextAsk {
    /// `--ctx-size`; `None`: 512 cells, or the trained context if smaller.
    pub ctx_size: Option<u32>,
    /// `-n`: the positions the generation adds after the prompt.
    pub n_predict: usize,
}

/// The KV-cache size of the run: `--ctx-size` (default 512, at most the
/// trained context), raised to fit the prompt and the generation. A run that
/// needs more positions than the model was trained for is refused before any
/// compute: past them llama.cpp reads outside its tables and aborts.
/// `path` is the model's file, for the messages.
pub fn context_size(ask: ContextAsk, path: &Path, model: &Model, n_prompt: usize) -> Result<u32> {
    let trained = model.n_ctx_train().max(0) as u64;
    let needed = (n_prompt + ask.n_predict) as u64;
    if trained > 0 && needed > trained {
        let n = ask.n_predict as u64;
        let fix = if (n_prompt as u64) < trained {
            format!(
                "lower -n to {} or shorten the prompt",
                trained - n_prompt as u64
            )
        } else {
            format!(
                "shorten the prompt to at most {} tokens",
                trained.saturating_sub(n)
            )
        };
        bail!(
            "the prompt is {n_prompt} tokens and -n {n} feeds {n} more: {needed} positions, but {} was \
             trained for a context of {trained}; {fix}",
            path.display()
        );
    }
    if let Some(asked) = ask.ctx_size {
        if trained > 0 && asked as u64 > trained {
            bail!(
                "--ctx-size {asked} is above the context {} was trained for ({trained}); use --ctx-size {trained} or less",
                path.display()
            );
        }
    }
    let default = if trained > 0 { trained.min(512) } else { 512 };
    Ok(ask.ctx_size.map_or(default, u64::from).max(needed) as u32)
}

/// `--rpc`: checks that every server answers (ggml aborts on one that does
/// not), then registers them. A server that dies later is `cleanup`'s.
pub fn connect_rpc(servers: &[String]) -> Result<()> {
    for endpoint in servers {
        if let Err(e) = reachable(endpoint) {
            bail!("the RPC server {endpoint} cannot be reached ({e}); start it there with `llorch-checkpoint-rpc-server --host HOST --port PORT`, or fix --rpc");
        }
    }
    for endpoint in servers {
        crate::ffi::rpc::add_server(endpoint)?;
    }
    Ok(())
}

/// A TCP connection to `endpoint` within 3 seconds.
pub fn reachable(endpoint: &str) -> Result<()> {
    use std::net::ToSocketAddrs;
    let address = endpoint
        .to_socket_addrs()
        .with_context(|| format!("`{endpoint}` is not HOST:PORT"))?
        .next()
        .with_context(|| format!("`{endpoint}` resolves to no address"))?;
    std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(3))?;
    Ok(())
}

/// The model file's size and modification time when the run began: checked
/// again before its sha256 goes into `run.json`, so that checkpoints of one
/// file are never recorded under another's hash.
pub struct ModelStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl ModelStamp {
    pub fn take(path: &Path) -> Result<ModelStamp> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("could not load the model {}", path.display()))?;
        Ok(ModelStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    pub fn check_unchanged(&self, path: &Path) -> Result<()> {
        let now = ModelStamp::take(path)?;
        if now.len != self.len || now.modified != self.modified {
            bail!(
                "the model {} changed during the run ({} bytes at the start, {} now): the checkpoints \
                 may come from either version, so nothing was written; rerun once the file is final",
                path.display(),
                self.len,
                now.len
            );
        }
        Ok(())
    }
}
