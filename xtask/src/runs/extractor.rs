//! The extractor as xtask's tasks and checks run it: one typed command
//! line for a run (model, what to capture, prompt or tokens, layers, flash
//! attention, threads, out), and one way to run a command quietly that
//! reports its failure the same way everywhere.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{ensure, Result};
use llorch_checkpoint_spec::record::FlashAttnMode;
use xshell::Shell;

/// One run of the extractor binary at `exe`.
#[derive(Clone, Debug)]
pub struct ExtractorRun {
    exe: OsString,
    args: Vec<OsString>,
    /// `-t`, passed last; None: whatever the other arguments say.
    threads: Option<u32>,
    /// The environment a backend's libraries need ([`crate::llama_cpp::build::backend_env`]).
    env: Vec<(OsString, OsString)>,
}

impl ExtractorRun {
    /// `exe -m model --out out`, on two threads unless told otherwise (the
    /// machines CI runs on have two cores).
    pub fn new(exe: &Path, model: &Path, out: &Path) -> ExtractorRun {
        ExtractorRun {
            exe: exe.into(),
            args: Vec::new(),
            threads: Some(2),
            env: Vec::new(),
        }
        .flag("-m", model)
        .flag("--out", out)
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<T: Into<OsString>>(mut self, args: impl IntoIterator<Item = T>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    fn flag(self, name: &str, value: impl Into<OsString>) -> Self {
        self.arg(name).arg(value)
    }

    pub fn manifest(self, manifest: &Path) -> Self {
        self.flag("--manifest", manifest)
    }

    pub fn tensors(self, glob: &str) -> Self {
        self.flag("--tensors", glob)
    }

    pub fn prompt(self, text: &str) -> Self {
        self.flag("-p", text)
    }

    pub fn tokens(self, ids: &[i32]) -> Self {
        let ids: Vec<String> = ids.iter().map(i32::to_string).collect();
        self.token_list(&ids.join(","))
    }

    /// Token ids as a person wrote them (`1,2,3`); the extractor checks them.
    pub fn token_list(self, ids: &str) -> Self {
        self.flag("--tokens", ids)
    }

    pub fn prompt_file(self, file: &Path) -> Self {
        self.flag("--file", file)
    }

    /// One argument, so that `-1` is not taken for a flag.
    pub fn layers(self, layers: &str) -> Self {
        self.arg(format!("--layers={layers}"))
    }

    /// Tokens generated after the prompt (`-n`).
    pub fn generate(self, n: u32) -> Self {
        self.flag("-n", n.to_string())
    }

    pub fn threads(mut self, n: u32) -> Self {
        self.threads = Some(n);
        self
    }

    /// No `-t` of its own: a user's command passes the user's flags, and
    /// without one llama.cpp's default holds.
    pub fn user_threads(mut self) -> Self {
        self.threads = None;
        self
    }

    pub fn flash_attn(self, mode: FlashAttnMode) -> Self {
        self.flag("--flash-attn", mode.name())
    }

    /// Each pass decoded `n` times each way: the steady-state figures.
    pub fn repeat(self, n: usize) -> Self {
        self.flag("--repeat", n.to_string())
    }

    /// Runs on the libraries and devices `env` names (a backend other than the linked one).
    pub fn env(mut self, env: Vec<(OsString, OsString)>) -> Self {
        self.env.extend(env);
        self
    }

    pub fn no_extract(self) -> Self {
        self.arg("--no-extract")
    }

    fn all_args(&self) -> Vec<OsString> {
        let threads = self
            .threads
            .iter()
            .flat_map(|n| ["-t".into(), n.to_string().into()]);
        self.args.iter().cloned().chain(threads).collect()
    }

    /// The command line, to run with xshell.
    pub fn cmd<'a>(&self, sh: &'a Shell) -> xshell::Cmd<'a> {
        let mut cmd = sh.cmd(&self.exe).args(self.all_args());
        for (name, value) in &self.env {
            cmd = cmd.env(name, value);
        }
        cmd
    }

    /// The command line, for a [`crate::step::Step`] to run and log.
    pub fn expression(&self) -> duct::Expression {
        let mut expression = duct::cmd(&self.exe, self.all_args());
        for (name, value) in &self.env {
            expression = expression.env(name, value);
        }
        expression
    }

    /// Runs it quietly; a failure says so with what the extractor printed.
    pub fn run(&self, sh: &Shell) -> Result<()> {
        quietly(self.cmd(sh), "the extractor failed")
    }
}

/// Runs `cmd` with its output kept; a failure is `what`, then what it
/// printed on stderr.
pub fn quietly(cmd: xshell::Cmd<'_>, what: &str) -> Result<()> {
    let out = cmd.quiet().ignore_status().output()?;
    ensure!(
        out.status.success(),
        "{what}:\n{}",
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_reads_as_its_command_line() {
        let run = ExtractorRun::new(Path::new("x"), Path::new("m.gguf"), Path::new("out"))
            .manifest(Path::new("g.yaml"))
            .layers("-1")
            .prompt("Hello world")
            .tokens(&[15496, 995])
            .generate(0)
            .flash_attn(FlashAttnMode::Off)
            .threads(1)
            .no_extract();
        let sh = Shell::new().unwrap();
        assert_eq!(
            run.cmd(&sh).to_string(),
            "x -m m.gguf --out out --manifest g.yaml --layers=-1 -p \"Hello world\" \
             --tokens 15496,995 -n 0 --flash-attn off --no-extract -t 1"
        );
    }

    #[test]
    fn a_failure_says_what_failed_with_its_stderr() {
        let sh = Shell::new().unwrap();
        let err = quietly(
            sh.cmd("sh").args(["-c", "echo broken >&2; exit 3"]),
            "the thing failed",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "the thing failed:\nbroken");
        assert!(quietly(sh.cmd("true"), "never").is_ok());
    }
}
