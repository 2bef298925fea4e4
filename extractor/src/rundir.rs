//! Where a run is written, and how it takes the output directory's place.
//!
//! A run never writes inside `--out`. It writes into a staging directory
//! beside it (`.NAME.llorch-run-PID`, in the same parent and so on the same
//! file system), and when the run succeeded the two swap places in one
//! `renameat2(RENAME_EXCHANGE)`: whatever kills the process, and whenever, the
//! output directory holds the previous run or the new one, each whole, never
//! a mix. The previous run, now under the staging name, is removed last.
//!
//! A swap rather than versioned runs behind a pointer: the output directory
//! stays a plain directory of files, so no reader (ours, numpy, a user's
//! script) has a pointer to follow or can read half of one run.
//!
//! Each live run holds a lock on its own staging directory. A run that finds
//! another run's locked staging directory beside its `--out` refuses; one it
//! finds unlocked belongs to a killed run and is removed. Where the file
//! system cannot exchange two directories (NFS), the previous run is renamed
//! aside first (`.NAME.llorch-previous-PID`) and put back by the next run if
//! the process died between the two renames.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use rustix::fs::{renameat_with, RenameFlags, CWD};
use rustix::io::Errno;

/// `run.json`: the file that makes a directory an extraction run.
const RECORD: &str = crate::record::FILE;
/// What earlier versions left inside an output directory; ours to remove.
const LEGACY: [&str; 2] = [".llorch.lock", ".staging-"];

/// A run's staging directory beside `--out`, locked while the run lives.
pub struct RunDir {
    out: PathBuf,
    staging: PathBuf,
    gate: Arc<Mutex<State>>,
    /// Parent directories this run created, deepest first: a failed run removes them.
    made: Vec<PathBuf>,
    _lock: File,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Staging,
    Abandoned,
    Published,
}

impl RunDir {
    /// Checks `out` (absent, empty, or an earlier run), then creates and locks
    /// the staging directory beside it. Refuses while another run writes to `out`.
    pub fn create(out: &Path) -> Result<RunDir> {
        let out = resolve(out)?;
        check_replaceable(&out)?;
        let parent = out.parent().context("--out has no parent directory")?;
        let made = create_parents(parent)?;
        let staging = sibling(&out, "run", std::process::id());
        let created = (|| {
            let _ = fs::remove_dir_all(&staging); // a killed run's, with our pid
            fs::create_dir(&staging)?;
            let lock = File::open(&staging)?;
            lock.try_lock().map_err(std::io::Error::from)?;
            Ok::<File, std::io::Error>(lock)
        })();
        let lock = created.with_context(|| {
            format!(
                "cannot create a staging directory in {}; the run needs write access there (or choose another --out)",
                parent.display()
            )
        })?;
        let run = RunDir {
            out,
            staging,
            gate: Arc::new(Mutex::new(State::Staging)),
            made,
            _lock: lock,
        };
        run.clear_siblings()?;
        Ok(run)
    }

    /// The output directory (symlinks resolved).
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Where the run's files go until it is published.
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// What removes the staged run from a signal handler or ggml's abort hook.
    pub fn abandon_handle(&self) -> Abandon {
        Abandon {
            staging: self.staging.clone(),
            made: self.made.clone(),
            gate: self.gate.clone(),
        }
    }

    /// The staged run takes the output directory's place in one step; the
    /// previous run is removed after. Fails if a signal abandoned the run first.
    pub fn publish(self) -> Result<()> {
        {
            let mut state = lock(&self.gate);
            if *state == State::Abandoned {
                bail!("the run was interrupted before it could be published");
            }
            swap_into_place(&self.staging, &self.out)?;
            *state = State::Published;
            #[cfg(feature = "test-hooks")]
            crate::hooks::phase("published");
        }
        // The previous run, if any, is now at the staging name (or set aside).
        remove_if_present(&self.staging);
        remove_if_present(&sibling(&self.out, "previous", std::process::id()));
        Ok(())
    }

    /// Other runs' leftovers beside `out`: a live run's locked staging
    /// directory refuses this run, a killed run's is removed, and a previous
    /// run set aside by a killed fallback swap is put back.
    fn clear_siblings(&self) -> Result<()> {
        let parent = self.out.parent().expect("checked in create");
        let prefix = sibling_prefix(&self.out);
        for entry in fs::read_dir(parent)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            if path == self.staging {
                continue;
            }
            if held_by_a_live_run(&path) {
                bail!(
                    "another extraction is writing to {} (it holds {}); wait for it to finish or use another --out",
                    self.out.display(),
                    path.display()
                );
            }
            if rest.starts_with("previous-") && !self.out.exists() {
                log::warn!(
                    "putting back the run an interrupted swap had set aside ({})",
                    path.display()
                );
                fs::rename(&path, &self.out)?;
                continue;
            }
            remove_if_present(&path);
        }
        Ok(())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        // Not published: the staged files and any parents the run made go.
        self.abandon_handle().abandon();
    }
}

/// A failed run's cleanup, callable from a signal handler or ggml's abort
/// hook (no `RunDir` there). It waits for a swap in progress to finish.
#[derive(Clone)]
pub struct Abandon {
    staging: PathBuf,
    made: Vec<PathBuf>,
    gate: Arc<Mutex<State>>,
}

impl Abandon {
    /// Removes the staged run unless it was published; returns whether it was.
    /// The writer may still be adding files: once the staging directory is
    /// gone it cannot (no file can be created in a removed directory).
    pub fn abandon(&self) -> bool {
        let mut state = lock(&self.gate);
        if *state == State::Staging {
            *state = State::Abandoned;
        }
        // Published or not, the staging name holds nothing to keep.
        for _ in 0..10 {
            if fs::remove_dir_all(&self.staging).is_ok() || !self.staging.exists() {
                break;
            }
        }
        if *state == State::Abandoned {
            for dir in &self.made {
                let _ = fs::remove_dir(dir);
            }
        }
        *state == State::Published
    }
}

fn lock(gate: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `out` as an absolute path, a symlink to a directory followed (the swap
/// replaces the directory, not the link).
fn resolve(out: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(out)
        .with_context(|| format!("cannot resolve --out {}", out.display()))?;
    match fs::symlink_metadata(&absolute) {
        Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(&absolute)
            .with_context(|| format!("--out {} is a broken symlink", out.display())),
        _ => Ok(absolute),
    }
}

/// `out` must be absent, an empty directory, or an earlier run (it holds
/// `run.json`): the swap replaces the whole directory, so anything else is refused.
fn check_replaceable(out: &Path) -> Result<()> {
    let entries = match fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) if out.is_file() => {
            bail!("--out {} is a file, not a directory ({e})", out.display())
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot write to the output directory {}; choose another with --out, or fix its permissions",
                    out.display()
                )
            })
        }
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let ours = |n: &String| LEGACY.iter().any(|l| n.starts_with(l));
    if names.iter().any(|n| n == RECORD) || names.iter().all(ours) {
        return Ok(());
    }
    let other = names.iter().find(|n| !ours(n)).expect("not all ours");
    bail!(
        "--out {} holds files that are not an extraction run (`{other}`, and no {RECORD}); a run replaces its \
         output directory whole, so choose a new or empty --out",
        out.display()
    )
}

/// Creates `dir` and its missing parents; returns those it made, deepest first.
fn create_parents(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    let mut missing = Some(dir);
    while let Some(d) = missing.filter(|d| !d.exists()) {
        made.push(d.to_path_buf());
        missing = d.parent();
    }
    fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {}; choose another --out, or fix its permissions",
            dir.display()
        )
    })?;
    Ok(made)
}

/// `.NAME.llorch-`: what every staging or set-aside directory of `out` starts with.
fn sibling_prefix(out: &Path) -> String {
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    format!(".{name}.llorch-")
}

/// `.NAME.llorch-KIND-PID` beside `out`.
fn sibling(out: &Path, kind: &str, pid: u32) -> PathBuf {
    out.with_file_name(format!("{}{kind}-{pid}", sibling_prefix(out)))
}

/// Whether a live run holds `dir`'s lock.
fn held_by_a_live_run(dir: &Path) -> bool {
    File::open(dir).is_ok_and(|f| matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)))
}

fn remove_if_present(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != ErrorKind::NotFound {
            log::warn!("could not remove {}: {e}", dir.display());
        }
    }
}

/// `staging` becomes `out` in one rename; an existing `out` ends up at `staging`.
fn swap_into_place(staging: &Path, out: &Path) -> Result<()> {
    let moved = |e: Errno| {
        anyhow::Error::from(std::io::Error::from(e)).context(format!(
            "cannot move the finished run from {} to {}",
            staging.display(),
            out.display()
        ))
    };
    loop {
        match renameat_with(CWD, staging, CWD, out, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(Errno::EXIST | Errno::NOTEMPTY) => {}
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                return swap_by_two_renames(staging, out);
            }
            Err(e) => return Err(moved(e)),
        }
        match renameat_with(CWD, staging, CWD, out, RenameFlags::EXCHANGE) {
            Ok(()) => return Ok(()),
            // `out` went away between the two calls: place the run again.
            Err(Errno::NOENT) if staging.exists() => continue,
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                return swap_by_two_renames(staging, out);
            }
            Err(e) => return Err(moved(e)),
        }
    }
}

/// Where the file system cannot exchange: `out` set aside, then the run moved
/// in. Between the two, `out` is absent and the next run puts the set-aside one back.
fn swap_by_two_renames(staging: &Path, out: &Path) -> Result<()> {
    let aside = sibling(out, "previous", std::process::id());
    if out.exists() {
        fs::rename(out, &aside)
            .with_context(|| format!("cannot set the previous run in {} aside", out.display()))?;
    }
    fs::rename(staging, out)
        .with_context(|| format!("cannot move the finished run to {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn staged_run(out: &Path, marker: &str) -> RunDir {
        let run = RunDir::create(out).unwrap();
        fs::write(run.staging().join(RECORD), marker).unwrap();
        fs::write(run.staging().join(format!("{marker}.bin")), marker).unwrap();
        run
    }

    #[test]
    fn a_published_run_replaces_the_previous_one_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        staged_run(&out, "first").publish().unwrap();
        assert_eq!(files(&out), ["first.bin", "run.json"]);
        staged_run(&out, "second").publish().unwrap();
        assert_eq!(files(&out), ["run.json", "second.bin"]);
        assert_eq!(files(tmp.path()), ["out"], "no staging left beside it");
    }

    #[test]
    fn an_unpublished_run_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("a/b/out");
        drop(staged_run(&out, "lost"));
        assert_eq!(
            files(tmp.path()),
            Vec::<String>::new(),
            "parents it made go too"
        );
        staged_run(&out, "first").publish().unwrap();
        let run = staged_run(&out, "second");
        assert!(!run.abandon_handle().abandon(), "not published");
        assert!(
            run.publish().is_err(),
            "an abandoned run cannot be published"
        );
        assert_eq!(files(&out), ["first.bin", "run.json"]);
        assert_eq!(files(out.parent().unwrap()), ["out"]);
    }

    #[test]
    fn a_live_run_refuses_a_second_and_a_dead_ones_staging_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let live = RunDir::create(&out).unwrap();
        // Another process's staging directory, locked as a live run locks it.
        let other = sibling(&out, "run", 1);
        fs::create_dir(&other).unwrap();
        let held = File::open(&other).unwrap();
        held.try_lock().unwrap();
        let err = live.clear_siblings().unwrap_err().to_string();
        assert!(err.contains("another extraction is writing"), "{err}");
        drop(held);
        live.clear_siblings().unwrap();
        assert!(!other.exists(), "a dead run's staging is removed");
    }

    #[test]
    fn a_run_set_aside_by_an_interrupted_fallback_swap_is_put_back() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        staged_run(&out, "first").publish().unwrap();
        // The fallback died between its two renames: out is set aside, absent.
        fs::rename(&out, sibling(&out, "previous", 1)).unwrap();
        let run = staged_run(&out, "second");
        assert_eq!(files(&out), ["first.bin", "run.json"], "put back");
        run.publish().unwrap();
        assert_eq!(files(&out), ["run.json", "second.bin"]);
        // And the fallback itself, run to its end.
        let run = staged_run(&out, "third");
        swap_by_two_renames(run.staging(), &out).unwrap();
        assert_eq!(files(&out), ["run.json", "third.bin"]);
    }

    #[test]
    fn a_directory_that_is_not_a_run_is_refused_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
        let err = RunDir::create(tmp.path()).err().unwrap().to_string();
        assert!(err.contains("not an extraction run (`notes.txt`"), "{err}");
        assert_eq!(files(tmp.path()), ["notes.txt"]);
        let file = tmp.path().join("notes.txt");
        let err = RunDir::create(&file).err().unwrap().to_string();
        assert!(err.contains("is a file, not a directory"), "{err}");
    }
}
