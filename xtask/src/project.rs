//! Where everything lives. One place, so no task invents its own paths.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::Shell;

pub struct Project {
    root: PathBuf,
}

impl Project {
    /// The workspace root: xtask's own manifest sits one level below it.
    pub fn from_env() -> Result<Project> {
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let root = manifest_dir
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        Ok(Project { root })
    }

    #[cfg(test)]
    pub fn at(root: &Path) -> Project {
        Project {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` as a user reads it: relative to the project root when inside it.
    pub fn shown(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    pub fn shell(&self) -> Result<Shell> {
        let sh = Shell::new()?;
        sh.change_dir(&self.root);
        Ok(sh)
    }

    pub fn pin_file(&self) -> PathBuf {
        self.root.join("vendor/pin.yaml")
    }

    /// Other llama.cpp trees to try the tool on (`vendor/trees.yaml`).
    pub fn trees_file(&self) -> PathBuf {
        self.root.join("vendor/trees.yaml")
    }

    /// Where `fetch --tree NAME` unpacks one.
    pub fn other_tree(&self, name: &str) -> PathBuf {
        self.work_dir().join("trees").join(name)
    }

    /// The pinned llama.cpp tree, unpacked by `fetch`.
    pub fn tree(&self) -> PathBuf {
        self.root.join("vendor/llama.cpp")
    }

    /// What `fetch` recorded about the tree it unpacked (pin, file hashes).
    pub fn tree_stamp(&self) -> PathBuf {
        self.root.join("vendor/llama.cpp.stamp")
    }

    /// Everything the pipeline generates: tools, builds, models, runs. Git-ignored.
    pub fn work_dir(&self) -> PathBuf {
        self.root.join("target/llorch")
    }

    pub fn tools_dir(&self) -> PathBuf {
        self.work_dir().join("tools")
    }

    pub fn bindings_file(&self) -> PathBuf {
        self.root.join("extractor/src/ffi/bindings.rs")
    }

    /// A tree's own extractor: its description, bindings and cargo target directory.
    pub fn extractor_dir(&self, tree_id: &str) -> PathBuf {
        self.work_dir().join("extractors").join(tree_id)
    }

    /// Written by `build`: which llama.cpp build the extractor links against.
    pub fn active_build_file(&self) -> PathBuf {
        self.work_dir().join("active-build.json")
    }
}
