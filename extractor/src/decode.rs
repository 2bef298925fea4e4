//! The decode passes of a run: the prompt (whole, or a token at a time with
//! `--sequential`) and each generated token, captured through the eval
//! callback while a writer thread stores the previous pass; then
//! `--repeat`'s timing passes, with and without capture, which keep nothing.

use std::time::Instant;

use anyhow::Result;

use crate::capture::{Capture, Reading, Selection};
use crate::ffi::llama::{Context, ContextParams, KvType, Token};
use crate::handoff;
use crate::load::Loaded;
use crate::manifest::Symbols;
use crate::output::Output;
use crate::record::{self, CheckpointRecord, Steady};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Steps {
    /// Capture the prompt pass only.
    Prompt,
    /// Capture every pass: the prompt and each generated token's.
    All,
}

/// How a run decodes: the settings `passes` reads.
#[derive(Clone, Debug)]
pub struct DecodeOptions {
    pub threads: i32,
    /// `--copy-threads`, at most `threads`; `None`: `threads` on ggml's
    /// OpenMP team, else 1 (see [`crate::ffi::team`]).
    pub copy_threads: Option<usize>,
    pub kv_type: KvType,
    /// `-n`: tokens to generate (greedy) and feed back after the prompt.
    pub n_predict: usize,
    /// `--steps`: which passes are captured.
    pub steps: Steps,
    /// `--sequential`: the prompt one token per pass, each pass captured.
    pub sequential: bool,
    /// `--repeat N`: steady-state timing passes after the run.
    pub repeat: usize,
    /// `--buffer-mb`: captured data held in memory before the writer must catch up.
    pub buffer_mb: usize,
}

impl DecodeOptions {
    /// The threads a large node's copy takes: `--copy-threads`, or every
    /// compute thread where ggml's OpenMP team copies, else the callback's alone.
    pub fn copy_threads(&self) -> usize {
        let compute = self.threads.max(1) as usize;
        let openmp = crate::ffi::team::on_openmp();
        let threads = self
            .copy_threads
            .unwrap_or(if openmp { compute } else { 1 })
            .clamp(1, compute);
        log::info!(
            "large copies on {threads} thread(s): {}",
            match openmp {
                true => "ggml's OpenMP team",
                false if self.copy_threads.is_some() => "threads of our own (--copy-threads; no OpenMP runtime in the process)",
                false => "the callback's thread (no OpenMP runtime in the process; --copy-threads N adds threads of our own)",
            }
        );
        threads
    }

    /// The passes a prompt of `n_tokens` takes: one, or one per token with `--sequential`.
    pub fn prompt_passes(&self, n_tokens: usize) -> usize {
        if self.sequential {
            n_tokens
        } else {
            1
        }
    }

    /// The most tokens one decode takes: the whole prompt, unless every pass
    /// is a single token (`--sequential` without `--repeat`'s whole-prompt passes).
    pub fn largest_pass(&self, n_tokens: usize) -> usize {
        match self.sequential && self.repeat == 0 {
            true => 1,
            false => n_tokens.max(1),
        }
    }
}

#[derive(Default)]
pub(crate) struct Decoded {
    pub(crate) decode_ms: Vec<f64>,
    pub(crate) steady: Option<Steady>,
    /// Last-row logits of every pass, concatenated.
    pub(crate) logits: Vec<f32>,
    /// Greedy next token after every pass.
    pub(crate) next: Vec<Token>,
}

/// The prompt pass, then one pass per generated token, each captured (when
/// asked) by the eval callback; the writer thread stages a pass's files
/// between passes. Then `--repeat`'s timing passes, which keep nothing.
pub(crate) fn passes(
    opts: &DecodeOptions,
    loaded: &Loaded,
    selection: Option<Selection>,
    output: &Output,
    flash_attn: bool,
    every_row: bool,
) -> Result<(Decoded, (Vec<CheckpointRecord>, f64))> {
    let (outbox, inbox) = handoff::channel(opts.buffer_mb << 20);
    let writer = output.spawn_writer(inbox);
    let capture = selection.map(|s| Capture::new(s, outbox, flash_attn, opts.copy_threads()));
    let params = ContextParams {
        n_ctx: loaded.n_ctx,
        // Sized by the largest pass, not the context: the scheduler reserves
        // its buffers (KQ: n_ctx x n_batch x n_head floats) for this many tokens.
        n_batch: opts.largest_pass(loaded.tokens.len()) as u32,
        n_threads: opts.threads,
        kv_type: opts.kv_type,
        flash_attn: flash_attn.into(),
    };
    let decoded = (|| -> Result<Decoded> {
        let mut ctx = Context::new(&loaded.model, &params, capture)?;
        let mut decoded = Decoded::default();
        let prompt_passes = opts.prompt_passes(loaded.tokens.len());
        let mut n_past = 0usize;
        for step in 0..prompt_passes + opts.n_predict {
            let input: Vec<Token> = match (step < prompt_passes, opts.sequential) {
                (true, true) => vec![loaded.tokens[step]],
                (true, false) => loaded.tokens.clone(),
                (false, _) => vec![*decoded.next.last().expect("a pass ran before")],
            };
            let captured = step < prompt_passes || opts.steps == Steps::All;
            let symbols = Symbols {
                n_tokens: input.len() as i64,
                n_kv: (n_past + input.len()) as i64,
                ..loaded.base
            };
            let ms = timed_pass(
                &mut ctx,
                &input,
                n_past,
                every_row,
                captured.then_some((step, &symbols, Reading::Keep)),
            )?;
            decoded.decode_ms.push(ms);
            let logits = ctx.logits(-1)?;
            decoded.next.push(argmax(logits) as Token);
            decoded.logits.extend_from_slice(logits);
            n_past += input.len();
        }
        if let Some(c) = ctx.observer_mut() {
            c.close();
        }
        if opts.repeat > 0 {
            decoded.steady = Some(steady_state(opts, loaded, &params, &mut ctx, every_row)?);
        }
        Ok(decoded)
    })();
    // The context (and with it the capture's sender) is gone: the writer drains and stops.
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    // A writer that failed (a full disk) stops the decode too: its error is
    // the cause, and the one reported.
    let written = written?;
    Ok((decoded?, written))
}

/// One decode, timed; `capture` arms the observer for it (step, symbols,
/// reading); `every_row`: the prompt pass's logits at every position.
fn timed_pass(
    ctx: &mut Context<'_, Capture>,
    tokens: &[Token],
    n_past: usize,
    every_row: bool,
    capture: Option<(usize, &Symbols, Reading)>,
) -> Result<f64> {
    if let (Some(c), Some((step, symbols, reading))) = (ctx.observer_mut(), capture) {
        c.begin_pass(step, symbols, reading)?;
    }
    #[cfg(feature = "test-hooks")]
    crate::hooks::phase("decode");
    let started = Instant::now();
    ctx.decode(tokens, n_past as i32, every_row && n_past == 0)?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if let (Some(c), Some(_)) = (ctx.observer_mut(), capture) {
        c.end_pass()?;
    }
    Ok(ms)
}

/// `--repeat N`: the prompt again N times each way on a cleared cache,
/// alternating a context with no eval callback and the capturing one.
fn steady_state(
    opts: &DecodeOptions,
    loaded: &Loaded,
    params: &ContextParams,
    capturing: &mut Context<'_, Capture>,
    every_row: bool,
) -> Result<Steady> {
    let mut plain = Context::<Capture>::new(&loaded.model, params, None)?;
    let n = loaded.tokens.len() as i64;
    let symbols = Symbols {
        n_tokens: n,
        n_kv: n,
        ..loaded.base
    };
    let mut steady = Steady::default();
    for _ in 0..opts.repeat {
        plain.clear_memory();
        let ms = timed_pass(&mut plain, &loaded.tokens, 0, every_row, None)?;
        steady.without_ms.push(ms);
        // The nodes asked for but not read, then read too.
        for (reading, times) in [
            (Reading::AskOnly, &mut steady.asked_ms),
            (Reading::Discard, &mut steady.with_ms),
        ] {
            capturing.clear_memory();
            let pass = Some((0, &symbols, reading));
            times.push(timed_pass(capturing, &loaded.tokens, 0, every_row, pass)?);
        }
    }
    log::info!(
        "  steady state ({} alternating passes each): prompt decode median {:.1} ms with capture, {:.1} ms without: ratio {:.3} \
         ({:.1} ms with the nodes asked for but not read)",
        opts.repeat,
        record::median(&steady.with_ms),
        record::median(&steady.without_ms),
        steady.ratio(),
        record::median(&steady.asked_ms),
    );
    Ok(steady)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}
