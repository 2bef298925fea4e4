//! `vendor/pin.yaml`: which llama.cpp this project is built and verified against.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub source: Source,
    /// The upstream llama.cpp commit of the tree, where known (the crate does not record it).
    #[serde(default)]
    pub upstream_commit: Option<String>,
    /// ggml's own version string of the tree, as a cross-check for humans.
    #[serde(default)]
    pub ggml_version: Option<String>,
}

/// Exactly one of `crate` or `git`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(rename = "crate", default)]
    pub krate: Option<CrateSource>,
    #[serde(default)]
    pub git: Option<GitSource>,
}

/// A crates.io crate that carries the llama.cpp tree; cargo downloads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrateSource {
    pub name: String,
    pub version: String,
    /// sha256 of the downloaded `.crate` file.
    pub sha256: String,
    /// The directory inside the crate that holds llama.cpp.
    pub subdir: String,
}

/// A git repository and the full commit to check out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    pub url: String,
    pub commit: String,
}

/// `vendor/trees.yaml`: llama.cpp trees other than the pin, to try the tool on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtherTrees {
    pub trees: std::collections::BTreeMap<String, OtherTree>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtherTree {
    #[serde(rename = "crate")]
    pub krate: CrateSource,
    /// llama.cpp's build tag and date, where known.
    pub upstream: Option<String>,
    /// What happened when this tool was built and run on it.
    pub status: String,
}

impl OtherTrees {
    pub fn load(path: &Path) -> Result<OtherTrees> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a valid trees file", path.display()))
    }

    pub fn get(&self, name: &str) -> Result<&OtherTree> {
        self.trees.get(name).with_context(|| {
            format!(
                "no tree `{name}` in vendor/trees.yaml; it has: {}",
                self.trees.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

pub enum SourceRef<'a> {
    Crate(&'a CrateSource),
    Git(&'a GitSource),
}

impl Pin {
    pub fn load(path: &Path) -> Result<Pin> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the pin file {}", path.display()))?;
        let pin: Pin = serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a valid pin file", path.display()))?;
        pin.source()?;
        if let SourceRef::Git(git) = pin.source()? {
            if git.commit.len() != 40 || !git.commit.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "{}: git commit must be a full 40-digit hex hash, not {:?}",
                    path.display(),
                    git.commit
                );
            }
        }
        Ok(pin)
    }

    pub fn source(&self) -> Result<SourceRef<'_>> {
        match (&self.source.krate, &self.source.git) {
            (Some(c), None) => Ok(SourceRef::Crate(c)),
            (None, Some(g)) => Ok(SourceRef::Git(g)),
            _ => bail!("the pin's `source` must have exactly one of `crate` or `git`"),
        }
    }

    /// A short, path-safe name for this pin: keys build directories and stamps.
    pub fn id(&self) -> String {
        match self.source().expect("validated in load") {
            SourceRef::Crate(c) => format!("{}-{}", c.name, c.version),
            SourceRef::Git(g) => format!("git-{}", &g.commit[..12]),
        }
    }

    pub fn describe(&self) -> String {
        let source = match self.source().expect("validated in load") {
            SourceRef::Crate(c) => format!("crate {} {}", c.name, c.version),
            SourceRef::Git(g) => format!("git {} @ {}", g.url, g.commit),
        };
        match (&self.ggml_version, &self.upstream_commit) {
            (Some(v), Some(c)) => format!("{source}, ggml {v}, upstream {c}"),
            (Some(v), None) => format!("{source}, ggml {v}"),
            (None, Some(c)) => format!("{source}, upstream {c}"),
            (None, None) => source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pin> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin.yaml");
        std::fs::write(&path, text).unwrap();
        Pin::load(&path)
    }

    #[test]
    fn the_committed_pin_is_valid() {
        let pin = Pin::load(&crate::project::Project::from_env().unwrap().pin_file()).unwrap();
        assert_eq!(pin.id(), "llama-cpp-sys-2-0.1.161");
    }

    #[test]
    fn the_committed_trees_file_is_valid() {
        let project = crate::project::Project::from_env().unwrap();
        let trees = OtherTrees::load(&project.trees_file()).unwrap();
        assert!(trees.get("llama-cpp-sys-2-0.1.150").is_ok());
        let err = format!("{:#}", trees.get("nope").unwrap_err());
        assert!(err.contains("llama-cpp-sys-2-0.1.100"), "{err}");
    }

    #[test]
    fn both_sources_at_once_is_refused() {
        let err = parse(
            "source:\n  crate: {name: a, version: '1', sha256: x, subdir: s}\n  git: {url: u, commit: '0000000000000000000000000000000000000000'}\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("exactly one"), "{err:#}");
    }

    #[test]
    fn a_short_git_commit_is_refused() {
        let err = parse("source:\n  git: {url: u, commit: abc123}\n").unwrap_err();
        assert!(format!("{err:#}").contains("40-digit"), "{err:#}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse("source:\n  git: {url: u, commit: abc, branch: main}\n").unwrap_err();
        assert!(format!("{err:#}").contains("branch"), "{err:#}");
    }
}
