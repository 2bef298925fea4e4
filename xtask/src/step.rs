//! How a task shows its work: one line per step, a bar or spinner while a
//! long one runs, the whole output of its external commands in
//! `target/llorch/logs/<step>.log`, and on failure that log's last lines and
//! its path. `-v` streams every command's output instead, as it comes.
//!
//! On a terminal the bar redraws in place; elsewhere (CI, a pipe) a long
//! step prints a plain progress line at most every [`PLAIN_EVERY`].

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::project::Project;

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// `-v`: stream external commands' output rather than keep it in logs.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// Lines of a failed command's log shown with its error.
const TAIL: usize = 30;

/// How often a long step says how far it is when nothing redraws in place.
const PLAIN_EVERY: Duration = Duration::from_secs(30);

/// One step of a task (`fetch`, `build`, `model`...), shown as one line.
pub struct Step {
    name: String,
    /// What it works on: with `name`, what `finish_unchanged` keys on.
    what: String,
    /// The project's root and a slash: lines show paths relative to it.
    root: String,
    log: PathBuf,
    bar: ProgressBar,
    started: Instant,
    /// Not a terminal (and not verbose): plain lines, and when the last was.
    plain: Option<Mutex<Instant>>,
}

impl Step {
    /// Starts `name` (its log: `target/llorch/logs/<name>.log`, emptied),
    /// on a terminal as a spinner saying `what`.
    pub fn start(project: &Project, name: &str, what: &str) -> Result<Step> {
        let logs = project.work_dir().join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let log = logs.join(format!("{name}.log"));
        File::create(&log).with_context(|| format!("cannot write {}", log.display()))?;
        let terminal = std::io::stderr().is_terminal() && !verbose();
        let bar = if terminal {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(spinner_style());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        bar.set_prefix(name.to_string());
        bar.set_message(what.replace(&format!("{}/", project.root().display()), ""));
        // Plain output starts with the first phase the step announces, so a
        // step with nothing to do prints only its summary.
        let plain = (!terminal).then(|| Mutex::new(Instant::now()));
        Ok(Step {
            name: name.to_string(),
            what: what.to_string(),
            root: format!("{}/", project.root().display()),
            log,
            bar,
            started: Instant::now(),
            plain,
        })
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The step enters a phase that takes a while: its line says `what`
    /// (a plain line where nothing redraws).
    pub fn set_message(&self, what: &str) {
        let what = self.shown(what);
        self.bar.set_message(what.clone());
        if self.plain.is_some() {
            eprintln!("{:>9} {what}", self.name);
        }
    }

    /// What the step is on now, where a line redraws (a crate, a file).
    pub fn set_detail(&self, what: &str) {
        self.bar.set_message(self.shown(what));
    }

    /// `line` with the project's root left out of its paths.
    fn shown(&self, line: &str) -> String {
        line.replace(&self.root, "")
    }

    /// `done` of `total` units (ninja's edges, bytes): a bar from now on.
    pub fn progress(&self, done: u64, total: u64) {
        if self.bar.length() != Some(total) {
            self.bar.set_length(total);
            self.bar.set_style(bar_style());
        }
        self.bar.set_position(done);
        if let Some(last) = &self.plain {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= PLAIN_EVERY {
                *last = Instant::now();
                eprintln!(
                    "{:>9} {done}/{total} ({:.0}%, {:.0} s)",
                    self.name,
                    100.0 * done as f64 / total.max(1) as f64,
                    self.started.elapsed().as_secs_f64()
                );
            }
        }
    }

    /// A line above the bar (or a plain line): something the user should read.
    pub fn say(&self, line: &str) {
        self.bar
            .suspend(|| eprintln!("{:>9} {}", self.name, self.shown(line)));
    }

    /// Ends the step with its one-line summary and how long it took.
    pub fn finish(self, summary: &str) {
        self.bar.finish_and_clear();
        said(&self.name, &self.what);
        eprintln!(
            "{:>9} {} ({})",
            self.name,
            self.shown(summary),
            seconds(self.started.elapsed())
        );
    }

    /// Ends a step that found nothing to do. Said once per process and
    /// subject, and not after that subject was made: a task that makes sure
    /// of it again (verify does, often) stays quiet.
    pub fn finish_unchanged(self, summary: &str) {
        self.bar.finish_and_clear();
        if !said(&self.name, &self.what) || verbose() {
            eprintln!("{:>9} {}", self.name, self.shown(summary));
        }
    }

    /// Runs `cmd` with stdout and stderr into the log (and to the terminal
    /// with `-v`); on failure, the error holds the log's last lines.
    pub fn run(&self, what: &str, cmd: duct::Expression) -> Result<()> {
        self.run_watched(what, cmd, |_, _| {})
    }

    /// [`Step::run`], with `watch` seeing each output line (to show progress).
    pub fn run_watched(
        &self,
        what: &str,
        cmd: duct::Expression,
        watch: impl Fn(&Step, &str),
    ) -> Result<()> {
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot write {}", self.log.display()))?;
        writeln!(log, "$ {what}")?;
        let reader = cmd
            .stderr_to_stdout()
            .unchecked()
            .reader()
            .with_context(|| format!("cannot start {what}"))?;
        let mut lines = BufReader::new(&reader);
        let mut line = Vec::new();
        while lines.read_until(b'\n', &mut line)? > 0 {
            log.write_all(&line)?;
            let text = String::from_utf8_lossy(&line);
            if verbose() {
                eprint!("{text}");
            } else {
                watch(self, text.trim_end());
            }
            line.clear();
        }
        let status = reader
            .try_wait()?
            .map(|output| output.status)
            .context("the command's output ended before it did")?;
        if !status.success() {
            self.bar.finish_and_clear();
            bail!(
                "{what} failed ({status}){}\nthe last lines of its log:\n{}\nthe whole log: {}",
                errors_in(&self.log),
                tail(&self.log, TAIL),
                self.shown(&self.log.display().to_string())
            );
        }
        Ok(())
    }
}

/// Records that step `name` on `what` has been reported; whether it had been.
fn said(name: &str, what: &str) -> bool {
    static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("{name} {what}");
    let before = said.contains(&key);
    if !before {
        said.push(key);
    }
    before
}

/// A line from a step that has no [`Step`] of its own at hand.
pub fn note(name: &str, line: &str) {
    eprintln!("{name:>9} {line}");
}

/// ninja's `[n/N]` at the start of a line, as the step's bar.
pub fn ninja_progress(step: &Step, line: &str) {
    if let Some((done, total)) = ninja_fraction(line) {
        step.progress(done, total);
    }
}

fn ninja_fraction(line: &str) -> Option<(u64, u64)> {
    let inner = line.strip_prefix('[')?.split(']').next()?;
    let (done, total) = inner.split_once('/')?;
    Some((done.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// cargo's `Compiling NAME vX` lines, as the step's message.
pub fn cargo_progress(step: &Step, line: &str) {
    if let Some(krate) = line.trim_start().strip_prefix("Compiling ") {
        step.set_detail(&format!("compiling {krate}"));
    }
}

/// The last `n` lines of `path`.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The lines of `path` that say what went wrong (`ERROR: ...` from pip,
/// `CMake Error`, `error:`...), the last few, for the error's first line: a
/// long tail of download or compile chatter can push them out of sight.
fn errors_in(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let mut errors: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| says_error(l)) {
        if !errors.contains(&line) {
            errors.push(line);
        }
    }
    match errors.len() {
        0 => String::new(),
        n => format!(": {}", errors[n.saturating_sub(3)..].join(" / ")),
    }
}

/// pip's `ERROR:`, a compiler's `cc: error:` or `x.c:3:5: error:`, rustc's
/// `error[E0308]`, CMake's `CMake Error`, a full disk.
fn says_error(line: &str) -> bool {
    ["ERROR", "error", "CMake Error"]
        .iter()
        .any(|s| line.starts_with(s))
        || [" error:", "fatal error", "No space left"]
            .iter()
            .any(|s| line.contains(s))
}

/// `4.2 s` or `3 min 12 s`.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{} min {:02} s", s as u64 / 60, s as u64 % 60)
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>9.bold} {spinner} {wide_msg} {elapsed}")
        .expect("a valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>9.bold} [{bar:30}] {pos}/{len} {wide_msg} {elapsed}")
        .expect("a valid template")
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ninja_lines_give_progress_and_others_none() {
        assert_eq!(
            ninja_fraction("[12/345] Building C object ggml/src/ggml.c.o"),
            Some((12, 345))
        );
        assert_eq!(ninja_fraction("ninja: no work to do."), None);
        assert_eq!(ninja_fraction("[warning] something"), None);
    }

    #[test]
    fn a_failing_command_leaves_its_output_in_the_log_and_its_tail_in_the_error() {
        let root = tempfile::tempdir().unwrap();
        let project = Project::at(root.path());
        let step = Step::start(&project, "demo", "a failing command").unwrap();
        let script =
            "echo 'ERROR: no space left'; echo 'cc: error: no -fx'; echo 'cc: error: no -fx'; \
                      for i in $(seq 1 40); do echo line $i; done; echo oops >&2; exit 3";
        let err = step
            .run("sh -c ...", duct::cmd!("sh", "-c", script))
            .unwrap_err()
            .to_string();
        // The error line, far above the tail, comes first.
        assert!(
            err.starts_with(
                "sh -c ... failed (exit status: 3): ERROR: no space left / cc: error: no -fx\nthe last"
            ),
            "{err}"
        );
        assert!(err.contains("    line 40\n    oops\n"), "{err}");
        assert!(!err.contains("    line 10\n"), "only the tail: {err}");
        let log = std::fs::read_to_string(root.path().join("target/llorch/logs/demo.log")).unwrap();
        assert!(
            log.starts_with("$ sh -c ...\nERROR: no space left\ncc: error: no -fx\n"),
            "{log}"
        );
        assert!(log.ends_with("line 40\noops\n"), "{log}");
    }
}
