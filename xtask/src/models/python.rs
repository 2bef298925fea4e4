//! The project's Python: a virtual environment in `target/llorch/pyenv` with
//! pinned PyTorch, transformers and friends, for what only Python has: the
//! PyTorch reference of `compare` (transformers reads the GGUF through the
//! `gguf` package) and llama.cpp's Hugging Face converter.
//!
//! One `uv pip install` of pinned versions (uv from `tools.rs`), redone only when the
//! list changes (a stamp in the venv records what was installed).
//!
//! The converter: the pinned tree has `convert_hf_to_gguf.py` but not the
//! Python packages it imports (`conversion/`, `gguf-py/`: the crate leaves them
//! out). PyPI's `llama-cpp-python` sdist carries a full llama.cpp tree whose
//! `convert_hf_to_gguf.py` is byte-identical to the pinned one; its
//! `conversion` and `gguf` packages are unpacked (sdist checked against a
//! pinned sha256) and put on `PYTHONPATH`. If the pinned script ever differs
//! from the sdist's, [`converter`] refuses and says which pin to move.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_spec::files::write_atomically;

use crate::llama_cpp::fetch;
use crate::llama_cpp::tools::{self, PIP};
use crate::project::Project;
use crate::step::Step;

/// Pinned: the reference's transformers, the current 5.x, and what
/// llama.cpp's converter asks for beside its own transformers
/// ([`CONVERTER_TRANSFORMERS`]; its requirements-convert_hf_to_gguf.txt:
/// torch 2.11.0, numpy ~2.2.6, sentencepiece, protobuf < 5; gguf-py: tqdm,
/// pyyaml, requests). torch is PyPI's default wheel (with its CUDA
/// libraries, ~4 GB: PyPI has no CPU-only build, and torch does not import
/// without them).
const REQUIREMENTS: &[&str] = &[
    "torch==2.11.0",
    "transformers==5.25.0",
    "tokenizers==0.23.3",
    "huggingface_hub==2.4.0",
    // transformers 5 imports it (its GGUF matmul kernels; the reference dequantizes instead).
    "kernels==0.19.1",
    "safetensors==0.8.0",
    "numpy==2.2.6",
    "sentencepiece==0.2.3",
    "protobuf==4.25.9",
    "tqdm==4.70.1",
    "pyyaml==6.0.4",
    "requests==2.34.2",
    // transformers loads GGUF models through these two.
    "gguf==0.19.0",
    "accelerate==1.15.0",
    // Only to let pip read the llama-cpp-python sdist's metadata when downloading it.
    "scikit-build-core==1.1.2",
];

/// The converter's transformers, which its requirements pin: the pinned
/// `convert_hf_to_gguf.py` and its vocabulary code are written for 4.x (they
/// assert 4.x's tokenizer classes). Installed apart, without dependencies
/// (the venv has them all), into [`converter_site`], first on the converter's
/// `PYTHONPATH`: it shadows the venv's 5.x there and nowhere else.
const CONVERTER_TRANSFORMERS: &[&str] = &[
    "transformers==4.57.6",
    "tokenizers==0.22.2",
    "huggingface_hub==0.36.2",
];

/// The transformers version the reference runs ([`REQUIREMENTS`]'s), and the
/// converter's ([`CONVERTER_TRANSFORMERS`]'s).
pub fn transformers_versions() -> (&'static str, &'static str) {
    let pinned = |list: &[&'static str]| {
        list.iter()
            .find_map(|r| r.strip_prefix("transformers=="))
            .expect("transformers is pinned")
    };
    (pinned(REQUIREMENTS), pinned(CONVERTER_TRANSFORMERS))
}

/// Where [`CONVERTER_TRANSFORMERS`] are installed.
pub fn converter_site(project: &Project) -> PathBuf {
    venv_dir(project).join("converter-transformers")
}

/// What the venv's stamp records: both lists, so that a change to either installs again.
fn stamp_text() -> String {
    REQUIREMENTS
        .iter()
        .chain(["# the converter's:"].iter())
        .chain(CONVERTER_TRANSFORMERS)
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// torch brings triton, torch.compile's GPU compiler (0.6 GB): the
/// reference runs eagerly on the CPU, and torch imports without it.
const EXCLUDED: &str = "triton";

/// The venv once installed (torch with its CUDA libraries is most of it).
/// uv unpacks each wheel as it arrives, so nothing more waits on disk.
const INSTALLED_GB: f64 = 4.5;

/// The sdist that carries the converter's Python packages.
const CONVERTER_SDIST: (&str, &str) = ("llama-cpp-python", "0.3.36");
const CONVERTER_SDIST_SHA256: &str =
    "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e";

fn venv_dir(project: &Project) -> PathBuf {
    project.work_dir().join("pyenv")
}

/// The venv's directory when it holds [`REQUIREMENTS`] (for `doctor`: no change).
pub fn installed(project: &Project) -> Option<PathBuf> {
    let venv = venv_dir(project);
    let stamp = std::fs::read_to_string(venv.join("llorch-requirements.txt")).ok()?;
    (stamp == stamp_text() && venv.join("bin/python").is_file()).then_some(venv)
}

/// The environment could not be installed for lack of disk, with the
/// figures; verify reports it as a failure (a tier that compared nothing is
/// not green). The partial install is removed, and later calls in the
/// process say so at once.
#[derive(Debug, Clone)]
pub struct NoRoom(pub String);

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoRoom {}

static NO_ROOM: std::sync::OnceLock<NoRoom> = std::sync::OnceLock::new();

/// Runs the project's Python with `args` in `dir`, `env` set, no bytecode
/// written: whether it succeeded, and what it printed (stdout and stderr).
pub fn run_quietly(
    project: &Project,
    args: &[&str],
    dir: &Path,
    env: (&str, &Path),
) -> Result<(bool, String)> {
    let python = ensure(project)?;
    let out = duct::cmd(python, args)
        .dir(dir)
        .env(env.0, env.1)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stderr_to_stdout()
        .stdout_capture()
        .unchecked()
        .run()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Makes sure the venv exists with [`REQUIREMENTS`]; returns its python.
pub fn ensure(project: &Project) -> Result<PathBuf> {
    if let Some(no_room) = NO_ROOM.get() {
        return Err(no_room.clone().into());
    }
    let venv = venv_dir(project);
    let python = venv.join("bin/python");
    let stamp = venv.join("llorch-requirements.txt");
    let wanted = stamp_text();
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && python.is_file()
    {
        return Ok(python);
    }
    let step = Step::start(project, "python", "PyTorch and transformers from PyPI")?;
    step.set_message(&format!(
        "installing torch, transformers and {} more pinned packages into {} (about 4 GB)",
        REQUIREMENTS.len() - 2,
        venv.display()
    ));
    // An existing venv is updated in place: pip keeps what already fits the
    // pins, so adding a package does not download torch again.
    if !python.is_file() {
        let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        step.run("python3 -m venv", duct::cmd!(python3, "-m", "venv", "--clear", &venv)).context(
            "cannot create the Python virtual environment target/llorch/pyenv.\n\
             Install Python 3 with venv (Debian: apt-get install python3 python3-venv), or point PYTHON at one",
        )?;
    }
    install(project, &step, &python, &venv)?;
    write_atomically(&stamp, wanted.as_bytes())?;
    step.finish(&format!(
        "{} packages in {}",
        REQUIREMENTS.len(),
        venv.display()
    ));
    Ok(python)
}

/// uv installs [`REQUIREMENTS`] (and pip, for the converter's sdist) into
/// `venv` (tried twice: a dropped connection in 3 GB of wheels is not rare);
/// a full disk is [`NoRoom`].
fn install(project: &Project, step: &Step, python: &Path, venv: &Path) -> Result<()> {
    let fresh = !venv.join("llorch-requirements.txt").is_file();
    if fresh {
        warn_if_tight(step, project, venv);
    }
    // The cache lives in the venv, on its disk: uv hard-links the unpacked
    // files from it, and removing it afterwards frees only what is unused.
    // Bytecode is compiled once here, as pip does: the project runs Python
    // with PYTHONDONTWRITEBYTECODE, and without .pyc files every start
    // compiled transformers again (5 s of each of verify's ~40 starts).
    let cache = venv.join("uv-cache");
    let excludes = venv.join("llorch-excluded.txt");
    std::fs::write(&excludes, EXCLUDED)?;
    let uv = uv_install(
        project,
        python,
        &cache,
        ["--excludes".into(), excludes.into_os_string()]
            .into_iter()
            .chain(REQUIREMENTS.iter().chain([&PIP]).map(OsString::from)),
    )?;
    let installed = step
        .run_watched("uv pip install", uv.clone(), progress)
        .or_else(|first| {
            if first.to_string().contains("No space left") {
                return Err(first);
            }
            step.say(&format!(
                "uv failed ({}); trying once more",
                first_line(&first)
            ));
            step.run_watched("uv pip install (second try)", uv, progress)
        });
    let installed =
        installed.and_then(|()| install_converter_transformers(project, step, python, &cache));
    let _ = std::fs::remove_dir_all(&cache);
    if let Err(err) = &installed {
        if err.to_string().contains("No space left") {
            return Err(no_room(project, venv, fresh).into());
        }
    }
    installed.context(
        "uv could not install the pinned Python packages from PyPI (is PyPI reachable? is there disk space for torch?).\n\
         Retry with: cargo xtask model --self-test-hf",
    )
}

/// [`CONVERTER_TRANSFORMERS`] into [`converter_site`], afresh.
fn install_converter_transformers(
    project: &Project,
    step: &Step,
    python: &Path,
    cache: &Path,
) -> Result<()> {
    let site = converter_site(project);
    let _ = std::fs::remove_dir_all(&site);
    let uv = uv_install(
        project,
        python,
        cache,
        ["--no-deps".into(), "--target".into(), site.into_os_string()]
            .into_iter()
            .chain(CONVERTER_TRANSFORMERS.iter().map(OsString::from)),
    )?;
    step.run_watched(
        "uv pip install (the converter's transformers)",
        uv,
        progress,
    )
}

/// `uv pip install` into the venv of `python`, bytecode compiled, then `args`.
fn uv_install(
    project: &Project,
    python: &Path,
    cache: &Path,
    args: impl IntoIterator<Item = OsString>,
) -> Result<duct::Expression> {
    let fixed = [
        "pip",
        "install",
        "--no-progress",
        "--compile-bytecode",
        "--python",
    ];
    Ok(duct::cmd(
        tools::ensure(project)?.uv,
        fixed
            .into_iter()
            .map(OsString::from)
            .chain([python.as_os_str().to_os_string()])
            .chain(args),
    )
    .env("UV_CACHE_DIR", cache)
    .env("UV_HTTP_RETRIES", "10"))
}

/// Says before a 3 GB download, not after it, that space looks short. Only
/// a warning: `df` can be wrong (quotas, overlays), and uv's own
/// `No space left` leads the error if it is right.
fn warn_if_tight(step: &Step, project: &Project, venv: &Path) {
    if let Some(free) = crate::host::free_gb(venv).filter(|&free| free < INSTALLED_GB) {
        step.say(&format!(
            "warning: {free:.1} GB free under {}, and the environment needs about {INSTALLED_GB:.0} GB; \
             it may run out of space",
            project.shown(venv)
        ));
    }
}

/// A first install that filled the disk is removed whole (an update keeps
/// what was there), and the process remembers why.
fn no_room(project: &Project, venv: &Path, fresh: bool) -> NoRoom {
    if fresh {
        let _ = std::fs::remove_dir_all(venv);
    }
    let free = crate::host::free_gb(project.root())
        .map_or("too little".into(), |gb| format!("{gb:.1} GB"));
    let why = NoRoom(format!(
        "no room for PyTorch: uv ran out of disk installing it into {} ({free} free once the partial install \
         was removed; it needs about {INSTALLED_GB:.0} GB). Free some space \
         (target/llorch/reference-models and target/llorch/verify may go: they are made again)",
        project.shown(venv),
    ));
    NO_ROOM.get_or_init(|| why).clone()
}

fn first_line(error: &anyhow::Error) -> String {
    error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// uv's summary lines (`Resolved`, `Prepared`, `Installed` N packages) as
/// the step's message, each `+ package==version` as its detail.
fn progress(step: &Step, line: &str) {
    let line = line.trim_start();
    if line.starts_with("Resolved ") || line.starts_with("Prepared ") {
        step.set_message(line);
    } else if line.starts_with("+ ") {
        step.set_detail(line);
    }
}

/// How to run the pinned tree's `convert_hf_to_gguf.py`.
pub struct Converter {
    pub python: PathBuf,
    pub script: PathBuf,
    /// Its own transformers ([`CONVERTER_TRANSFORMERS`]), then its
    /// `conversion` and `gguf` packages.
    pub pythonpath: OsString,
    /// Its `conversion` and `gguf` packages' directory.
    pub packages: PathBuf,
}

pub fn converter(project: &Project) -> Result<Converter> {
    let python = ensure(project)?;
    let script = fetch::ensure_tree(project, false)?.join("convert_hf_to_gguf.py");
    ensure!(
        script.is_file(),
        "the pinned tree has no {}",
        script.display()
    );
    let packages = venv_dir(project).join(format!("{}-{}", CONVERTER_SDIST.0, CONVERTER_SDIST.1));
    let stamp = packages.join("llorch-sdist-sha256");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(CONVERTER_SDIST_SHA256) {
        unpack_converter_packages(project, &python, &script, &packages)?;
        write_atomically(&stamp, CONVERTER_SDIST_SHA256.as_bytes())?;
    }
    Ok(Converter {
        python,
        script,
        pythonpath: std::env::join_paths([converter_site(project), packages.clone()])?,
        packages,
    })
}

/// `pip download` of the sdist `spec` (no build, no dependencies) into the
/// venv's downloads; the file it left.
fn download_converter_sdist(project: &Project, python: &Path, spec: &str) -> Result<PathBuf> {
    let (name, version) = CONVERTER_SDIST;
    let downloads = venv_dir(project).join("downloads");
    std::fs::create_dir_all(&downloads)?;
    // pip reads an sdist's metadata before it keeps it; scikit-build-core wants cmake for that.
    let tools = tools::ensure(project)?;
    let tools_bin = tools
        .cmake
        .parent()
        .context("cmake has no directory")?
        .to_path_buf();
    let path = std::env::join_paths(std::iter::once(tools_bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let step = Step::start(project, "python", "")?;
    step.set_message(&format!(
        "downloading the {spec} sdist for llama.cpp's converter packages"
    ));
    let pip = duct::cmd!(
        python,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--no-build-isolation",
        "-d",
        &downloads,
        spec
    )
    .env("PATH", &path);
    step.run("pip download", pip)
        .with_context(|| format!("pip could not download {spec} from PyPI"))?;
    step.finish(&format!("{spec} sdist in {}", downloads.display()));
    Ok(downloads.join(format!("{}-{version}.tar.gz", name.replace('-', "_"))))
}

fn unpack_converter_packages(
    project: &Project,
    python: &Path,
    script: &Path,
    packages: &Path,
) -> Result<()> {
    let (name, version) = CONVERTER_SDIST;
    let spec = format!("{name}=={version}");
    let sdist = download_converter_sdist(project, python, &spec)?;
    let bytes =
        std::fs::read(&sdist).with_context(|| format!("pip did not leave {}", sdist.display()))?;
    fetch::check_sha256(&sdist, &bytes, &spec, CONVERTER_SDIST_SHA256, file!())?;

    let root = PathBuf::from(format!(
        "{}-{version}/vendor/llama.cpp",
        name.replace('-', "_")
    ));
    let theirs = fetch::read_from_tar_gz(&bytes, &root.join("convert_hf_to_gguf.py"))?;
    let ours = std::fs::read(script)?;
    if theirs != ours {
        bail!(
            "the pinned tree's {} differs from the one in {spec}, whose `conversion` and `gguf` packages it would use.\n\
             Move CONVERTER_SDIST in xtask/src/models/python.rs to a llama-cpp-python release whose vendored llama.cpp matches the pin.",
            script.display()
        );
    }
    if packages.exists() {
        std::fs::remove_dir_all(packages)?;
    }
    let staging = packages.with_extension("staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let n1 = fetch::unpack_tar_gz_subdir(
        &bytes,
        &root.join("conversion"),
        &staging.join("conversion"),
    )?;
    let n2 =
        fetch::unpack_tar_gz_subdir(&bytes, &root.join("gguf-py/gguf"), &staging.join("gguf"))?;
    ensure!(
        n1 > 0 && n2 > 0,
        "{} lacks conversion/ or gguf-py/gguf/",
        sdist.display()
    );
    std::fs::rename(&staging, packages)?;
    Ok(())
}
