//! What the binaries share: logging set-up and how an error ends a run.

use std::io::Write;
use std::process::ExitCode;

/// Our messages at info level, plain; llama.cpp's own log only with `verbose`.
pub fn init_logging(verbose: bool) {
    let llama_level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Off
    };
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .filter_module("llama.cpp", llama_level)
        .format(|buf, record| writeln!(buf, "{}", record.args()))
        .init();
}

/// Prints an error and its causes (no backtrace: the messages say what to do).
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
