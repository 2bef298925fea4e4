//! `cargo xtask compare`: the command line of the comparison library
//! (`llorch-checkpoint-compare`); the two sides it compares, llama.cpp and
//! transformers, are in `runs/sides.rs`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use llorch_checkpoint_compare::auto::{compare_auto, Auto};
use llorch_checkpoint_compare::candidate::CandidateTolerance;
use llorch_checkpoint_compare::overrides::Override;
use llorch_checkpoint_compare::{compare, sequential, Options};
use llorch_checkpoint_spec::record::FlashAttnMode;

use crate::llama_cpp::build::Backend;
use crate::llama_cpp::tree::TreeArg;
use crate::models::model::{ModelArgs, Outtype, Size};
use crate::models::prompts::MATCHING_PROMPT;
use crate::project::Project;
use crate::runs::reference_memory::ReferenceMemory;
use crate::runs::replay::{explain_divergence, Compared};
use crate::runs::sides::{run_self_test, LlamaCpp, PyTorch};

#[derive(clap::Args)]
pub struct Compare {
    #[command(flatten)]
    input: ModelArgs,
    /// Output directory (runs, reference tensors, report.json, errors.svg) [default: target/llorch/compare].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The layers to compare instead of the manifest's: `all`, or numbers like `0,5,29` (negative from the last: -1).
    #[arg(long, value_name = "all|N,N,...", allow_hyphen_values = true)]
    layers: Option<String>,
    /// Compare this existing run directory (run.json + checkpoint files) instead of running the
    /// extractor; without a manifest, a run of every node (the extractor's `--tensors '*'`).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Also rerun llama.cpp with an f32 KV cache, with -t 1 and on f32 weights, and attribute the error.
    #[arg(long)]
    attribution: bool,
    /// Check the comparison itself: a copy of the run with one element changed by 1e-2 must fail, naming it.
    #[arg(long)]
    self_test: bool,
    /// A third side: a directory of another implementation's tensors (named as the extractor
    /// names them, .bin or .npy, with run.json or tokens.json), compared with llama.cpp and f64.
    #[arg(long, value_name = "DIR")]
    candidate: Option<PathBuf>,
    /// What judges the candidate against llama.cpp: `llama-cpp`, one tolerance set by what two
    /// correct llama.cpp runs differ by (0.005*max per element, NMSE 2e-5: a 1% error is caught),
    /// or `manifest`, each checkpoint's own, as llama.cpp is judged against f64.
    #[arg(long, value_name = "llama-cpp|manifest", default_value = "llama-cpp",
          value_parser = CandidateTolerance::parse, requires = "candidate")]
    candidate_tolerance: CandidateTolerance,
    /// Override tolerances for checkpoints whose id or node name matches: 'ffn_*=atol:1e-2,nmse:1e-4'.
    #[arg(long = "tolerance", value_name = "GLOB=atol:X,rtol:Y,nmse:Z")]
    tolerances: Vec<Override>,
    /// Stop at the first checkpoint (graph order) over its tolerance.
    #[arg(long)]
    fail_fast: bool,
    /// Detail these checkpoints in report.html too (heatmap, histogram), besides the failing ones:
    /// a glob over ids or `id@layer`, e.g. '07_ffn_out@*'.
    #[arg(long, value_name = "GLOB", value_parser = |s: &str| glob::Pattern::new(s).map_err(|e| e.to_string()))]
    show: Option<glob::Pattern>,
    /// Instead: run the prompt as one batch and one token at a time, and compare every
    /// checkpoint position by position (no PyTorch needed).
    #[arg(long, conflicts_with_all = ["candidate", "attribution", "run", "self_test"])]
    sequential: bool,
    /// Flash attention for llama.cpp's runs (`-fa`) [default: off where the manifest names a node
    /// only a graph without it has (the scores), or when matching; else auto, llama.cpp's own].
    /// With it on, scores do not exist (reported absent) and V is compared in its untransposed layout.
    #[arg(long, value_enum)]
    flash_attn: Option<FlashAttnMode>,
    #[command(flatten)]
    tree: TreeArg,
    /// The backend llama.cpp runs on, every layer on its device.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// A Hugging Face checkpoint of any architecture the pinned converter knows: converted to a
    /// GGUF for llama.cpp (--outtype), and itself the reference. Its nodes are paired automatically.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["model", "random", "sequential", "self_test"])]
    hf: Option<PathBuf>,
    /// A random Hugging Face model of this architecture (`cargo xtask model --random`), as --hf.
    #[arg(long, visible_alias = "tiny", value_name = "ARCH",
          conflicts_with_all = ["model", "sequential", "self_test"])]
    random: Option<String>,
    /// The size of --random: tiny, or a published model's widths (`cargo xtask model --help`).
    #[arg(long, value_enum, default_value_t = Size::Tiny, requires = "random")]
    size: Size,
    /// What --hf and --random convert the weights to (the converter's --outtype) [default: f32;
    /// f16 for --size 1b and 7b].
    #[arg(long, value_enum)]
    outtype: Option<Outtype>,
    /// How the reference holds the model: `whole` (in f32 and f64 at once: 12 bytes a parameter),
    /// `streamed` (each layer read from the Hugging Face checkpoint, or a GGUF's saved f32 copy,
    /// while it runs, then freed: one layer's memory, whatever the size; bitwise the same
    /// tensors), or `auto`: streamed where the whole model would take more than half the memory
    /// available (a GGUF: more than all of it).
    #[arg(long, value_enum, default_value_t = ReferenceMemory::Auto)]
    reference: ReferenceMemory,
    /// Also feed each reference layer llama.cpp's own input of that layer (its previous layer's
    /// output): each layer's local error (what it adds) beside the accumulated one (what it
    /// adds and inherits). Pairs nodes by value, as --match.
    #[arg(long, conflicts_with_all = ["manifest", "sequential", "self_test"])]
    replay_layers: bool,
    /// Without a manifest: refuse, once llama.cpp's graph run says how large the comparison's
    /// files will be (about 4x that run with --replay-layers), a comparison over this many GB.
    #[arg(long, value_name = "GB")]
    max_disk: Option<f64>,
    /// Without a manifest: which checkpoints keep their files once reported: `all`, or `failing`
    /// (those over tolerance, and the first and last layer's as a sample; report.json keeps
    /// every checkpoint's figures, the whole-graph run and the reference's pass go).
    #[arg(long, value_enum, default_value_t = Keep::All)]
    keep: Keep,
    /// Pair llama.cpp's nodes with the reference's tensors by value, even where a manifest fits the model.
    #[arg(long = "match", conflicts_with_all = ["manifest", "sequential", "self_test"])]
    auto: bool,
    /// Where a checkpoint fails, replay the first one's node in f64 from llama.cpp's own operands
    /// (`cargo xtask replay`): say whether its kernel computes beyond its roundings, or the graph
    /// computes something other than the reference there.
    #[arg(long, conflicts_with_all = ["sequential", "self_test", "run", "candidate"])]
    explain: bool,
    /// Also write the manifest the pairs make, with tolerances measured on this comparison, for
    /// you to review and commit (implies --match).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["manifest", "sequential", "self_test"])]
    draft_manifest: Option<PathBuf>,
}

impl Compare {
    pub fn run(self, project: &Project) -> Result<()> {
        let Sides {
            model,
            manifest,
            hf,
            set_aside,
        } = self.sides(project)?;
        // Matching wants every node: without flash attention, the scores are
        // nodes too; a manifest gets every checkpoint it names.
        let flash_attn = match (&manifest, self.flash_attn) {
            (_, Some(asked)) => Some(asked),
            (None, None) => Some(FlashAttnMode::Off),
            (Some(m), None) => crate::flags::every_checkpoint("compare", m, &project.shown(m))?,
        };
        let llama = LlamaCpp::on(project, self.tree.clone(), flash_attn).on_backend(self.backend);
        let torch = PyTorch::new(project);
        if self.self_test {
            let line = run_self_test(project, &llama, &torch)?;
            println!("self-test passed: {line}");
            return Ok(());
        }
        let opts = self.options(project, &model, manifest.as_deref(), hf)?;
        if self.sequential {
            print!(
                "{}",
                sequential::batch_vs_sequential(&llama, &opts.extraction(&opts.out))?
            );
            return Ok(());
        }
        let outcome = match manifest {
            Some(_) => compare(&llama, &torch, &opts)?,
            None => {
                let auto = Auto {
                    draft: self
                        .draft_manifest
                        .clone()
                        .map(std::path::absolute)
                        .transpose()?,
                    against: set_aside,
                };
                compare_auto(&llama, &torch, &opts, &auto)?.0
            }
        };
        print!("{}", outcome.text);
        println!(
            "\nreport: {}\npicture: {}\npage: {}",
            outcome.report.display(),
            outcome.picture.display(),
            outcome.html.display()
        );
        if self.explain && outcome.failure.is_some() {
            let compared = Compared {
                model: &model,
                tree: &self.tree.resolve(project)?,
                backend: self.backend,
                prompt: &opts.prompt,
                flash_attn,
            };
            if let Some(why) = explain_divergence(project, &outcome, &compared)? {
                println!("\n{why}");
            }
        }
        match outcome.failure {
            Some(why) => bail!("{why}"),
            None => Ok(()),
        }
    }

    /// The reference's passes: f32 and f64, the replay, attribution's two emulations.
    fn passes(&self) -> usize {
        2 + usize::from(self.replay_layers) + 2 * usize::from(self.attribution)
    }

    /// The comparison's options from the command line and the sides.
    fn options(
        &self,
        project: &Project,
        model: &Path,
        manifest: Option<&Path>,
        hf: Option<PathBuf>,
    ) -> Result<Options> {
        let out = match &self.out {
            Some(dir) => std::path::absolute(dir)?,
            None => project.work_dir().join("compare"),
        };
        // Matching pairs on the pass it compares: two tokens say too little.
        let prompt = match manifest {
            Some(_) => self.input.prompt(),
            None => self.input.prompt_or(MATCHING_PROMPT),
        };
        Ok(Options {
            layers: self.layers.clone(),
            candidate: self
                .candidate
                .clone()
                .map(std::path::absolute)
                .transpose()?,
            candidate_tolerance: self.candidate_tolerance,
            overrides: self.tolerances.clone(),
            fail_fast: self.fail_fast,
            show: self.show.clone(),
            run: self.run.clone().map(std::path::absolute).transpose()?,
            attribution: self.attribution,
            stream_reference: self
                .reference
                .streamed(hf.as_deref(), model, self.passes())?,
            replay_layers: self.replay_layers,
            max_disk: self.max_disk.map(|gb| (gb * 1e9) as u64),
            keep_failing: self.keep == Keep::Failing,
            hf,
            ..Options::new(manifest.unwrap_or(Path::new("")), model, prompt, out)
        })
    }

    /// The GGUF llama.cpp runs, the manifest (None: pair the nodes by value),
    /// the Hugging Face checkpoint the reference loads instead of the GGUF,
    /// and the manifest that fits but was set aside for matching.
    fn sides(&self, project: &Project) -> Result<Sides> {
        let hf = match (&self.hf, &self.random) {
            (Some(dir), _) => Some(std::path::absolute(dir)?),
            (None, Some(arch)) => Some(crate::models::model::random(project, arch, self.size, 0)?),
            (None, None) => None,
        };
        let automatic = self.auto || self.replay_layers || self.draft_manifest.is_some();
        if let Some(dir) = hf {
            let outtype = self.outtype.unwrap_or(self.size.outtype());
            let model = crate::models::model::from_hf(project, &dir, outtype, false)?;
            let manifest = self.input.manifest.clone().filter(|_| !automatic);
            return Ok(Sides {
                model,
                manifest,
                hf: Some(dir),
                set_aside: None,
            });
        }
        let chosen = self.input.resolve_any(project)?;
        let (manifest, set_aside) = match automatic {
            true => (None, chosen.manifest),
            false => (chosen.manifest, None),
        };
        Ok(Sides {
            model: chosen.model,
            manifest,
            hf: None,
            set_aside,
        })
    }
}

/// `compare --keep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Keep {
    All,
    Failing,
}

/// What a comparison compares.
struct Sides {
    model: PathBuf,
    manifest: Option<PathBuf>,
    hf: Option<PathBuf>,
    set_aside: Option<PathBuf>,
}
