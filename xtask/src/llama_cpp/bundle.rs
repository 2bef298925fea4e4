//! `cargo xtask device-bundle`: the GPU check, packed for a machine that has
//! CMake, a compiler and nvcc but no cargo and no network.
//!
//! ```text
//! llorch-device-bundle/
//!   run-gpu-check.sh          the one script (xtask/device/run-gpu-check.sh): build, model, runs, checks
//!   bundle.env                what the script reads: pin, checksums, model arguments
//!   SHA256SUMS                every other file's sha256, checked first
//!   bin/                      extractor, model, validate, diff (release) and xtask, built here (x86-64)
//!   src/<crate>.crate         the pinned llama.cpp source, sha256-checked against vendor/pin.yaml
//!   cmake/{cuda,cpu-dl}.defines   the CMake defines of build.rs, one per line
//!   tokenizer/                GPT-2's encoder.json and vocab.bpe (from the pinned tiktoken-rs crate)
//!   manifests/                the checkpoint manifests
//! ```
//!
//! The model (500 MB in f32) is not carried: the script generates it with the
//! bundled model tool, and checks it has the sha256 of the one made here. The
//! binaries link llama.cpp by soname; the script points `LD_LIBRARY_PATH` at
//! the libraries it built (DL build: the extractor loads the backend modules
//! from there too, see `extractor/src/ffi/mod.rs`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_spec::files::sha256_file;
use xshell::cmd;

use crate::llama_cpp::build::{self, Backend};
use crate::llama_cpp::fetch;
use crate::llama_cpp::pin::{CrateSource, Pin, SourceRef};
use crate::models::model::{self, Dtype, Synthetic};
use crate::project::Project;

/// The bundle must fit through the device machine's transfer limit.
const MAX_BYTES: u64 = 64 << 20;
const NAME: &str = "llorch-device-bundle";
const SCRIPT: &str = "xtask/device/run-gpu-check.sh";
const BINARIES: [&str; 4] = [
    "llorch-checkpoint-extractor",
    "llorch-checkpoint-model",
    "llorch-checkpoint-validate",
    "llorch-checkpoint-diff",
];
/// The model the script generates: the default of `extract` and `verify`.
const MODEL: Synthetic = Synthetic {
    layers: 12,
    seed: 0,
    dtype: Dtype::F32,
};
const MODEL_ARGS: &str = "--n-layer 12 --seed 0 --dtype f32";

#[derive(clap::Args)]
pub struct DeviceBundle {
    /// Directory for the bundle: DIR/llorch-device-bundle/ and DIR/llorch-device-bundle.tar.gz
    /// [default: target/llorch/device-bundle].
    #[arg(long)]
    out: Option<PathBuf>,
}

impl DeviceBundle {
    pub fn run(self, project: &Project) -> Result<()> {
        let out = match self.out {
            Some(dir) => std::path::absolute(dir)?,
            None => project.work_dir().join("device-bundle"),
        };
        let dir = out.join(NAME);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot replace {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        make(project, &dir)?;
        let archive = out.join(format!("{NAME}.tar.gz"));
        let bytes = pack(&dir, &archive)?;
        println!(
            "device-bundle: {} ({:.1} MiB of at most {} MiB)",
            archive.display(),
            bytes as f64 / (1u64 << 20) as f64,
            MAX_BYTES >> 20
        );
        ensure!(
            bytes <= MAX_BYTES,
            "the bundle is {bytes} bytes, over the {MAX_BYTES}-byte limit"
        );
        println!("on the device: tar -xzf {NAME}.tar.gz && {NAME}/run-gpu-check.sh RESULTS_DIR   (--cpu-only without a GPU)");
        Ok(())
    }
}

/// Fills `dir` with everything the script needs.
fn make(project: &Project, dir: &Path) -> Result<()> {
    for sub in ["bin", "src", "cmake", "tokenizer", "manifests"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    copy_binaries(project, &dir.join("bin"))?;
    let (pin, src, crate_name) = copy_pinned_source(project, &dir.join("src"))?;
    copy_matching(
        &project.root().join("manifests"),
        &dir.join("manifests"),
        ".yaml",
    )?;
    let [encoder, vocab] = model::tokenizer_files(project)?;
    std::fs::copy(&encoder, dir.join("tokenizer/encoder.json"))?;
    std::fs::copy(&vocab, dir.join("tokenizer/vocab.bpe"))?;
    let (model_path, model_sha) = model::synthetic(project, &MODEL, false)?;
    // The CPU-only variant (--cpu-only) is laid out as the CUDA build is: backends as modules.
    for (file, backend) in [
        ("cuda.defines", Backend::Cuda),
        ("cpu-dl.defines", Backend::Cpu),
    ] {
        std::fs::write(dir.join("cmake").join(file), defines_file(backend))?;
    }
    let model_file = model_path.file_name().unwrap_or_default().to_string_lossy();
    let env = [
        ("PROJECT_COMMIT", project_commit(project)?),
        ("LLAMA_PIN", pin.id()),
        ("LLAMA_CRATE", format!("src/{crate_name}")),
        ("LLAMA_CRATE_SHA256", src.sha256.clone()),
        (
            "LLAMA_CRATE_SUBDIR",
            format!("{}-{}/{}", src.name, src.version, src.subdir),
        ),
        ("MODEL_FILE", model_file.into_owned()),
        ("MODEL_ARGS", MODEL_ARGS.to_string()),
        ("MODEL_SHA256", model_sha),
        ("ENCODER_JSON_SHA256", sha256_file(&encoder)?),
        ("VOCAB_BPE_SHA256", sha256_file(&vocab)?),
    ];
    std::fs::write(dir.join("bundle.env"), env_file(&env)?)?;
    let script = dir.join("run-gpu-check.sh");
    std::fs::copy(project.root().join(SCRIPT), &script)?;
    set_executable(&script)?;
    std::fs::write(dir.join("SHA256SUMS"), sha256sums(dir)?)?;
    Ok(())
}

/// The binaries, built here against the CPU build of the pin (on the device
/// they run against the libraries the script builds there), into `bin`.
fn copy_binaries(project: &Project, bin: &Path) -> Result<()> {
    let sh = project.shell()?;
    build::pinned_extractor(project, Backend::Cpu)?;
    let release = project.root().join("target/release");
    let xtask = std::env::current_exe().context("cannot find the running xtask binary")?;
    for (src, name) in BINARIES
        .iter()
        .map(|b| (release.join(b), *b))
        .chain([(xtask, "xtask")])
    {
        ensure!(
            src.is_file(),
            "{} is missing (the extractor build should have made it)",
            src.display()
        );
        let dest = bin.join(name);
        // Debug info is most of the (debug) xtask binary; the bundle has a size limit.
        if cmd!(sh, "strip --strip-debug -o {dest} {src}")
            .quiet()
            .ignore_stderr()
            .run()
            .is_err()
        {
            std::fs::copy(&src, &dest)?;
        }
    }
    Ok(())
}

/// The pinned `.crate`, checked exactly as fetch checks it, into `src`;
/// the pin, its source and the file's name.
fn copy_pinned_source(project: &Project, src_dir: &Path) -> Result<(Pin, CrateSource, String)> {
    let pin = Pin::load(&project.pin_file())?;
    let SourceRef::Crate(src) = pin.source()? else {
        bail!("the device bundle carries a crates.io source; vendor/pin.yaml pins a git source")
    };
    let src = src.clone();
    let crate_file = fetch::download_crate_file(project, &src.name, &src.version)?;
    let bytes = std::fs::read(&crate_file)
        .with_context(|| format!("cannot read {}", crate_file.display()))?;
    fetch::check_sha256(
        &crate_file,
        &bytes,
        &format!("{} {}", src.name, src.version),
        &src.sha256,
        "vendor/pin.yaml",
    )?;
    let crate_name = format!("{}-{}.crate", src.name, src.version);
    std::fs::write(src_dir.join(&crate_name), &bytes)?;
    Ok((pin, src, crate_name))
}

/// The project's commit, `-dirty` when tracked files changed.
fn project_commit(project: &Project) -> Result<String> {
    let sh = project.shell()?;
    let commit = cmd!(sh, "git rev-parse --short=12 HEAD")
        .quiet()
        .read()
        .unwrap_or_else(|_| "unknown".into());
    let dirty = cmd!(sh, "git status --porcelain --untracked-files=no")
        .quiet()
        .read()
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
    Ok(format!("{commit}{}", if dirty { "-dirty" } else { "" }))
}

/// `build.rs`'s defines for `backend` built as loadable modules, one `NAME=VALUE` a line.
fn defines_file(backend: Backend) -> String {
    let mut text = format!(
        "# CMake defines of a {} build with GGML_BACKEND_DL (xtask/src/llama_cpp/build.rs)\n",
        backend.name()
    );
    for define in build::cmake_defines(backend, true) {
        text += define;
        text.push('\n');
    }
    text
}

/// `KEY='value'` lines for the script to `source`; values must need no escaping.
fn env_file(vars: &[(&str, String)]) -> Result<String> {
    let mut text =
        String::from("# Written by `cargo xtask device-bundle`; sourced by run-gpu-check.sh.\n");
    for (key, value) in vars {
        ensure!(
            !value.contains(['\'', '\n', '\\']),
            "{key} has a character bundle.env cannot hold: {value:?}"
        );
        text += &format!("{key}='{value}'\n");
    }
    Ok(text)
}

fn copy_matching(from: &Path, to: &Path, suffix: &str) -> Result<()> {
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let path = entry?.path();
        if path.is_file() && path.to_string_lossy().ends_with(suffix) {
            std::fs::copy(&path, to.join(path.file_name().unwrap()))?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[cfg(not(unix))]
fn set_executable(_: &Path) -> Result<()> {
    Ok(())
}

/// `sha256sum`'s format for every file under `dir` (sorted, relative paths).
fn sha256sums(dir: &Path) -> Result<String> {
    let mut text = String::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry
            .path()
            .strip_prefix(dir)?
            .to_string_lossy()
            .replace('\\', "/");
        if relative == "SHA256SUMS" {
            continue;
        }
        text += &format!("{}  {relative}\n", sha256_file(entry.path())?);
    }
    Ok(text)
}

/// Writes `dir` as `NAME/...` into a .tar.gz (modes kept); returns its size.
fn pack(dir: &Path, archive: &Path) -> Result<u64> {
    let tmp = archive.with_extension(format!("tmp{}", std::process::id()));
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::best(),
    ));
    builder.follow_symlinks(true);
    builder.append_dir_all(NAME, dir)?;
    builder.into_inner()?.finish()?.flush()?;
    std::fs::rename(&tmp, archive)?;
    Ok(std::fs::metadata(archive)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cuda_defines_build_backends_as_modules() {
        let cuda = defines_file(Backend::Cuda);
        for define in [
            "GGML_CUDA=ON",
            "GGML_BACKEND_DL=ON",
            "GGML_NATIVE=OFF",
            "BUILD_SHARED_LIBS=ON",
            "LLAMA_BUILD_TESTS=OFF",
        ] {
            assert!(
                cuda.lines().any(|l| l == define),
                "{define} missing from:\n{cuda}"
            );
        }
        // ggml-cpu's CMakeLists refuses GGML_NATIVE together with GGML_BACKEND_DL.
        assert!(!cuda.contains("GGML_NATIVE=ON"), "{cuda}");
        let cpu = defines_file(Backend::Cpu);
        assert!(
            cpu.contains("GGML_CUDA=OFF\n")
                && cpu.ends_with("GGML_NATIVE=OFF\nGGML_BACKEND_DL=ON\n"),
            "{cpu}"
        );
        // `cargo xtask build` keeps the CPU build native and linked in; CUDA is DL.
        assert!(
            build::cmake_defines(Backend::Cpu, Backend::Cpu.backend_dl())
                .contains(&"GGML_NATIVE=ON")
        );
        assert!(Backend::Cuda.backend_dl() && !Backend::Metal.backend_dl());
    }

    #[test]
    fn bundle_env_is_sourceable_and_refuses_quotes() {
        let text = env_file(&[("A", "x y".into()), ("B", "0123".into())]).unwrap();
        assert!(text.ends_with("A='x y'\nB='0123'\n"), "{text}");
        assert!(env_file(&[("A", "it's".into())]).is_err());
    }

    #[test]
    fn sha256sums_lists_every_file_but_itself() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/a"), "a").unwrap();
        std::fs::write(dir.path().join("SHA256SUMS"), "old").unwrap();
        let sums = sha256sums(dir.path()).unwrap();
        assert_eq!(
            sums,
            "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb  bin/a\n"
        );
    }

    #[test]
    fn the_device_script_is_valid_bash() {
        let project = Project::from_env().unwrap();
        let script = project.root().join(SCRIPT);
        let status = std::process::Command::new("bash")
            .arg("-n")
            .arg(&script)
            .status()
            .unwrap();
        assert!(status.success(), "bash -n {} failed", script.display());
    }
}
