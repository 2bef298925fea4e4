//! verify's docs: every code block of the README and `docs/` is run as
//! written, or marked `illustration` in its info string (```` ```sh
//! illustration ````), and every command line in either kind names only
//! subcommands and flags that exist. `text` blocks are output, never run.
//!
//! - `sh`: each line run with bash from the project root, in order;
//! - `python`: run by the project's Python, `extractor/python` on its path,
//!   after the `sh` blocks (they write `checkpoints/`);
//! - any other language only as an illustration.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use super::ctx::Ctx;
use super::report::Report;
use crate::project::Project;

/// A fenced code block of a page.
#[derive(Debug, PartialEq)]
pub struct Block {
    pub page: String,
    /// The line of its opening fence (1-based).
    pub line: usize,
    pub lang: String,
    pub illustration: bool,
    pub text: String,
}

/// `cli`: the `cargo xtask` command line, whose flags documented commands must use.
pub fn checks(report: &mut Report, ctx: &Ctx<'_>, cli: &clap::Command) {
    report.section("docs: the README's and docs/'s commands and examples");
    let project = ctx.project;
    let t = Instant::now();
    let blocks = match pages(project.root()).and_then(|pages| read_blocks(project.root(), &pages)) {
        Ok(blocks) => blocks,
        Err(err) => {
            report.check("documentation pages read", t, Err(err));
            return;
        }
    };
    report.check(
        "every command line names subcommands and flags that exist",
        t,
        flags_exist(ctx, cli, &blocks),
    );
    let t = Instant::now();
    let (run, marked) = blocks
        .iter()
        .filter(|b| b.lang != "text")
        .partition::<Vec<&Block>, _>(|b| !b.illustration);
    let counted = format!(
        "{} blocks run as written, {} marked as illustrations",
        run.len(),
        marked.len()
    );
    report.check(
        "every code block is run, or marked as an illustration",
        t,
        kinds_known(&blocks).map(|()| counted),
    );
    for block in run {
        let t = Instant::now();
        let name = format!(
            "{}:{} ({}) runs as written",
            block.page, block.line, block.lang
        );
        report.check(&name, t, run_block(project, block));
    }
}

/// README.md and every page of docs/, in a stable order.
fn pages(root: &Path) -> Result<Vec<PathBuf>> {
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .context("docs/ is missing")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    Ok(pages)
}

fn read_blocks(root: &Path, pages: &[PathBuf]) -> Result<Vec<Block>> {
    let mut blocks = Vec::new();
    for page in pages {
        let text = std::fs::read_to_string(page)
            .with_context(|| format!("cannot read {}", page.display()))?;
        let name = page
            .strip_prefix(root)
            .unwrap_or(page)
            .display()
            .to_string();
        blocks.extend(parse_blocks(&name, &text)?);
    }
    Ok(blocks)
}

/// The fenced blocks of a Markdown page (fences may be indented, as in lists).
pub fn parse_blocks(page: &str, text: &str) -> Result<Vec<Block>> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => open = Some((i + 1, indent, info.trim().to_string(), Vec::new())),
            (Some(_), Some("")) => {
                let (line, _, info, body) = open.take().unwrap();
                let mut words = info.split_whitespace();
                let lang = words.next().unwrap_or("").to_string();
                let illustration = words.any(|w| w == "illustration");
                let text = body.join("\n");
                blocks.push(Block {
                    page: page.into(),
                    line,
                    lang,
                    illustration,
                    text,
                });
            }
            (Some((_, indent, _, body)), _) => {
                body.push(line.get(*indent..).unwrap_or(line.trim_start()))
            }
            (None, None) => {}
        }
    }
    if let Some((line, ..)) = open {
        bail!("{page}:{line}: a code block is never closed");
    }
    Ok(blocks)
}

/// Blocks other than output, `sh` and `python` are illustrations by nature:
/// they must say so, so that nobody takes them for tested.
fn kinds_known(blocks: &[Block]) -> Result<()> {
    let unmarked: Vec<String> = blocks
        .iter()
        .filter(|b| !b.illustration && !matches!(b.lang.as_str(), "text" | "sh" | "python"))
        .map(|b| format!("{}:{} ({:?})", b.page, b.line, b.lang))
        .collect();
    ensure!(
        unmarked.is_empty(),
        "blocks neither text, sh nor python, and not marked `illustration`: {}",
        unmarked.join(", ")
    );
    Ok(())
}

/// The command lines of a `sh` block: continuations joined, comments and
/// blank lines dropped.
pub fn command_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => pending.push_str(&format!("{} ", start.trim_end())),
            None => {
                pending.push_str(line);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    if !pending.is_empty() {
        lines.push(pending);
    }
    lines
}

/// Shell words of a line, quotes removed; a `#` word starts a comment.
pub fn words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => (quote, any) = (Some(c), true),
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (None, '#') if word.is_empty() && !any => break,
            (None, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    words
}

/// The flags a documented command line uses that its program does not
/// know, for `cargo xtask` (its subcommand must exist) and for the
/// project's binaries; other programs are not ours to check.
fn flags_exist(ctx: &Ctx<'_>, cli: &clap::Command, blocks: &[Block]) -> Result<String> {
    let mut wrong = Vec::new();
    let mut checked = 0;
    for block in blocks.iter().filter(|b| b.lang == "sh") {
        for line in command_lines(&block.text) {
            let words = words(&line);
            let Some(known) = known_flags(ctx, cli, &words)? else {
                continue;
            };
            checked += 1;
            for problem in unknown_words(&words, &known) {
                wrong.push(format!(
                    "{}:{}: `{line}`: {problem}",
                    block.page, block.line
                ));
            }
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(format!(
        "{checked} command lines of cargo xtask and the project's binaries"
    ))
}

/// What a command line's program takes: (its flags, the extractor's for
/// words after `--`). None for a program that is not ours.
struct Known {
    flags: BTreeSet<String>,
    after_dash_dash: Option<BTreeSet<String>>,
    /// Where the flags start (after `cargo xtask SUB`, or the binary's name).
    from: usize,
}

fn known_flags(ctx: &Ctx<'_>, cli: &clap::Command, words: &[String]) -> Result<Option<Known>> {
    let extractor = || help_flags(&ctx.exe, &[]);
    if words.len() >= 2 && words[0] == "cargo" && words[1] == "xtask" {
        let cmd = cli;
        let Some(name) = words.get(2).filter(|w| !w.starts_with('-')) else {
            return Ok(Some(Known {
                flags: arg_names(cmd),
                after_dash_dash: None,
                from: 2,
            }));
        };
        let Some(sub) = cmd.find_subcommand(name) else {
            return Ok(Some(Known {
                flags: BTreeSet::from([format!("no subcommand `{name}`")]),
                after_dash_dash: None,
                from: usize::MAX,
            }));
        };
        let mut flags = arg_names(sub);
        flags.extend(arg_names(cmd));
        return Ok(Some(Known {
            flags,
            after_dash_dash: Some(extractor()?),
            from: 3,
        }));
    }
    let program = words.first().map(String::as_str).unwrap_or("");
    let Some(binary) = Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with("llorch-checkpoint-"))
    else {
        return Ok(None);
    };
    let exe = ctx.exe.with_file_name(binary);
    ensure!(
        exe.exists(),
        "`{program}`: no such binary of this project ({})",
        exe.display()
    );
    // A subcommand (`llorch-checkpoint-model generate`) has flags of its own.
    let sub: Vec<&str> = words[1..]
        .iter()
        .take_while(|w| !w.starts_with('-'))
        .take(1)
        .map(String::as_str)
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .collect();
    let flags = help_flags(&exe, &sub).or_else(|_| help_flags(&exe, &[]))?;
    Ok(Some(Known {
        flags,
        after_dash_dash: None,
        from: 1,
    }))
}

/// Every long and short name (aliases too) of a clap command's arguments.
fn arg_names(cmd: &clap::Command) -> BTreeSet<String> {
    let mut names = BTreeSet::from(["--help".to_string(), "-h".to_string()]);
    for arg in cmd.get_arguments() {
        names.extend(
            arg.get_long_and_visible_aliases()
                .into_iter()
                .flatten()
                .map(|l| format!("--{l}")),
        );
        names.extend(arg.get_short().map(|s| format!("-{s}")));
    }
    names
}

/// The flags a binary's `--help` lists (long ones, aliases, and short ones
/// at the start of an option's line).
fn help_flags(exe: &Path, sub: &[&str]) -> Result<BTreeSet<String>> {
    let out = std::process::Command::new(exe)
        .args(sub)
        .arg("--help")
        .output()?;
    ensure!(
        out.status.success(),
        "{} {} --help failed",
        exe.display(),
        sub.join(" ")
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names = BTreeSet::from(["--help".to_string(), "-h".to_string()]);
    for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
        let word = word.split('=').next().unwrap_or(word);
        let word = word.split('<').next().unwrap_or(word);
        let long = word.starts_with("--") && word.len() > 2;
        let short =
            word.len() == 2 && word.starts_with('-') && word.as_bytes()[1].is_ascii_alphabetic();
        if long || short {
            names.insert(word.to_string());
        }
    }
    Ok(names)
}

/// The words of a line that look like flags its program does not take.
fn unknown_words(words: &[String], known: &Known) -> Vec<String> {
    if known.from == usize::MAX {
        return known.flags.iter().cloned().collect();
    }
    let mut problems = Vec::new();
    let mut flags = &known.flags;
    for word in words.iter().skip(known.from) {
        if word == "--" {
            match &known.after_dash_dash {
                Some(extractor) => flags = extractor,
                None => break,
            }
            continue;
        }
        // Usage lines: `[--layers all|0,5]`, `-p "..." | -f FILE`.
        let word = word.trim_matches(|c| c == '[' || c == ']' || c == '|');
        if !word.starts_with('-') || word.len() < 2 || word.as_bytes()[1].is_ascii_digit() {
            continue;
        }
        let name = word.split('=').next().unwrap_or(word);
        let long = llorch_checkpoint_spec::flags::expand_llama_short([name.into()]);
        let long = long[0].to_string_lossy();
        if !flags.contains(name) && !flags.contains(long.as_ref()) {
            problems.push(format!("no flag `{name}`"));
        }
    }
    problems
}

/// Runs a block as written: `sh` lines by bash, `python` by the project's Python.
fn run_block(project: &Project, block: &Block) -> Result<String> {
    let root = project.root();
    match block.lang.as_str() {
        "sh" => {
            let lines = command_lines(&block.text);
            for line in &lines {
                let out = duct::cmd!("bash", "-c", line)
                    .dir(root)
                    .stderr_to_stdout()
                    .stdout_capture()
                    .unchecked()
                    .run()?;
                ensure!(
                    out.status.success(),
                    "`{line}` failed ({}):\n{}",
                    out.status,
                    tail(&String::from_utf8_lossy(&out.stdout), 15)
                );
            }
            Ok(format!("{} command(s) ran", lines.len()))
        }
        "python" => {
            let (ok, text) = crate::models::python::run_quietly(
                project,
                &["-c", &block.text],
                root,
                ("PYTHONPATH", &root.join("extractor/python")),
            )?;
            ensure!(ok, "the example failed:\n{}", tail(&text, 15));
            Ok(format!("ran; it printed {} line(s)", text.lines().count()))
        }
        other => bail!("a {other} block cannot be run: mark it `illustration`"),
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_found_with_their_kind_and_mark() {
        let page = "intro\n```sh\ncargo xtask extract\n```\n- a list:\n  ```sh illustration\n  cargo xtask verify \\\n      --full\n  ```\n```text\nout\n```\n";
        let blocks = parse_blocks("p.md", page).unwrap();
        assert_eq!(blocks.len(), 3);
        assert_eq!(
            (
                blocks[0].lang.as_str(),
                blocks[0].illustration,
                blocks[0].line
            ),
            ("sh", false, 2)
        );
        assert!(blocks[1].illustration);
        assert_eq!(
            command_lines(&blocks[1].text),
            ["cargo xtask verify --full"]
        );
        assert_eq!(blocks[2].text, "out");
        let err = parse_blocks("p.md", "```sh\nx\n").unwrap_err();
        assert!(err
            .to_string()
            .contains("p.md:1: a code block is never closed"));
    }

    #[test]
    fn words_drop_quotes_and_comments() {
        assert_eq!(
            words(r#"x -p "Hello world" --tensors '*' # the whole graph"#),
            ["x", "-p", "Hello world", "--tensors", "*"]
        );
        assert_eq!(words("x -p ''"), ["x", "-p", ""]);
    }

    #[test]
    fn a_flag_the_program_lacks_is_named_and_usage_marks_are_not_flags() {
        let known = Known {
            flags: ["--layers", "--flash-attn", "-m"].map(String::from).into(),
            after_dash_dash: Some(["--kv-type"].map(String::from).into()),
            from: 3,
        };
        let line = words("cargo xtask extract [--layers all|0,-1] -fa off -m x -- --kv-type f32");
        assert!(unknown_words(&line, &known).is_empty());
        let line = words("cargo xtask extract --quick -- --layers 0");
        assert_eq!(
            unknown_words(&line, &known),
            ["no flag `--quick`", "no flag `--layers`"]
        );
    }

    #[test]
    fn a_block_of_another_language_must_be_marked() {
        let blocks = parse_blocks(
            "p.md",
            "```rust\nfn main() {}\n```\n```yaml illustration\na: 1\n```\n",
        )
        .unwrap();
        let err = kinds_known(&blocks).unwrap_err();
        assert!(err.to_string().contains("p.md:1 (\"rust\")"), "{err}");
        assert!(kinds_known(&blocks[1..]).is_ok());
    }
}
