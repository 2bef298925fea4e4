//! verify's faults: what the extractor does when the disk fills up. The
//! disk is a 2 MB tmpfs mounted in a private mount namespace (`unshare`),
//! where the machine lets us: as root, or as a user with user namespaces.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::ctx::Ctx;
use super::report::{Checked, Report};
use crate::prompts::PERF_PROMPT;

pub fn checks(report: &mut Report, ctx: &Ctx<'_>) {
    report.section("faults");
    let t = Instant::now();
    report.record(
        "a full disk (2 MB tmpfs) is named and leaves no file",
        t,
        full_disk(ctx),
    );
}

/// Mounts the tmpfs on `$1`, runs the extractor into it (every layer of the
/// default model: 43 MB), then lists what is left there.
const SCRIPT: &str = r#"mount -t tmpfs -o size=2m tmpfs "$1" || exit 97
echo MOUNTED
shift
out="$1"; shift
"$@" --out "$out/run"
echo "EXIT $?"
ls -A "$out"
"#;

fn full_disk(ctx: &Ctx<'_>) -> Result<Checked> {
    let mnt = ctx.work.join("full-disk");
    std::fs::create_dir_all(&mnt)?;
    let args = [
        "-m".as_ref(),
        ctx.model.as_os_str(),
        "--manifest".as_ref(),
        ctx.manifest.as_os_str(),
        "--layers=all".as_ref(),
        "-p".as_ref(),
        PERF_PROMPT.as_ref(),
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
    let code = lines.next().context("the script did not finish")?;
    let left: Vec<&str> = lines.collect();
    ensure!(
        code == "EXIT 1",
        "the extractor ended with {code}, not 1:\n{stderr}"
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    ensure!(
        stderr.contains("No space left on device") && error.contains(&mnt.display().to_string()),
        "the error does not name the full disk and the directory:\n{stderr}"
    );
    ensure!(left.is_empty(), "left on the full disk: {left:?}");
    Ok(format!("{error}; nothing left on the disk"))
}
