//! A run's files: written by a writer thread into the run's staging
//! directory (see `rundir`), published with `run.json` when the run succeeded.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::captured::Captured;
use crate::format::{self, Format};
use crate::handoff::Inbox;
use crate::record::{CheckpointRecord, RunRecord};
use crate::rundir::{Abandon, RunDir};
use llorch_checkpoint_spec::metric::value_stats;

pub struct Output {
    run: RunDir,
    format: Format,
}

impl Output {
    /// Checks `--out` and stages the run beside it; fails before any inference
    /// if it cannot be written or another run holds it. Nothing in `--out`
    /// changes until [`Output::commit`].
    pub fn open(dir: &Path, format: Format) -> Result<Output> {
        Ok(Output {
            run: RunDir::create(dir)?,
            format,
        })
    }

    pub fn dir(&self) -> &Path {
        self.run.out()
    }

    /// What removes this run's files when the process cannot unwind (ggml
    /// aborting, a signal): the same cleanup as a failed run's drop.
    pub fn abandon_handle(&self) -> Abandon {
        self.run.abandon_handle()
    }

    /// Starts the writer thread: it writes each batch the capture hands over
    /// (on every core: no decode runs meanwhile), until the capture closes,
    /// and returns the files' records and the time it spent writing them. At
    /// its first error it stops, and its inbox tells the capture so.
    pub fn spawn_writer(&self, inbox: Inbox) -> JoinHandle<Result<(Vec<CheckpointRecord>, f64)>> {
        let staging = self.run.staging().to_path_buf();
        let out = self.run.out().to_path_buf();
        let format = self.format;
        std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                let mut written = Vec::new();
                let mut busy = std::time::Duration::ZERO;
                while let Some(batch) = inbox.next_batch() {
                    #[cfg(feature = "test-hooks")]
                    crate::hooks::phase("writing");
                    let started = std::time::Instant::now();
                    let records =
                        write_batch(&staging, format, &inbox, &batch).with_context(|| {
                            format!(
                                "cannot write the run for {}; nothing there changed",
                                out.display()
                            )
                        })?;
                    inbox.recycle(batch);
                    written.extend(records);
                    busy += started.elapsed();
                }
                Ok((written, busy.as_secs_f64() * 1e3))
            })
            .expect("cannot start the writer thread")
    }

    /// Writes the run's last files, then publishes the run: it replaces what
    /// `--out` held in one step.
    pub fn commit(self, record: &RunRecord, extra: &[(&str, &[u8])]) -> Result<()> {
        #[cfg(feature = "test-hooks")]
        crate::hooks::phase("commit");
        let staging = self.run.staging();
        let json = record.to_json();
        let files = extra
            .iter()
            .copied()
            .chain([(crate::record::FILE, json.as_slice())]);
        for (name, bytes) in files {
            fs::write(staging.join(name), bytes)
                .with_context(|| format!("cannot write {name} in {}", staging.display()))?;
            #[cfg(feature = "test-hooks")]
            crate::hooks::phase("commit");
        }
        self.run.publish()
    }
}

/// One batch over all cores; the first error stops every worker, and each
/// tensor's memory goes back to the capture whether it was written or not.
fn write_batch(
    staging: &Path,
    format: Format,
    inbox: &Inbox,
    batch: &[Captured],
) -> Result<Vec<CheckpointRecord>> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_worker = batch.len().div_ceil(workers).max(1);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = batch
            .chunks(per_worker)
            .map(|chunk| {
                let (release, failed) = (inbox.release(), &failed);
                s.spawn(move || -> Result<Vec<CheckpointRecord>> {
                    let mut records = Vec::new();
                    for c in chunk {
                        let record = match failed.load(Ordering::Relaxed) {
                            true => None,
                            false => Some(write_one(staging, format, c)),
                        };
                        #[cfg(feature = "test-hooks")]
                        crate::hooks::written();
                        release.done(c);
                        match record {
                            Some(Ok(r)) => records.push(r),
                            Some(Err(e)) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                            None => {}
                        }
                    }
                    Ok(records)
                })
            })
            .collect();
        let mut records = Vec::new();
        let mut first_error = None;
        for h in handles {
            match h.join() {
                Ok(Ok(r)) => records.extend(r),
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(_) => first_error = first_error.or(Some(anyhow::anyhow!("a writer panicked"))),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(records),
        }
    })
}

/// Writes one checkpoint file, hashing its bytes on the way to the disk.
fn write_one(staging: &Path, format: Format, captured: &Captured) -> Result<CheckpointRecord> {
    let file = file_name(&captured.file_stem, captured.step, format);
    let path = staging.join(&file);
    let full = || {
        format!(
            "cannot write {} (disk full or directory removed?)",
            path.display()
        )
    };
    let mut out = Hashing {
        // Small writes (the header) are gathered; the data goes straight through.
        inner: std::io::BufWriter::with_capacity(64 << 10, File::create(&path).with_context(full)?),
        hasher: Sha256::new(),
    };
    format::write(format, &mut out, &captured.shape, &captured.data).with_context(full)?;
    out.inner.flush().with_context(full)?;
    let (min, max, mean, non_finite) = value_stats(&captured.data);
    log::info!(
        "  {:<24} {:<18} {:>18}  {}",
        captured.id,
        captured.tensor,
        crate::manifest::fmt_ne(&captured.shape),
        file
    );
    Ok(CheckpointRecord {
        id: captured.id.clone(),
        layer: captured.layer,
        step: captured.step,
        tensor: captured.tensor.clone(),
        op: captured.op.to_string(),
        ggml_ne: captured.ggml_ne,
        shape: captured.shape.clone(),
        source_dtype: captured.source_dtype.to_string(),
        buffer: captured.buffer.clone(),
        fetched_bytes: captured.fetched as u64,
        file,
        sha256: hex::encode(out.hasher.finalize()),
        min,
        max,
        mean,
        non_finite,
        graph_index: captured.place.graph_index,
        operands: captured.place.operands.clone(),
        op_params: captured.place.op_params.clone(),
        layout: captured.place.layout.clone(),
        ggml_flags: captured.place.flags,
        operand_of: captured.place.operand_of,
    })
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        #[cfg(feature = "test-hooks")]
        crate::hooks::writing(buf.len())?;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The prompt pass keeps the manifest's names; later passes get `.stepN`.
pub fn file_name(stem: &str, step: usize, format: Format) -> String {
    match step {
        0 => format!("{stem}.{}", format.extension()),
        s => format!("{stem}.step{s}.{}", format.extension()),
    }
}

/// The sha256 of a model file, remembered per path, size and modification
/// time in the user's cache (`$XDG_CACHE_HOME` or `~/.cache`,
/// `llorch-checkpoint/sha256.tsv`): a 500 MB model is hashed once, not on
/// every run. Without a writable cache it is simply computed.
pub fn sha256_cached(path: &Path) -> Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let absolute = std::path::absolute(path)?.display().to_string();
    let key = format!("{absolute}\t{}\t{modified}", meta.len());
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|dir| dir.join("llorch-checkpoint").join("sha256.tsv"));
    let known = cache
        .as_ref()
        .and_then(|c| fs::read_to_string(c).ok())
        .unwrap_or_default();
    if let Some(sha) = known
        .lines()
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix('\t'))
    {
        return Ok(sha.to_string());
    }
    let sha = llorch_checkpoint_spec::files::sha256_file(path)?;
    if let Some(cache) = cache {
        // Best effort, atomically: a lost entry only costs a hash later.
        let mut text: String = known
            .lines()
            .filter(|l| !l.starts_with(&format!("{absolute}\t")))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!("{key}\t{sha}\n"));
        if let Some(dir) = cache.parent() {
            let _ = fs::create_dir_all(dir);
        }
        let _ = llorch_checkpoint_spec::files::write_atomically(&cache, text.as_bytes());
    }
    Ok(sha)
}
