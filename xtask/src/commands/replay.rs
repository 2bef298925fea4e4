//! `cargo xtask replay`: each node's own error. The extractor captures
//! every node with its operands as the op saw them (`--tensors GLOB
//! --operands`), `xtask/python/replay.py` computes each op again in f64 from
//! those operands (weights dequantized exactly from the GGUF), and the
//! comparison library holds llama.cpp's value of each node to what its
//! kernel's documented roundings allow. A node beyond that is a kernel that
//! computes something other than its op; error a node only inherits does
//! not show here (the comparison with transformers shows the sum).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use llorch_checkpoint_compare::replay::{self, Replay as Judged};
use llorch_checkpoint_spec::files::write_atomically;

use crate::flags::{self, LlamaFlags};
use crate::llama_cpp::build::{self, Backend};
use crate::llama_cpp::tree::{Tree, TreeArg};
use crate::models::model::choose;
use crate::project::Project;
use crate::runs::extractor::ExtractorRun;
use crate::step::Step;

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
    /// The nodes to replay: a glob over node names, e.g. `'*-3'` for layer 3 (operands the glob
    /// leaves out are copied as the op saw them).
    #[arg(long, default_value = "*", value_name = "GLOB")]
    nodes: String,
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
        let (run, replayed) = (out.join("run"), out.join("replayed"));
        self.capture(project, &model, &tree, &run)?;
        replay_in_f64(project, &run, &model, &replayed)?;
        let judged = replay::judge(&run, &replayed)?;
        let title = format!(
            "each node's own error: {} on {} ({})",
            model
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            tree.record.describe(),
            self.backend.name()
        );
        report(&judged, &title, &out)?;
        print!("{}", judged.table());
        println!(
            "\nreport: {}\npage: {}",
            out.join("replay.json").display(),
            out.join("replay.html").display()
        );
        verdict(&judged)
    }

    /// The extractor's run of every node asked, with its operands.
    fn capture(&self, project: &Project, model: &Path, tree: &Tree, run: &Path) -> Result<()> {
        let exe = build::ensure_extractor(project, self.backend, tree)?;
        let mut llama = self.llama.clone();
        if llama.n_gpu_layers.is_none() {
            llama.n_gpu_layers = self.backend.default_gpu_layers();
        }
        let extractor = ExtractorRun::new(&exe, model, run)
            .user_threads()
            .env(build::backend_env(project, self.backend, tree))
            .tensors(&self.nodes)
            .arg("--operands")
            .prompt(&self.prompt)
            .args(llama.to_args())
            .args(&self.extractor_args);
        let step = Step::start(project, "replay", "capturing every node with its operands")?;
        step.run("llorch-checkpoint-extractor", extractor.expression())
            .context("the extractor failed")?;
        step.finish(&format!("run in {}", project.shown(run)));
        Ok(())
    }
}

/// Each node's op in f64, by `xtask/python/replay.py` in the project's Python.
fn replay_in_f64(project: &Project, run: &Path, model: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    let python = crate::models::python::ensure(project)
        .context("the replay needs the project's Python environment (numpy and gguf from PyPI)")?;
    let script = project.root().join("xtask/python/replay.py");
    let step = Step::start(project, "replay", "each node's op in f64")?;
    let args: Vec<std::ffi::OsString> = vec![
        script.into(),
        "--run".into(),
        run.into(),
        "--model".into(),
        model.into(),
        "--out".into(),
        out.into(),
    ];
    step.run(
        "replay.py",
        duct::cmd(python, args).env("PYTHONDONTWRITEBYTECODE", "1"),
    )
    .context("the f64 replay failed")?;
    step.finish(&format!("in {}", project.shown(out)));
    Ok(())
}

/// `replay.json` and `replay.html`, each written whole or not at all.
fn report(judged: &Judged, title: &str, out: &Path) -> Result<()> {
    let json = serde_json::to_vec_pretty(judged)?;
    write_atomically(&out.join("replay.json"), &json)?;
    write_atomically(&out.join("replay.html"), judged.html(title).as_bytes())
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
