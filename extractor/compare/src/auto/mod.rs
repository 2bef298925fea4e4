//! A comparison with no manifest written by hand: llama.cpp's whole graph
//! and the reference's whole pass over the prompt compared, one run of
//! each, paired by value ([`llorch_checkpoint_matching`]), each pair judged
//! by the tolerance of the weights' precision
//! ([`llorch_checkpoint_matching::precision`]), never by one measured on the
//! run itself. The pairs are also written as a manifest, for a person to
//! review and reuse; the comparison does not read it back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use llorch_checkpoint_spec::files::write_atomically;
use llorch_checkpoint_spec::manifest::{Manifest, Symbols, Tolerance};
use llorch_checkpoint_spec::record::RunRecord;

use crate::compare::{report, Options, Outcome};
use crate::reference::build_everything;
use crate::sides::{Extractor, Prompt, Reference};
use llorch_checkpoint_matching::draft::{self, Drafted, Words};
use llorch_checkpoint_matching::manifest_text::{self, Role};
use llorch_checkpoint_matching::precision::Precision;
use llorch_checkpoint_matching::{self as matching, against};
use llorch_checkpoint_report::findings::{F32, F64, F64_GELU, F64_GGML, F64_REPLAY};
use llorch_checkpoint_spec::format::read_values;

mod budget;
mod keep;
mod matched;
mod paired;
pub mod replay;
mod said;
pub use matched::Matched;
pub use said::{figures, node_divergence};
use said::{matching_json, summary};

/// What the automatic comparison needs beyond [`Options`].
pub struct Auto {
    /// Also write the manifest with tolerances measured on this comparison, for a person to review.
    pub draft: Option<PathBuf>,
    /// A manifest written by hand for this architecture: the pairs are
    /// checked against each of its checkpoints, in every layer.
    pub against: Option<PathBuf>,
}

/// The fewest tokens a drafted manifest is written from: fewer leave
/// dimensions that read as `n_tokens` by chance, and little to pair by.
const DRAFT_MIN_TOKENS: i64 = 11;

/// Why a manifest drafted from a pass of `s.n_tokens` tokens would misname
/// a dimension (its shapes write a dimension equal to the token count as
/// `n_tokens`), if it would.
fn ambiguous(s: &Symbols) -> Option<String> {
    let n = s.n_tokens;
    if n < DRAFT_MIN_TOKENS {
        return Some(format!(
            "the prompt gives {n} tokens, fewer than {DRAFT_MIN_TOKENS} (a dimension of {n} would read as `n_tokens`, and few tokens pair few nodes)"
        ));
    }
    let named = [
        ("n_embd", s.n_embd),
        ("n_head", s.n_head),
        ("n_head_kv", s.n_head_kv),
        ("head_dim", s.head_dim),
        ("head_dim/2", s.head_dim / 2),
        ("n_embd_gqa", s.n_embd_gqa),
        ("n_ff", s.n_ff),
        ("n_vocab", s.n_vocab),
    ];
    let (name, _) = named.into_iter().find(|&(_, v)| v == n)?;
    Some(format!(
        "the prompt gives {n} tokens, as many as {name} ({name} would read as `n_tokens`)"
    ))
}

/// The reference variants the comparison reads: f32 and f64, and the f64
/// ones that emulate ggml where attribution asks for them.
fn variants(opts: &Options) -> Vec<&'static str> {
    let mut variants = match opts.attribution {
        true => vec![F32, F64, F64_GELU, F64_GGML],
        false => vec![F32, F64],
    };
    if opts.replay_layers {
        variants.push(F64_REPLAY);
    }
    variants
}

/// Runs each side once over the prompt (llama.cpp's every node, the
/// reference's every tensor), pairs them, and writes the pairs as a
/// manifest (tolerance: the precision's) to `out/auto/manifest.yaml`.
/// `drafting`: the pass must make an unambiguous draft, checked before the
/// reference runs.
pub fn run_and_match(
    extractor: &dyn Extractor,
    reference: &dyn Reference,
    opts: &Options,
    drafting: bool,
) -> Result<Matched> {
    let dir = opts.out.join("auto");
    let (graph_run, record, nodes, ambiguous) = graph(extractor, opts, drafting, &dir)?;
    let everything = dir.join("reference");
    let layer_inputs = match opts.replay_layers {
        true => replay::write_layer_inputs(
            &nodes,
            record.model.n_layer.max(0) as u32,
            &dir.join("layer-inputs"),
        )?,
        false => BTreeMap::new(),
    };
    let info = build_everything(
        reference,
        &opts.reference_model(),
        &record.tokens,
        &everything,
        &variants(opts),
        layer_inputs,
    )?;
    budget::check_reference(&graph_run, &everything, opts.max_disk, &dir)?;
    let variant = [F64, F32]
        .into_iter()
        .find(|v| info.variants.iter().any(|c| c == v))
        .unwrap_or(F32);
    let tensors = matching::read_tensors(&everything.join(variant))?;
    let precision = Precision::of(&record.model.weights);
    let started = std::time::Instant::now();
    let matching = matching::pair_all(
        &nodes,
        &tensors,
        &record.symbols,
        &matching::Options::new(precision),
    );
    eprintln!(
        "compare: {} nodes and {} tensors paired in {:.1} s",
        nodes.len(),
        tensors.len(),
        started.elapsed().as_secs_f64()
    );
    let words = Words {
        symbols: &record.symbols,
    };
    let (drafted, skipped) = draft::draft(&matching, &nodes, &tensors, &words);
    anyhow::ensure!(
        !drafted.is_empty(),
        "no llama.cpp node of {} could be paired with the reference's tensors: is the reference the model the GGUF holds?",
        opts.model.display()
    );
    let roles = manifest_text::roles(&drafted);
    let m = Matched {
        graph_run,
        record,
        nodes,
        everything,
        tensors,
        info,
        variant: variant.into(),
        precision,
        matching,
        drafted,
        skipped,
        roles,
        manifest: dir.join("manifest.yaml"),
        ambiguous,
    };
    write_atomically(&m.manifest, plain_draft(&m).as_bytes())?;
    Ok(m)
}

/// llama.cpp's whole graph over the prompt (or `--run`'s), within the disk
/// budget, read back; its run directory, record, nodes, and why a draft
/// from it would misname a dimension, if it would.
fn graph(
    extractor: &dyn Extractor,
    opts: &Options,
    drafting: bool,
    dir: &Path,
) -> Result<(PathBuf, RunRecord, Vec<matching::Node>, Option<String>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // `--run`: a graph run made before.
    let graph_run = opts.run.clone().unwrap_or_else(|| dir.join("llama"));
    if opts.run.is_none() {
        extractor.extract_graph(&opts.model, Prompt::Text(&opts.prompt), &graph_run, None)?;
    }
    budget::check_graph(&graph_run, &variants(opts), opts.max_disk, dir)?;
    let (record, nodes) = matching::read_nodes(&graph_run)?;
    let ambiguous = ambiguous(&record.symbols);
    if let (true, Some(why)) = (drafting, &ambiguous) {
        anyhow::bail!(
            "--draft-manifest: {why}: give a --prompt of {DRAFT_MIN_TOKENS} tokens or more (a prime \
             number of them is never a product of dimensions), or leave out --draft-manifest"
        );
    }
    if let Some(candidate) = &opts.candidate {
        crate::candidate::check_tokens(candidate, &record.tokens)?;
    }
    Ok((graph_run, record, nodes, ambiguous))
}

/// The pairs as a manifest, every tolerance the precision's.
fn plain_draft(m: &Matched) -> String {
    let mut header = format!(
        "Made by the matcher for this comparison ({} pairs of {} llama.cpp nodes and {} reference tensors,\n\
         {}-token prompt); tolerance from the weights' precision ({}).",
        m.matching.pairs.len(),
        m.nodes.len(),
        m.tensors.len(),
        m.record.tokens.len(),
        m.precision.name()
    );
    if let Some(why) = &m.ambiguous {
        header +=
            &format!("\nRead its shapes with care before you reuse it with another prompt: {why}.");
    }
    let tolerance = m.precision.tolerance();
    manifest_text::manifest_text(
        &m.record.model.architecture,
        &header,
        &m.drafted,
        &m.roles,
        &all_layers(&m.record),
        &|_| tolerance,
        &|_| None,
    )
}

fn all_layers(record: &RunRecord) -> Vec<u32> {
    (0..record.model.n_layer.max(0) as u32).collect()
}

/// Both sides run once and paired, then every pair of `opts`'s layers
/// compared; the outcome's text gains the matching's summary and, where a
/// checkpoint fails, the first diverging node and the unpaired nodes just
/// before it.
pub fn compare_auto(
    extractor: &dyn Extractor,
    reference: &dyn Reference,
    opts: &Options,
    auto: &Auto,
) -> Result<(Outcome, Matched)> {
    let m = run_and_match(extractor, reference, opts, auto.draft.is_some())?;
    let opts = Options {
        manifest: m.manifest.clone(),
        ..opts.clone()
    };
    let scored = paired::score(&m, &opts)?;
    let mut outcome = report(extractor, &opts, scored)?;
    let mut text = summary(&m);
    let _ = writeln!(
        text,
        "tolerance of every checkpoint, from {}: {} (atol, rtol, nmse; --tolerance overrides)",
        m.precision.name(),
        m.precision.tolerance().text()
    );
    text.push_str(&outcome.text);
    if let Some(line) = node_divergence(&m, &outcome) {
        let _ = writeln!(text, "{line}");
    }
    if opts.replay_layers {
        // The verdict is the local error's: what each layer adds to llama.cpp's own input.
        let layers = replay::layer_errors(&outcome.rows);
        text.push_str(&replay::text(&layers));
        let picture = opts.out.join("layers.svg");
        replay::write_picture(&layers, &m.record.model.architecture, &picture)?;
        let _ = writeln!(text, "per-layer picture: {}", picture.display());
        outcome.failure = replay::local_failure(&layers, outcome.failure.take());
    }
    let _ = writeln!(text, "in short: {}", figures(&m, &outcome));
    outcome.text = text;
    write_atomically(
        &opts.out.join("matching.json"),
        &serde_json::to_vec_pretty(&matching_json(&m))?,
    )?;
    if let Some(path) = &auto.against {
        let rows = check_against(&m, path)?;
        outcome
            .text
            .push_str(&against::text(&rows, &path.display().to_string()));
        outcome.against = Some(rows);
    }
    if let Some(path) = &auto.draft {
        let with = with_flash_attn(extractor, &m, &opts)?;
        let text = reviewed_draft(&m, &outcome, &opts, with.as_deref())?;
        write_atomically(path, text.as_bytes())
            .with_context(|| format!("cannot write the drafted manifest {}", path.display()))?;
        let _ = writeln!(outcome.text, "drafted manifest: {}", path.display());
    }
    if opts.keep_failing {
        let (kept, freed) = keep::drop_passing(
            &opts.out,
            &outcome.entries,
            &outcome.rows,
            opts.run.is_some(),
        )?;
        let _ = writeln!(
            outcome.text,
            "--keep failing: the files of {kept} of {} checkpoints kept (those over tolerance, and the first and last layer's), \
             {:.2} GB removed; report.json holds every checkpoint's figures",
            outcome.entries.len(),
            freed as f64 / 1e9
        );
    }
    Ok((outcome, m))
}

/// Each checkpoint of the hand-written manifest at `path`, in every layer,
/// against the pairs.
fn check_against(m: &Matched, path: &std::path::Path) -> Result<Vec<against::Row>> {
    let layers = all_layers(&m.record);
    let manifest = Manifest::load_with_layers(path, Some(&layers))?;
    let manifest = match m.record.flash_attn.used {
        Some(true) => manifest.under_flash_attn().0,
        _ => manifest,
    };
    Ok(against::against(
        &manifest,
        &m.nodes,
        &m.tensors,
        &m.matching,
        &m.record.symbols,
    ))
}

/// The pass's graph again with flash attention on, where it had it off, matched with the same tensors: what the draft says flash attention
/// changes. None where the backend keeps it off.
fn with_flash_attn(
    extractor: &dyn Extractor,
    p: &Matched,
    opts: &Options,
) -> Result<Option<Vec<Drafted>>> {
    if p.record.flash_attn.used != Some(false) {
        return Ok(None);
    }
    let run = opts.out.join("auto").join("llama-flash-attn");
    // A backend that cannot run it: the draft says it describes the graph without.
    if extractor
        .extract_graph(
            &opts.model,
            Prompt::Tokens(&p.record.tokens),
            &run,
            Some(true),
        )
        .is_err()
    {
        return Ok(None);
    }
    let (record, nodes) = matching::read_nodes(&run)?;
    if record.flash_attn.used != Some(true) {
        return Ok(None);
    }
    let m = matching::pair_all(
        &nodes,
        &p.tensors,
        &record.symbols,
        &matching::Options::new(p.precision),
    );
    let words = Words {
        symbols: &record.symbols,
    };
    Ok(Some(draft::draft(&m, &nodes, &p.tensors, &words).0))
}

/// The drafted manifest with each entry's tolerance measured on this
/// comparison (NMSE 3x the worst over the layers compared, the elements'
/// bound twice the worst excess over rtol*|ref|, as a share of max |ref|),
/// and a header saying so.
fn reviewed_draft(
    p: &Matched,
    outcome: &Outcome,
    opts: &Options,
    with: Option<&[Drafted]>,
) -> Result<String> {
    let rtol = p.precision.tolerance().rtol;
    let measured = measured_errors(outcome, rtol)?;
    // A near miss is a divergence: its error is no tolerance to write down.
    let near = |r: &Role| r.members.iter().all(|&i| p.drafted[i].near);
    let roles: Vec<Role> = p
        .roles
        .iter()
        .filter(|r| !near(r))
        .map(|r| Role {
            id: r.id.clone(),
            members: r.members.clone(),
            layers: r.layers.clone(),
        })
        .collect();
    let left_out: Vec<String> = p
        .roles
        .iter()
        .filter(|r| near(r))
        .map(|r| r.id.clone())
        .collect();
    let tolerance = |r: &Role| {
        let (nmse, share) = measured.get(&r.id).copied().unwrap_or((0.0, 0.0));
        Tolerance {
            atol: 0.0,
            atol_of_max: round_up(2.0 * share).max(1e-6),
            rtol,
            nmse: round_up(3.0 * nmse).max(1e-12),
        }
    };
    Ok(manifest_text::manifest_text(
        &p.record.model.architecture,
        &draft_header(p, outcome, opts, with.is_some(), &left_out),
        &p.drafted,
        &roles,
        &all_layers(&p.record),
        &tolerance,
        &|r| with.and_then(|w| manifest_text::under_flash_attn(&p.drafted[r.members[0]], w)),
    ))
}

/// Per entry id, over its layers: the worst NMSE against the reference, and
/// the worst excess of |test-ref| over `rtol`*|ref| as a share of max |ref|.
fn measured_errors(outcome: &Outcome, rtol: f64) -> Result<BTreeMap<String, (f64, f64)>> {
    let mut measured: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for e in &outcome.entries {
        let test = read_values(&outcome.run.join(format!("{}.bin", e.stem)))?;
        let reference = read_values(&outcome.reference.join(F64).join(format!("{}.npy", e.stem)))
            .or_else(|_| {
            read_values(&outcome.reference.join(F32).join(format!("{}.npy", e.stem)))
        })?;
        let max_ref = reference
            .data
            .iter()
            .fold(0f64, |m, r| m.max(r.abs()))
            .max(f64::MIN_POSITIVE);
        let excess = test
            .data
            .iter()
            .zip(&reference.data)
            .map(|(t, r)| ((t - r).abs() - rtol * r.abs()).max(0.0))
            .fold(0f64, f64::max);
        let nmse = outcome
            .rows
            .iter()
            .find(|r| r.id == e.id && r.layer == e.layer)
            .and_then(|r| r.against.get(F64).or(r.against.get(F32)))
            .map_or(0.0, |m| m.nmse);
        let entry = measured.entry(e.id.clone()).or_insert((0.0, 0.0));
        entry.0 = entry.0.max(nmse);
        entry.1 = entry.1.max(excess / max_ref);
    }
    Ok(measured)
}

/// The layers compared, `3 to 7` when they run without a gap.
fn layers_text(outcome: &Outcome) -> String {
    let mut layers: Vec<u32> = outcome.entries.iter().filter_map(|e| e.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    match (layers.first(), layers.last()) {
        (Some(&a), Some(&b)) if b > a && (b - a) as usize + 1 == layers.len() => {
            format!("{a} to {b}")
        }
        _ => Vec::from_iter(layers.iter().map(|l| l.to_string())).join(", "),
    }
}

/// What the drafted manifest says of itself: where it comes from, how its
/// tolerances were measured, and what it leaves out.
fn draft_header(
    p: &Matched,
    outcome: &Outcome,
    opts: &Options,
    with_flash_attn: bool,
    left_out: &[String],
) -> String {
    let header = format!(
        "A manifest for llama.cpp's `{arch}` graph, drafted by `cargo xtask compare --draft-manifest`:\n\
         every node of one pass of {model} ({precision}; llama.cpp {tree}) paired by value with\n\
         every tensor of {class}'s pass ({variant}) over the same {n} tokens: {pairs} pairs, {entries} entries.\n\
         Review it before you commit it: a pair says which tensors hold the same values, not which should.\n\
         \n\
         tolerance: measured on this comparison (those {n} tokens, layers {layers}) against the\n\
         reference in {variant}: NMSE 3x (5 dB) above the worst over those layers, and each element\n\
         within rtol {rtol} of itself plus atol_of_max, twice the worst excess over that, as a share of\n\
         the tensor's largest |value|. The tolerance a comparison without a manifest uses instead is\n\
         the precision's: {band}.",
        arch = p.record.model.architecture,
        model = opts.model.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        precision = p.precision.name(),
        tree = p.record.llama_cpp.tree.describe(),
        class = p.info.model,
        variant = p.variant,
        n = p.record.tokens.len(),
        pairs = p.matching.pairs.len(),
        entries = p.roles.len(),
        layers = layers_text(outcome),
        rtol = p.precision.tolerance().rtol,
        band = p.precision.tolerance().text(),
    );
    let header = match with_flash_attn {
        true => format!(
            "{header}\nflash_attn: what flash attention changes, from the same prompt's graph with it on, matched the same way."
        ),
        false => format!(
            "{header}\nThe graph without flash attention: run it with --flash-attn off (with it, the graph was not had here)."
        ),
    };
    match left_out.is_empty() {
        true => header,
        false => format!(
            "{header}\nLeft out: {} (near misses: llama.cpp diverges from the reference there).",
            left_out.join(", ")
        ),
    }
}

/// `x` rounded up to two significant digits: tolerances a person reads.
fn round_up(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powf(x.log10().floor() - 1.0);
    // A hair below, so that a value already of two digits stays itself.
    ((x / scale) * (1.0 - 1e-12)).ceil() * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draft_needs_a_pass_whose_token_count_no_dimension_equals() {
        let mut s = llorch_checkpoint_spec::record::example().symbols;
        s.n_tokens = 23;
        assert_eq!(ambiguous(&s), None);
        s.n_head = 23;
        assert_eq!(
            ambiguous(&s).as_deref(),
            Some("the prompt gives 23 tokens, as many as n_head (n_head would read as `n_tokens`)")
        );
        s.n_tokens = 2;
        assert!(ambiguous(&s).unwrap().contains("fewer than 11"));
        assert!((round_up(0.0123) - 0.013).abs() < 1e-12);
        assert!((round_up(3.0e-7) - 3.0e-7).abs() < 1e-18 && round_up(3.0e-7) >= 3.0e-7);
    }
}
