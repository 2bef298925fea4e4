//! The whole comparison of one llama.cpp run with its reference: run (or
//! read) the extraction, compute the reference, score every checkpoint,
//! optionally attribute the error and score a candidate, write the reports.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use llorch_checkpoint_spec::manifest::Manifest;
use llorch_checkpoint_spec::record::RunRecord;

use crate::entries::{entries, read_run};
use crate::overrides::Override;
use crate::reference::build_reference;
use crate::sides::{Extraction, Extractor, Reference};
use crate::{attribution, candidate, metrics};
use llorch_checkpoint_report::findings::{first_failure, Info, Row};
use llorch_checkpoint_report::findings::{F32, F64};
use llorch_checkpoint_report::outputs::{self as report, Findings};

/// What to compare, and how.
#[derive(Clone)]
pub struct Options {
    /// The checkpoint manifest; every checkpoint needs a `reference:`.
    pub manifest: PathBuf,
    pub model: PathBuf,
    /// The Hugging Face checkpoint `model` was converted from: the reference
    /// loads it instead of the GGUF.
    pub hf: Option<PathBuf>,
    pub prompt: String,
    /// Where the runs, the reference tensors and the reports go.
    pub out: PathBuf,
    /// `--layers` for the extractor: `all` or `0,5,29`.
    pub layers: Option<String>,
    /// An existing run directory instead of a fresh extractor run.
    pub run: Option<PathBuf>,
    /// Another implementation's tensors, compared with llama.cpp and f64.
    pub candidate: Option<PathBuf>,
    /// The tolerance of the candidate against llama.cpp.
    pub candidate_tolerance: candidate::CandidateTolerance,
    /// `--tolerance` overrides.
    pub overrides: Vec<Override>,
    /// Stop scoring at the first checkpoint over its tolerance.
    pub fail_fast: bool,
    /// Checkpoints report.html details even when they pass.
    pub show: Option<glob::Pattern>,
    /// Rerun llama.cpp with other settings and say where the error comes from.
    pub attribution: bool,
    /// The reference reads each layer's weights only while it runs (from `hf`).
    pub stream_reference: bool,
    /// Also feed each reference layer llama.cpp's own input of that layer
    /// (matching only): each layer's local error beside the accumulated one.
    pub replay_layers: bool,
    /// Refuse a comparison without a manifest whose files would exceed
    /// this many bytes, once llama.cpp's graph run says how large it is.
    pub max_disk: Option<u64>,
    /// Without a manifest: once reported, keep only the files of the
    /// checkpoints over tolerance and of the first and last layer.
    pub keep_failing: bool,
}

impl Options {
    /// A plain comparison of `model` on `prompt`.
    pub fn new(manifest: &Path, model: &Path, prompt: &str, out: PathBuf) -> Options {
        Options {
            manifest: manifest.to_path_buf(),
            model: model.to_path_buf(),
            hf: None,
            prompt: prompt.into(),
            out,
            layers: None,
            run: None,
            candidate: None,
            candidate_tolerance: candidate::CandidateTolerance::default(),
            overrides: Vec::new(),
            fail_fast: false,
            show: None,
            attribution: false,
            stream_reference: false,
            replay_layers: false,
            max_disk: None,
            keep_failing: false,
        }
    }

    /// What the reference loads.
    pub fn reference_model(&self) -> crate::reference::Model<'_> {
        crate::reference::Model {
            gguf: &self.model,
            hf: self.hf.as_deref(),
            stream: self.stream_reference,
        }
    }

    /// The extractor run these options ask for, into `out`, on two threads.
    pub fn extraction<'a>(&'a self, out: &'a Path) -> Extraction<'a> {
        Extraction {
            model: &self.model,
            manifest: &self.manifest,
            prompt: &self.prompt,
            layers: self.layers.as_deref(),
            out,
            threads: 2,
            kv_f32: false,
            sequential: false,
        }
    }
}

/// What a comparison found.
pub struct Outcome {
    pub report: PathBuf,
    pub picture: PathBuf,
    /// `report.html`: the page a person reads.
    pub html: PathBuf,
    /// The terminal's text: header, tables, summary, first failure.
    pub text: String,
    /// `N of M checkpoints within tolerance of the f64 reference`.
    pub summary: String,
    /// The first checkpoint over its tolerance, with its worst element.
    pub failure: Option<String>,
    /// The greedy next token after the prompt: llama.cpp's, the f64
    /// reference's, and whether a difference is a near tie.
    pub next_token: crate::next_token::NextToken,
    /// What was compared, and how each checkpoint scored (graph order).
    pub entries: Vec<llorch_checkpoint_report::findings::Entry>,
    pub rows: Vec<Row>,
    /// The llama.cpp run and the reference tensors compared.
    pub run: PathBuf,
    pub reference: PathBuf,
    /// Without a manifest: the pairs against a hand-written one, where asked.
    pub against: Option<Vec<llorch_checkpoint_matching::against::Row>>,
}

/// The whole comparison; `Err` when it could not be made, `failure` when it
/// was and a tolerance is exceeded.
pub fn compare(
    extractor: &dyn Extractor,
    reference: &dyn Reference,
    opts: &Options,
) -> Result<Outcome> {
    let scored = score(extractor, reference, opts)?;
    report(extractor, opts, scored)
}

/// What follows the scores: the table, attribution and the candidate where
/// asked, the verdict, and the reports written.
pub(crate) fn report(extractor: &dyn Extractor, opts: &Options, s: Scored) -> Result<Outcome> {
    let mut text = header(&s.record, &s.info);
    text.push_str(&report::table(&s.rows));
    let attribution = match opts.attribution {
        true => Some(attribute(extractor, opts, &s, &mut text)?),
        false => None,
    };
    let candidate_rows = opts.candidate.as_ref().map(|dir| {
        let truth = llorch_checkpoint_report::findings::truth(&s.info.variants);
        let against = opts.candidate_tolerance;
        let truth_dir = s.reference_dir.join(truth);
        let scored = candidate::score(dir, &s.run, &truth_dir, &s.entries, against);
        text.push_str(&candidate::table(&scored, &s.rows, against));
        scored
    });
    let failure = first_failure(&s.rows);
    let summary = verdict(&s.rows, failure.as_deref(), &mut text);
    let written = report::write_reports(
        &opts.out,
        &Findings {
            manifest: &opts.manifest,
            model: &opts.model,
            prompt: &opts.prompt,
            run: &s.run,
            reference: &s.reference_dir,
            record: &s.record,
            info: &s.info,
            entries: &s.entries,
            rows: &s.rows,
            candidate: opts.candidate.as_deref().zip(candidate_rows.as_deref()),
            attribution: attribution.as_ref(),
            failure: failure.as_deref(),
            text: &text,
            show: opts.show.as_ref(),
        },
    )?;
    Ok(Outcome {
        report: written.report,
        picture: written.picture,
        html: written.html,
        text,
        summary,
        next_token: crate::next_token::NextToken::judge(
            s.record.next_token,
            s.info.next_token.get(F64).copied(),
            &s.run.join(&s.record.logits.file),
            &s.reference_dir.join(F64).join("next_logits.npy"),
        ),
        failure,
        entries: s.entries,
        rows: s.rows,
        run: s.run,
        reference: s.reference_dir,
        against: None,
    })
}

/// `--attribution`: the error split between its causes, its table added to `text`.
fn attribute(
    extractor: &dyn Extractor,
    opts: &Options,
    s: &Scored,
    text: &mut String,
) -> Result<serde_json::Value> {
    let base = opts.extraction(&opts.out);
    let (table, json) = attribution::measure(
        extractor,
        &base,
        &s.run,
        &s.reference_dir,
        &s.entries,
        &s.rows,
        &s.info.variants,
    )?;
    text.push_str(&table);
    Ok(json)
}

/// llama.cpp's run and the reference, each checkpoint scored.
pub(crate) struct Scored {
    pub run: PathBuf,
    pub record: RunRecord,
    pub reference_dir: PathBuf,
    pub info: Info,
    pub entries: Vec<llorch_checkpoint_report::findings::Entry>,
    pub rows: Vec<Row>,
}

/// Runs llama.cpp (or reads `opts.run`), builds the reference for the
/// checkpoints the run expanded, and scores each one.
fn score(extractor: &dyn Extractor, reference: &dyn Reference, opts: &Options) -> Result<Scored> {
    // Every checkpoint must name its reference: checked before anything runs.
    entries(&Manifest::load(&opts.manifest)?, &opts.overrides)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let run = match &opts.run {
        Some(dir) => dir.clone(),
        None => {
            let dir = opts.out.join("llama");
            extractor.extract(&opts.extraction(&dir))?;
            dir
        }
    };
    let record = read_run(&run)?;
    // The checkpoints as the run expanded them (`--layers`).
    let entries = entries(&record.manifest(&opts.manifest)?, &opts.overrides)?;
    if let Some(dir) = &opts.candidate {
        candidate::check_tokens(dir, &record.tokens)?;
    }
    let reference_dir = opts.out.join("reference");
    let info = build_reference(
        reference,
        &opts.reference_model(),
        &run,
        &record,
        &entries,
        &reference_dir,
    )?;
    let rows = metrics::score_run(
        &run,
        &reference_dir,
        &entries,
        opts.fail_fast,
        &info.variants,
    )?;
    Ok(Scored {
        run,
        record,
        reference_dir,
        info,
        entries,
        rows,
    })
}

/// `N of M checkpoints within tolerance`, also appended to `text` with the first failure.
fn verdict(rows: &[Row], failure: Option<&str>, text: &mut String) -> String {
    let passed = rows.iter().filter(|r| r.pass).count();
    let truth = rows.first().map_or(F64, |r| r.truth.as_str());
    let summary = format!(
        "{passed} of {} checkpoints within tolerance of the {truth} reference",
        rows.len()
    );
    let _ = writeln!(text, "\n{summary}");
    if let Some(f) = failure {
        let _ = writeln!(text, "FIRST FAILURE: {f}");
    }
    summary
}

/// The table's first line: both sides, the prompt, the next tokens.
fn header(record: &RunRecord, info: &Info) -> String {
    let flash_attn = record.flash_attn.used_name();
    let mut text = format!(
        "\nllama.cpp {} (kv cache {}, {} threads, flash attention {flash_attn}, asked {}) vs PyTorch {} ({}), {} prompt tokens; \
         next token: llama.cpp {}, PyTorch f32 {}, f64 {}\n",
        record.llama_cpp.tree.describe(),
        record.kv_type,
        record.threads,
        record.flash_attn.requested.name(),
        info.model,
        record.model.architecture,
        record.tokens.len(),
        record.next_token.unwrap_or(-1),
        info.next_token.get(F32).copied().unwrap_or(-1),
        info.next_token.get(F64).copied().unwrap_or(-1),
    );
    for (variant, why) in &info.unavailable {
        text += &format!(
            "the reference cannot run {variant} ({why}): judged against {}\n",
            llorch_checkpoint_report::findings::truth(&info.variants)
        );
    }
    if let Some(absent) = record.absent_summary() {
        text += &format!("absent from llama.cpp's graph, not compared: {absent}\n");
    }
    text
}
