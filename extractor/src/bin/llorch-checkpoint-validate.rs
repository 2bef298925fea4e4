//! `llorch-checkpoint-validate DIR [--manifest FILE]`: checks that a run
//! directory holds exactly one complete run (every file run.json lists, with
//! its sha256, and nothing else) and, with the manifest, each checkpoint's
//! file (parses, shape, finite). Exit 1 on any defect.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use llorch_checkpoint_extractor::check::{check_complete, check_run, FileVerdict};

#[derive(Parser)]
#[command(
    version,
    about = "Validate an extraction run: exactly the files its run.json lists, with their sha256, and \
             (with --manifest) each checkpoint's shape and values"
)]
struct Cli {
    /// The run's output directory (holds run.json).
    dir: PathBuf,
    /// The manifest the run used: also check each checkpoint's shape (as the run
    /// expanded it) and that it holds no NaN or Inf.
    #[arg(long)]
    manifest: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Each file's own defects first (what a reader of the first FAIL wants), then the whole.
    let verdicts = (|| -> anyhow::Result<Vec<FileVerdict>> {
        let mut all = match &cli.manifest {
            Some(manifest) => check_run(&cli.dir, manifest)?,
            None => Vec::new(),
        };
        all.extend(check_complete(&cli.dir)?);
        Ok(all)
    })();
    let verdicts = match verdicts {
        Ok(v) => v,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for v in &verdicts {
        match &v.verdict {
            Ok(what) => println!("ok    {}: {what}", v.file),
            Err(defect) => {
                failed += 1;
                println!("FAIL  {defect}");
            }
        }
    }
    println!("{} checks passed, {failed} failed", verdicts.len() - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
