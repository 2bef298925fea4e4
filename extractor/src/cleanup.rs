//! A run that cannot finish leaves nothing: not on an error (the output's
//! drop), not when ggml aborts (an RPC server gone, an assertion), not on
//! SIGINT, SIGTERM or SIGHUP. The last two cannot unwind through llama.cpp's
//! compute, so they remove the staged files from their own hook and end the
//! process at once (after a swap in progress, if one is). The lock goes with
//! the process; after a SIGKILL the next run beside the directory removes
//! what was staged.

use anyhow::{Context, Result};

use crate::ffi::process;
use crate::rundir::Abandon;

/// Exit code after SIGINT, SIGTERM or SIGHUP (the shell's 128 + SIGINT).
pub const INTERRUPTED: i32 = 130;

/// Arms both hooks for this run's output; `rpc_servers` (`--rpc`) are the
/// ones to name when ggml aborts.
pub fn install(rpc_servers: &[String], abandon: Abandon) -> Result<()> {
    let on_signal = abandon.clone();
    ctrlc::set_handler(move || {
        match on_signal.abandon() {
            true => eprintln!(
                "error: interrupted (SIGINT, SIGTERM or SIGHUP) after the run was published; the output directory holds it"
            ),
            false => eprintln!(
                "error: interrupted (SIGINT, SIGTERM or SIGHUP); nothing was written, the output directory is as it was"
            ),
        }
        process::exit_now(INTERRUPTED)
    })
    .context("cannot install the SIGINT/SIGTERM handler")?;

    let servers = rpc_servers.to_vec();
    process::on_ggml_abort(move |message| {
        abandon.abandon();
        if servers.is_empty() {
            eprintln!("error: llama.cpp aborted (ggml: {message}); nothing was written");
            return;
        }
        let gone: Vec<&str> = servers
            .iter()
            .filter(|s| crate::preflight::reachable(s).is_err())
            .map(String::as_str)
            .collect();
        let who = match gone.is_empty() {
            true => format!("one of {}", servers.join(", ")),
            false => gone.join(", "),
        };
        eprintln!(
            "error: the RPC server {who} stopped answering (ggml: {message}); nothing was written"
        );
    });
    Ok(())
}
