//! `llorch-checkpoint-validate DIR --manifest FILE`: checks a run directory's
//! checkpoint files (exist, parse, shape, finite, sha256). Exit 1 on any defect.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use llorch_checkpoint_extractor::check::check_run;

#[derive(Parser)]
#[command(
    version,
    about = "Validate the checkpoint files of an extraction run against its manifest and run.json"
)]
struct Cli {
    /// The run's output directory (holds run.json).
    dir: PathBuf,
    /// The manifest the run used.
    #[arg(long)]
    manifest: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verdicts = match check_run(&cli.dir, &cli.manifest) {
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
    println!("{} files valid, {failed} invalid", verdicts.len() - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
