//! `cargo xtask replay`: each node's own error (the flow: `runs/replay.rs`).
//! A node beyond what its kernel's roundings allow computes something other
//! than its op; error a node only inherits does not show here (the
//! comparison with transformers shows the sum).

use std::path::PathBuf;

use anyhow::{bail, Result};
use llorch_checkpoint_compare::replay::Replay as Judged;

use crate::flags::{self, LlamaFlags};
use crate::llama_cpp::build::Backend;
use crate::llama_cpp::tree::TreeArg;
use crate::models::model::choose;
use crate::project::Project;
use crate::runs::replay::{replay, Job};

#[derive(clap::Args)]
pub struct Replay {
    /// A GGUF path or a model of vendor/models.yaml, e.g. smollm2-135m [default: the synthetic GPT-2].
    #[arg(short = 'm', long)]
    model: Option<String>,
    /// The prompt whose pass is captured and replayed.
    #[arg(
        short = 'p',
        long,
        default_value = "Hello world, this is a test of each node"
    )]
    prompt: String,
    /// The nodes to replay: globs over node names, comma-separated, e.g. `'*-3'` for layer 3.
    /// Operands the globs leave out are copied as the op saw them, but for one a node was
    /// computed over in place, which is reported unavailable (take its producer in too).
    #[arg(long, default_value = "*", value_name = "GLOB[,GLOB...]")]
    nodes: String,
    /// The backend llama.cpp runs on; a device's (vulkan, cuda, metal) takes every layer, and its
    /// nodes are held to what a device's arithmetic allows.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    #[command(flatten)]
    tree: TreeArg,
    #[command(flatten)]
    llama: LlamaFlags,
    /// Output directory: run/ (the capture), replayed/ (each op in f64 and its allowance),
    /// replay.json and replay.html [default: target/llorch/replay].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Further extractor flags (after `--`), e.g. `-- --kv-type f32`.
    #[arg(last = true)]
    extractor_args: Vec<String>,
}

/// The flags replay sets itself.
const OWN: &[(&[&str], &str)] = &[
    (&["-m", "--model"], "`--model`"),
    (&["--manifest", "--tensors"], "`--nodes GLOB`"),
    (
        &["--operands", "--keep-padding"],
        "replay (it always asks for them)",
    ),
    (
        &["-p", "--prompt", "-f", "--file", "--tokens"],
        "`--prompt`",
    ),
    (&["--out"], "replay's own `--out`"),
];

impl Replay {
    pub fn run(mut self, project: &Project) -> Result<()> {
        self.llama.take_from(&mut self.extractor_args)?;
        flags::refuse_own(&self.extractor_args, OWN)?;
        let out = match &self.out {
            Some(dir) => std::path::absolute(dir)?,
            None => project.work_dir().join("replay"),
        };
        let model = choose(project, self.model.as_deref(), None)?.model;
        let tree = self.tree.resolve(project)?;
        let mut extra = self.llama.to_args();
        extra.extend(self.extractor_args.iter().cloned());
        let job = Job {
            model: &model,
            tree: &tree,
            backend: self.backend,
            prompt: &self.prompt,
            nodes: &self.nodes,
            extra: &extra,
            out: &out,
        };
        let replayed = replay(project, &job)?;
        print!("{}", replayed.judged.table());
        println!(
            "\nreport: {}\npage: {}",
            replayed.report.display(),
            replayed.page.display()
        );
        verdict(&replayed.judged)
    }
}

/// Fails where a kernel computed something its explanation does not allow.
fn verdict(judged: &Judged) -> Result<()> {
    let flagged: Vec<String> = judged
        .flagged()
        .map(|n| format!("{} #{} ({})", n.op, n.index, n.name))
        .collect();
    let replayed = judged
        .nodes
        .iter()
        .filter(|n| n.status == "replayed")
        .count();
    if flagged.is_empty() {
        println!(
            "{replayed} of {} nodes replayed, every one within what its explanation allows",
            judged.nodes.len()
        );
        return Ok(());
    }
    bail!(
        "{} of {replayed} replayed nodes exceed what their kernel's roundings allow: {}",
        flagged.len(),
        flagged.join(", ")
    )
}
