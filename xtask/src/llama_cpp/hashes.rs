//! sha256 of a tree's files: what `fetch` stamps beside the pin (and
//! checks on every run), and what names a user's tree in a run record.
//! A leaf: the fetcher and the trees both read it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// sha256 over (relative path, sha256 of content) of every source file:
/// CMake build directories, `.git` and GGUF models inside the tree are not
/// source and are left out.
pub fn content_sha256(root: &Path) -> Result<String> {
    let files = source_files(root)?;
    let mut hasher = Sha256::new();
    for (path, digest) in &files {
        hasher.update(path.as_bytes());
        hasher.update([0]);
        hasher.update(digest.as_bytes());
        hasher.update([b'\n']);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn source_files(root: &Path) -> Result<BTreeMap<String, String>> {
    file_hashes(root, &is_skipped)
}

/// sha256 of every file under `root` that `skip` leaves in (a skipped
/// directory with everything below it), by relative path; a symlink
/// counts as its target's path.
pub fn file_hashes(
    root: &Path,
    skip: &dyn Fn(&walkdir::DirEntry) -> bool,
) -> Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !skip(e));
    for entry in walk {
        let entry = entry.with_context(|| format!("cannot read the tree {}", root.display()))?;
        if entry.file_type().is_dir() {
            continue;
        }
        let relative = entry
            .path()
            .strip_prefix(root)?
            .to_string_lossy()
            .replace('\\', "/");
        let bytes = if entry.file_type().is_symlink() {
            std::fs::read_link(entry.path())?
                .into_os_string()
                .into_encoded_bytes()
        } else {
            std::fs::read(entry.path())
                .with_context(|| format!("cannot read {}", entry.path().display()))?
        };
        files.insert(relative, hex::encode(Sha256::digest(&bytes)));
    }
    Ok(files)
}

fn is_skipped(entry: &walkdir::DirEntry) -> bool {
    let name = entry.file_name().to_string_lossy();
    if entry.file_type().is_dir() {
        name == ".git" || entry.path().join("CMakeCache.txt").is_file()
    } else {
        name.ends_with(".gguf")
    }
}
