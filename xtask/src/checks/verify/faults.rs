//! verify's faults: what the extractor does when the disk fills up in the
//! middle of a capture larger than its buffer (a 16 MB tmpfs mounted in a
//! private mount namespace with `unshare`, where the machine lets us: as
//! root, or as a user with user namespaces), and when runs into one
//! directory are killed at random moments (`crate::checks::kills`).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::ctx::Ctx;
use super::report::{Checked, Report};
use crate::checks::kills::Campaign;
use crate::models::prompts::words_of_english;

/// verify's kill campaigns: a fixed, seeded budget per tier; `cargo xtask
/// kills --runs N` goes on.
pub const KILLS_FAST: usize = 40;
pub const KILLS_FULL: usize = 200;
const KILL_SEED: u64 = 1;

pub fn checks(report: &mut Report, ctx: &Ctx<'_>, kills: usize) {
    report.section("faults");
    let t = Instant::now();
    report.record(
        "a full disk (16 MB tmpfs) mid-capture of the whole graph of a 900-token prompt ends the run at once, named, leaving nothing",
        t,
        full_disk(ctx),
    );
    let t = Instant::now();
    report.check(
        &format!("{kills} runs into one directory killed at random moments (seed {KILL_SEED}): always one complete run"),
        t,
        kill_campaign(ctx, kills),
    );
}

fn kill_campaign(ctx: &Ctx<'_>, runs: usize) -> Result<String> {
    let campaign = Campaign::prepare(
        ctx.project,
        ctx.model.clone(),
        ctx.manifest.clone(),
        &ctx.work.join("kills"),
    )?;
    let tally = campaign.run(ctx.project, runs, KILL_SEED)?;
    ensure!(
        tally.broken.is_empty(),
        "{}\n{}",
        tally.summary(),
        tally.broken.join("\n")
    );
    Ok(tally.summary())
}

/// Mounts the tmpfs on `$1`, runs the extractor into it (the whole graph of
/// a 950-token prompt: over a GB through a 64 MB buffer), then says how long
/// the run took and lists what is left there.
const SCRIPT: &str = r#"mount -t tmpfs -o size=16m tmpfs "$1" || exit 97
echo MOUNTED
shift
out="$1"; shift
start=$(date +%s%N)
"$@" --out "$out/run"
code=$?
echo "EXIT $code $(( ($(date +%s%N) - start) / 1000000 ))"
ls -A "$out"
"#;

fn full_disk(ctx: &Ctx<'_>) -> Result<Checked> {
    let mnt = ctx.work.join("full-disk");
    let prompt = words_of_english(820);
    std::fs::create_dir_all(&mnt)?;
    let args = [
        "-m".as_ref(),
        ctx.model.as_os_str(),
        "--tensors".as_ref(),
        "*".as_ref(),
        "--buffer-mb".as_ref(),
        "64".as_ref(),
        "-p".as_ref(),
        prompt.as_ref(),
        "-n".as_ref(),
        "0".as_ref(),
        "-t".as_ref(),
        "2".as_ref(),
    ];
    let mut refusals = Vec::new();
    for namespace in [&["-m"][..], &["-r", "-m"][..]] {
        let out = Command::new("unshare")
            .args(namespace)
            .args(["sh", "-c", SCRIPT, "sh"])
            .arg(&mnt)
            .arg(&mnt)
            .arg(&ctx.exe)
            .args(args)
            .output();
        match out {
            Ok(out) if String::from_utf8_lossy(&out.stdout).starts_with("MOUNTED") => {
                return judge(&out, &mnt).map(Checked::Pass);
            }
            Ok(out) => refusals.push(format!(
                "unshare {}: {}",
                namespace.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => refusals.push(format!("unshare: {e}")),
        }
    }
    Ok(Checked::Skipped(format!(
        "cannot mount a tmpfs in a private mount namespace here ({})",
        refusals.join("; ")
    )))
}

/// The run must fail with exit code 1, name the disk's error and the
/// output directory, and leave nothing on the disk.
fn judge(out: &std::process::Output, mnt: &Path) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("EXIT "));
    let exit = lines.next().context("the script did not finish")?;
    let left: Vec<&str> = lines.collect();
    let (code, ms) = exit[5..].split_once(' ').context("EXIT CODE MS")?;
    ensure!(
        code == "1",
        "the extractor ended with {code}, not 1:\n{stderr}"
    );
    let tokens = stderr
        .lines()
        .find_map(|l| {
            l.split_once("\" -> ")?
                .1
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .context("the run did not say its prompt's length")?;
    ensure!(tokens >= 900, "the prompt is only {tokens} tokens");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    ensure!(
        stderr.contains("No space left on device") && error.contains(&mnt.display().to_string()),
        "the error does not name the full disk and the directory:\n{stderr}"
    );
    ensure!(left.is_empty(), "left on the full disk: {left:?}");
    Ok(format!(
        "{tokens}-token prompt, --tensors '*', --buffer-mb 64: exit 1 after {:.1} s with `{error}`; nothing left on the disk",
        ms.parse::<f64>()? / 1e3
    ))
}
