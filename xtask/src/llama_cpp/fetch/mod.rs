//! `cargo xtask fetch`: the pinned llama.cpp tree in `vendor/`, verified, as
//! released (no patch: the manifests find the nodes llama.cpp leaves unnamed
//! by op and operand).
//!
//! The tree is built in a staging directory (download, checksum, unpack),
//! hashed file by file, and only then renamed into place, so a refused or
//! interrupted download never leaves a half-made tree behind. The
//! stamp beside the tree records what was unpacked; every later run re-hashes
//! the tree and refuses one that was edited by hand.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_spec::files::write_atomically;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xshell::cmd;

use crate::llama_cpp::pin::{CrateSource, GitSource, OtherTrees, Pin, SourceRef};
use crate::project::Project;
use crate::step::Step;

const RESTORE: &str = "cargo xtask fetch --force";

#[derive(clap::Args)]
pub struct Fetch {
    /// Replace the vendor tree even if it was changed by hand (your edits are lost).
    #[arg(long)]
    force: bool,
    /// Instead: unpack a tree of vendor/trees.yaml into target/llorch/trees/NAME (read-only),
    /// to build with --llama-cpp.
    #[arg(long, value_name = "NAME", conflicts_with = "force")]
    tree: Option<String>,
}

impl Fetch {
    pub fn run(self, project: &Project) -> Result<()> {
        if let Some(name) = &self.tree {
            let dir = other_tree(project, name)?;
            println!("{}", dir.display());
            return Ok(());
        }
        ensure_tree(project, self.force)?;
        Ok(())
    }
}

/// What fetch recorded about a tree it made.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Stamp {
    pin: String,
    /// Set by earlier versions, which patched node names in: such a tree is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    patches: Option<String>,
    /// Relative path -> sha256 of the content, for every file of the tree.
    files: BTreeMap<String, String>,
}

/// Makes sure the pinned tree is there, as the pin says, fetching it when
/// missing or outdated. Returns the tree's path.
pub fn ensure_tree(project: &Project, force: bool) -> Result<PathBuf> {
    ensure_tree_with(project, force, &download_crate)
}

fn ensure_tree_with(
    project: &Project,
    force: bool,
    download: &dyn Fn(&Project, &CrateSource) -> Result<PathBuf>,
) -> Result<PathBuf> {
    let pin = Pin::load(&project.pin_file())?;
    let tree = project.tree();
    let stamp_path = project.tree_stamp();
    let step = Step::start(project, "fetch", &format!("llama.cpp {}", pin.describe()))?;
    if tree.exists() && !force {
        let stamp = intact_stamp(&tree, &stamp_path)?;
        let patched = stamp.patches.as_deref().is_some_and(|p| p != "none");
        if stamp.pin == pin.id() && !patched {
            step.finish_unchanged(&format!(
                "{} is up to date ({})",
                tree.display(),
                pin.describe()
            ));
            return Ok(tree);
        }
        step.say(&format!(
            "{}; replacing {}",
            if patched {
                "the tree was patched by an earlier version"
            } else {
                "the pin changed"
            },
            tree.display()
        ));
    }
    let vendor = tree.parent().context("tree has no parent")?;
    let staging = vendor.join(".staging-llama.cpp");
    remove_dir_if_exists(&staging)?;
    let made = (|| -> Result<Stamp> {
        stage_source(project, &pin, &step, download, &staging)?;
        Ok(Stamp {
            pin: pin.id(),
            patches: None,
            files: hash_tree(&staging)?,
        })
    })();
    let stamp = made.inspect_err(|_| {
        let _ = fs::remove_dir_all(&staging);
    })?;
    swap_in(&staging, &tree, &vendor.join(".old-llama.cpp"))?;
    write_atomically(&stamp_path, &serde_json::to_vec_pretty(&stamp)?)?;
    step.finish(&format!(
        "{} ready ({}, {} files)",
        tree.display(),
        pin.describe(),
        stamp.files.len()
    ));
    Ok(tree)
}

/// The stamp of an existing tree, which must be the tree fetch unpacked, unchanged.
fn intact_stamp(tree: &Path, stamp_path: &Path) -> Result<Stamp> {
    let stamp: Stamp = match fs::read(stamp_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is corrupt; restore with: {RESTORE}",
                stamp_path.display()
            )
        })?,
        Err(_) => bail!(
            "{} exists but was not unpacked by `cargo xtask fetch` (no stamp).\n\
             Replace it with the pinned tree: {RESTORE}",
            tree.display()
        ),
    };
    let changes = compare(&stamp.files, &hash_tree(tree)?);
    if !changes.is_empty() {
        bail!(
            "{} was changed by hand since `cargo xtask fetch` unpacked it:\n{}\n\
             Restore the pinned tree with: {RESTORE}",
            tree.display(),
            changes.join("\n")
        );
    }
    Ok(stamp)
}

/// A tree of `vendor/trees.yaml`, downloaded, checked and unpacked (once)
/// into `target/llorch/trees/NAME`, its files made read-only: it stands for
/// a user's own tree, which nothing here may write to.
pub fn other_tree(project: &Project, name: &str) -> Result<PathBuf> {
    let trees = OtherTrees::load(&project.trees_file())?;
    let tree = trees.get(name)?;
    let src = &tree.krate;
    let dir = project.other_tree(name);
    if dir.join("CMakeLists.txt").is_file() {
        return Ok(dir);
    }
    let step = Step::start(project, "fetch", &format!("{} {}", src.name, src.version))?;
    step.set_message(&format!(
        "downloading {} {} with cargo",
        src.name, src.version
    ));
    let crate_file = download_crate(project, src)?;
    let staging = dir.with_extension("partial");
    remove_dir_if_exists(&staging)?;
    fs::create_dir_all(&staging)?;
    unpack_crate(&crate_file, src, &staging, "vendor/trees.yaml")?;
    for entry in walkdir::WalkDir::new(&staging) {
        let entry = entry?;
        if entry.file_type().is_file() {
            let mut perms = entry.metadata()?.permissions();
            perms.set_readonly(true);
            fs::set_permissions(entry.path(), perms)?;
        }
    }
    fs::rename(&staging, &dir)
        .with_context(|| format!("cannot move the tree to {}", dir.display()))?;
    step.finish(&format!(
        "{} ready (read-only; llama.cpp {}; here: {})",
        dir.display(),
        tree.upstream.as_deref().unwrap_or("build unknown"),
        tree.status
    ));
    Ok(dir)
}

/// The pinned source, downloaded or checked out, unpacked into `staging`.
fn stage_source(
    project: &Project,
    pin: &Pin,
    step: &Step,
    download: &dyn Fn(&Project, &CrateSource) -> Result<PathBuf>,
    staging: &Path,
) -> Result<()> {
    match pin.source()? {
        SourceRef::Crate(src) => {
            step.set_message(&format!(
                "downloading {} {} with cargo",
                src.name, src.version
            ));
            let crate_file = download(project, src)?;
            unpack_crate(&crate_file, src, staging, "vendor/pin.yaml")
        }
        SourceRef::Git(src) => {
            step.set_message(&format!("checking out {} at {}", src.url, src.commit));
            checkout_git(project, src, staging)
        }
    }
}

/// Replaces `tree` by `staging`, the old tree moved to `old` first and removed last.
fn swap_in(staging: &Path, tree: &Path, old: &Path) -> Result<()> {
    remove_dir_if_exists(old)?;
    if tree.exists() {
        fs::rename(tree, old).with_context(|| format!("cannot move {} aside", tree.display()))?;
    }
    fs::rename(staging, tree)
        .with_context(|| format!("cannot move the new tree to {}", tree.display()))?;
    remove_dir_if_exists(old)
}

fn download_crate(project: &Project, src: &CrateSource) -> Result<PathBuf> {
    download_crate_file(project, &src.name, &src.version)
}

/// Lets cargo download (and check against the registry index) crate `name`
/// at exactly `version`, and returns the `.crate` file in cargo's cache.
/// Check it against a pinned sha256 with [`check_sha256`] before using it.
pub fn download_crate_file(project: &Project, name: &str, version: &str) -> Result<PathBuf> {
    let dir = project
        .work_dir()
        .join("fetch")
        .join(format!("{name}-{version}"));
    fs::create_dir_all(dir.join("src"))?;
    let manifest = format!(
        "# Generated by `cargo xtask`: only here to make cargo download the pinned crate.\n\
         [package]\nname = \"llorch-fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [dependencies]\n{name} = {{ version = \"={version}\", default-features = false }}\n\n[workspace]\n"
    );
    fs::write(dir.join("Cargo.toml"), manifest)?;
    fs::write(dir.join("src/lib.rs"), "")?;
    let sh = project.shell()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_path = dir.join("Cargo.toml");
    cmd!(sh, "{cargo} fetch --quiet --manifest-path {manifest_path}")
        .quiet()
        .run()
        .with_context(|| format!("cargo could not download {name} {version} from crates.io"))?;

    let cache = home::cargo_home()?.join("registry/cache");
    let file_name = format!("{name}-{version}.crate");
    for registry in
        fs::read_dir(&cache).with_context(|| format!("no cargo cache at {}", cache.display()))?
    {
        let candidate = registry?.path().join(&file_name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cargo fetched {name} {version} but {file_name} is not in {}",
        cache.display()
    )
}

/// Refuses `bytes` (the content of `file`, which is `what`) unless their
/// sha256 is `pinned`; `fix` says where the pin lives.
pub fn check_sha256(file: &Path, bytes: &[u8], what: &str, pinned: &str, fix: &str) -> Result<()> {
    let actual = hex::encode(Sha256::digest(bytes));
    if !actual.eq_ignore_ascii_case(pinned) {
        bail!(
            "checksum mismatch for {what} ({}):\n  pinned   {pinned}\n  download {actual}\n\
             Refusing to use it. If you moved the pin on purpose, put the new sha256 in {fix}.",
            file.display()
        );
    }
    Ok(())
}

/// Checks the `.crate` against its pinned sha256 (in `pinned_in`), then
/// unpacks only its llama.cpp subtree.
fn unpack_crate(crate_file: &Path, src: &CrateSource, dest: &Path, pinned_in: &str) -> Result<()> {
    let bytes =
        fs::read(crate_file).with_context(|| format!("cannot read {}", crate_file.display()))?;
    check_sha256(
        crate_file,
        &bytes,
        &format!("{} {}", src.name, src.version),
        &src.sha256,
        pinned_in,
    )?;
    let prefix = PathBuf::from(format!("{}-{}", src.name, src.version)).join(&src.subdir);
    let unpacked = unpack_tar_gz_subdir(&bytes, &prefix, dest)?;
    ensure!(
        unpacked > 0,
        "{} has no {} directory",
        crate_file.display(),
        src.subdir
    );
    Ok(())
}

/// Unpacks the entries under `prefix` of a `.tar.gz` (a `.crate`, an sdist)
/// into `dest`, without the prefix. Returns how many entries it unpacked.
/// Files get the time of unpacking, not the archive's (crates.io's are all
/// 2006): a tree replaced in place must look newer than its build's objects.
pub fn unpack_tar_gz_subdir(bytes: &[u8], prefix: &Path, dest: &Path) -> Result<usize> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut unpacked = 0usize;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Ok(relative) = path.strip_prefix(prefix) else {
            continue;
        };
        if relative.as_os_str().is_empty() {
            continue;
        }
        ensure!(
            relative
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "archive entry {} would escape {}",
            path.display(),
            dest.display()
        );
        fs::create_dir_all(dest)?;
        let target = dest.join(relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        entry.set_preserve_mtime(false);
        entry
            .unpack(&target)
            .with_context(|| format!("cannot unpack {}", relative.display()))?;
        unpacked += 1;
    }
    Ok(unpacked)
}

/// The content of the file at `path` inside a `.tar.gz`.
pub fn read_from_tar_gz(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()? == path {
            let mut out = Vec::new();
            entry.read_to_end(&mut out)?;
            return Ok(out);
        }
    }
    bail!("the archive has no {}", path.display())
}

fn checkout_git(project: &Project, src: &GitSource, dest: &Path) -> Result<()> {
    let sh = project.shell()?;
    let (url, commit) = (&src.url, &src.commit);
    fs::create_dir_all(dest)?;
    cmd!(sh, "git init --quiet {dest}").run()?;
    let _dir = sh.push_dir(dest);
    // A shallow fetch of the one commit where the server allows it, else the full history.
    if cmd!(sh, "git fetch --quiet --depth 1 {url} {commit}")
        .quiet()
        .ignore_stderr()
        .run()
        .is_err()
    {
        cmd!(sh, "git fetch --quiet {url}")
            .run()
            .with_context(|| format!("cannot fetch {url}"))?;
    }
    cmd!(
        sh,
        "git -c advice.detachedHead=false checkout --quiet {commit}"
    )
    .run()
    .with_context(|| format!("commit {commit} is not in {url}"))?;
    let head = cmd!(sh, "git rev-parse HEAD").read()?;
    ensure!(
        head.trim() == commit.as_str(),
        "checked out {head} instead of the pinned {commit}"
    );
    fs::remove_dir_all(dest.join(".git"))?;
    Ok(())
}

/// sha256 of every file under `root`, by relative path.
fn hash_tree(root: &Path) -> Result<BTreeMap<String, String>> {
    crate::llama_cpp::hashes::file_hashes(root, &|_| false)
}

/// Human-readable differences between what was unpacked and what is there now.
fn compare(recorded: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<String> {
    let mut changes = Vec::new();
    for (path, hash) in recorded {
        match now.get(path) {
            None => changes.push(format!("  removed:  {path}")),
            Some(h) if h != hash => changes.push(format!("  modified: {path}")),
            Some(_) => {}
        }
    }
    for path in now.keys().filter(|p| !recorded.contains_key(*p)) {
        changes.push(format!("  added:    {path}"));
    }
    changes
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
