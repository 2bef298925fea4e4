//! Which llama.cpp source tree a build uses: the pin (fetched into `vendor/`)
//! or a directory of the user's, which is only
//! ever read. Everything made from a tree lives under `target/llorch/`,
//! keyed by [`Tree::id`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use llorch_checkpoint_spec::record::LlamaTree;
use sha2::{Digest, Sha256};

use crate::llama_cpp::fetch;
use crate::llama_cpp::hashes::content_sha256;
use crate::llama_cpp::pin::Pin;
use crate::project::Project;

/// `--llama-cpp DIR`, shared by every task that builds or runs the extractor.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TreeArg {
    /// Your own llama.cpp checkout to build and run instead of the pin. It is
    /// only read: its build, bindings and extractor live under
    /// target/llorch/, rebuilt (incrementally) when the tree changes.
    #[arg(long = "llama-cpp", value_name = "DIR")]
    pub llama_cpp: Option<PathBuf>,
}

impl TreeArg {
    pub fn resolve(&self, project: &Project) -> Result<Tree> {
        match &self.llama_cpp {
            Some(dir) => Tree::local(dir),
            None => Tree::pinned(project),
        }
    }
}

pub struct Tree {
    pub root: PathBuf,
    /// Keys the tree's build and extractor directories: the pin's id, or
    /// `local-<name>-<hash of its path>` (one incremental build per checkout).
    pub id: String,
    /// The pin (not a user's tree): its build is the project's own.
    pub pinned: bool,
    pub record: LlamaTree,
}

impl Tree {
    /// The pinned tree, fetched (and checked against its stamp) if needed.
    pub fn pinned(project: &Project) -> Result<Tree> {
        let root = fetch::ensure_tree(project, false)?;
        let pin = Pin::load(&project.pin_file())?;
        let id = pin.id();
        let record = LlamaTree {
            kind: "pinned".into(),
            name: pin.id(),
            path: root.clone(),
            content_sha256: content_sha256(&root)?,
            git_describe: None,
        };
        Ok(Tree {
            root,
            id,
            pinned: true,
            record,
        })
    }

    /// A directory of the user's. Refused unless it holds a llama.cpp tree.
    pub fn local(dir: &Path) -> Result<Tree> {
        let root = std::fs::canonicalize(dir)
            .with_context(|| format!("--llama-cpp {}: no such directory", dir.display()))?;
        let missing: Vec<&str> = ["CMakeLists.txt", "include/llama.h", "ggml/include/ggml.h"]
            .into_iter()
            .filter(|f| !root.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "--llama-cpp {}: not a llama.cpp source tree (no {}).\n\
                 Give the top directory of a llama.cpp checkout (the one with CMakeLists.txt, include/ and ggml/).",
                dir.display(),
                missing.join(", ")
            );
        }
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "llama.cpp".into());
        let path_hash = hex::encode(Sha256::digest(root.as_os_str().as_encoded_bytes()));
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let record = LlamaTree {
            kind: "local".into(),
            name,
            path: root.clone(),
            content_sha256: content_sha256(&root)?,
            git_describe: git_describe(&root),
        };
        Ok(Tree {
            id: format!("local-{safe}-{}", &path_hash[..10]),
            root,
            pinned: false,
            record,
        })
    }

    pub fn is_local(&self) -> bool {
        !self.pinned
    }

    pub fn include_dirs(&self) -> [PathBuf; 2] {
        [self.root.join("include"), self.root.join("ggml/include")]
    }
}

/// `git describe` of a checkout, `-dirty` when tracked files changed,
/// without writing to it: `describe --dirty` refreshes (rewrites) git's
/// index even with `--no-optional-locks`, `status` with it does not.
fn git_describe(root: &Path) -> Option<String> {
    if !root.join(".git").exists() {
        return None;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .args(["--no-optional-locks", "-C"])
            .arg(root)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let described = git(&["describe", "--always", "--tags"])?;
    let changed = git(&["status", "--porcelain", "--untracked-files=no"])?;
    Some(match changed.is_empty() {
        true => described,
        false => format!("{described}-dirty"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tree(dir: &Path) {
        for f in ["CMakeLists.txt", "include/llama.h", "ggml/include/ggml.h"] {
            std::fs::create_dir_all(dir.join(f).parent().unwrap()).unwrap();
            std::fs::write(dir.join(f), f).unwrap();
        }
    }

    #[test]
    fn a_directory_without_llama_cpp_is_refused_naming_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("CMakeLists.txt"), "").unwrap();
        let err = format!("{:#}", Tree::local(dir.path()).err().unwrap());
        assert!(err.contains("not a llama.cpp source tree"), "{err}");
        assert!(
            err.contains("include/llama.h, ggml/include/ggml.h"),
            "{err}"
        );
    }

    #[test]
    fn the_content_hash_follows_sources_not_builds_or_models() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        let before = Tree::local(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("build-x")).unwrap();
        std::fs::write(dir.path().join("build-x/CMakeCache.txt"), "cache").unwrap();
        std::fs::write(dir.path().join("model.gguf"), "weights").unwrap();
        let with_build = Tree::local(dir.path()).unwrap();
        assert_eq!(
            before.record.content_sha256,
            with_build.record.content_sha256
        );
        assert_eq!(
            before.id, with_build.id,
            "the same checkout keeps its build"
        );
        std::fs::write(dir.path().join("include/llama.h"), "changed").unwrap();
        let edited = Tree::local(dir.path()).unwrap();
        assert_ne!(before.record.content_sha256, edited.record.content_sha256);
        assert_eq!(before.id, edited.id);
    }

    #[test]
    fn a_git_checkout_is_described_without_writing_to_it() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
                .arg(dir.path())
                .args(args)
                .output()
                .expect("git runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-qm", "tree"]);
        git(&["tag", "b1234"]);
        let index = dir.path().join(".git/index");
        let before = std::fs::metadata(&index).unwrap().modified().unwrap();
        let tree = Tree::local(dir.path()).unwrap();
        assert_eq!(tree.record.git_describe.as_deref(), Some("b1234"));
        std::fs::write(dir.path().join("include/llama.h"), "edited").unwrap();
        let edited = Tree::local(dir.path()).unwrap();
        assert_eq!(edited.record.git_describe.as_deref(), Some("b1234-dirty"));
        assert_eq!(
            std::fs::metadata(&index).unwrap().modified().unwrap(),
            before,
            "git's index untouched"
        );
    }
}
