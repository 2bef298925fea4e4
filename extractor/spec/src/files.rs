//! The files a run is made of, handled the same way by every crate: a file
//! written whole or not at all, a file's sha256 (as `run.json` records it),
//! and a run directory copied.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`: a reader sees the old file or the new one, never a part; on
/// failure the temporary file is removed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = fs::write(&tmp, bytes)
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| {
            fs::rename(&tmp, path)
                .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// The sha256 of a file's content, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// A fresh copy of the files of run directory `from` (checkpoints,
/// `run.json`, logits; not subdirectories) in `to`, which is emptied first.
pub fn copy_run(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        fs::remove_dir_all(to).with_context(|| format!("cannot empty {}", to.display()))?;
    }
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), to.join(entry.file_name())).with_context(|| {
                format!("cannot copy {} to {}", entry.path().display(), to.display())
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_holds_the_files_and_hashes_alike() {
        let tmp = tempfile::tempdir().unwrap();
        let (run, copy) = (tmp.path().join("run"), tmp.path().join("copy"));
        fs::create_dir_all(run.join("sub")).unwrap();
        write_atomically(&run.join("a.bin"), b"abc").unwrap();
        fs::create_dir_all(&copy).unwrap();
        fs::write(copy.join("stale.bin"), b"old").unwrap();
        copy_run(&run, &copy).unwrap();
        let names: Vec<_> = fs::read_dir(&copy)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["a.bin"]);
        // A write that cannot land leaves no temporary file behind.
        let dir_in_the_way = run.join("sub");
        assert!(write_atomically(&dir_in_the_way, b"x").is_err());
        let left: Vec<_> = fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // sha256("abc"), the FIPS 180-2 example.
        assert_eq!(
            sha256_file(&copy.join("a.bin")).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
