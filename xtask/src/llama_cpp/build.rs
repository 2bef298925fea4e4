//! `cargo xtask build`: the pinned llama.cpp with CMake, then the extractor.
//!
//! Build directories are keyed by backend and pin
//! (`target/llorch/llama/<backend>-<pin>`), so switching backends never mixes
//! objects and switching back rebuilds nothing. CMake configures only when the
//! defines change; ninja makes a no-op rebuild take well under a second.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use llorch_checkpoint_spec::files::write_atomically;
use serde::Serialize;

use llorch_checkpoint_spec::record::LlamaTree;

use crate::llama_cpp::tree::{Tree, TreeArg};
use crate::llama_cpp::{bindgen, tools};
use crate::project::Project;
use crate::step::{self, Step};

#[derive(clap::Args)]
pub struct Build {
    /// Which ggml backend to build.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    #[command(flatten)]
    tree: TreeArg,
    /// Only build llama.cpp, not the extractor.
    #[arg(long)]
    llama_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Cuda,
    Metal,
    /// llama.cpp's Vulkan backend: any GPU with a Vulkan driver, or Mesa's
    /// CPU driver (llvmpipe) on a machine without one.
    Vulkan,
}

impl Backend {
    /// `-ngl` where the user gave none: every layer on the device, as
    /// llama.cpp's own tools do; the CPU backend has none to offload to.
    pub fn default_gpu_layers(self) -> Option<i32> {
        match self {
            Backend::Cpu => None,
            _ => Some(ALL_LAYERS),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Metal => "metal",
            Backend::Vulkan => "vulkan",
        }
    }

    /// CMake defines on top of the common ones. CUDA is for the GPU present at
    /// build time (`native`; the device script may name one instead).
    fn cmake_defines(self) -> &'static [&'static str] {
        match self {
            Backend::Cpu => &["GGML_METAL=OFF", "GGML_CUDA=OFF"],
            Backend::Cuda => &[
                "GGML_CUDA=ON",
                "GGML_METAL=OFF",
                "CMAKE_CUDA_ARCHITECTURES=native",
            ],
            Backend::Metal => &["GGML_METAL=ON", "GGML_CUDA=OFF"],
            Backend::Vulkan => &["GGML_VULKAN=ON", "GGML_METAL=OFF", "GGML_CUDA=OFF"],
        }
    }

    /// Whether `cargo xtask build` makes the backends loadable modules
    /// (`GGML_BACKEND_DL`): CUDA does, so its `libggml-cpu.so` and
    /// `libggml-cuda.so` sit beside `libggml.so` and one extractor binary runs
    /// on either (it loads them at startup: `extractor/src/ffi/mod.rs`, `init`).
    /// CPU and Metal link their backend in, as before.
    pub fn backend_dl(self) -> bool {
        self == Backend::Cuda
    }

    /// Fails fast, before any download or configure, when the toolchain is missing.
    fn check_toolchain(self, project: &Project) -> Result<()> {
        match self {
            Backend::Cpu => Ok(()),
            Backend::Vulkan => super::vulkan::check_toolchain(project),
            Backend::Cuda => match find_nvcc() {
                Some(_) => Ok(()),
                None => bail!(
                    "--backend cuda needs nvcc (the CUDA toolkit), which is neither on PATH, nor in $CUDACXX, \
                     nor at /usr/local/cuda/bin/nvcc.\nInstall the CUDA toolkit, or build with --backend cpu."
                ),
            },
            Backend::Metal if cfg!(target_os = "macos") => Ok(()),
            Backend::Metal => bail!(
                "--backend metal needs a macOS host (Metal and its compiler exist only there); this host is {}.\n\
                 On a Mac, run: cargo xtask build --backend metal",
                std::env::consts::OS
            ),
        }
    }
}

pub fn find_nvcc() -> Option<PathBuf> {
    let from_env = std::env::var_os("CUDACXX").map(PathBuf::from);
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nvcc"))
            .find(|p| p.is_file())
    });
    let default = Some(PathBuf::from("/usr/local/cuda/bin/nvcc"));
    [from_env, on_path, default]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
}

/// `-ngl` for every layer of any model (llama.cpp clamps it to the model's).
pub const ALL_LAYERS: i32 = 999;

/// The defines every build gets: upstream extras off, shared libraries, Release.
const COMMON_DEFINES: &[&str] = &[
    "CMAKE_BUILD_TYPE=Release",
    "BUILD_SHARED_LIBS=ON",
    "LLAMA_BUILD_TESTS=OFF",
    "LLAMA_BUILD_EXAMPLES=OFF",
    "LLAMA_BUILD_TOOLS=OFF",
    "LLAMA_BUILD_SERVER=OFF",
    "LLAMA_BUILD_APP=OFF",
    "LLAMA_BUILD_COMMON=OFF",
    "LLAMA_OPENSSL=OFF",
    "LLAMA_CURL=OFF",
    "GGML_NATIVE=ON",
    // Every build can put layers on other hosts (`--rpc`): the backend is small
    // and needs nothing, so it is always built rather than a variant to choose.
    "GGML_RPC=ON",
];

/// `GGML_NATIVE` compiles for `-march=native`, which on an AMX-capable Xeon
/// includes ggml's AMX kernels; on the pinned tree they die with SIGILL at
/// `tilezero` (tile permission and config are not set up per worker thread;
/// upstream llama.cpp PR #26954, open). GCC and clang let an explicit
/// `-mno-<isa>` win over what `-march` implies, so these keep every other
/// native feature (AVX-512, VNNI, BF16) and drop AMX alone.
const AMX_OFF: [&str; 2] = [
    "CMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
    "CMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
];
const AMX_ON: [&str; 2] = ["CMAKE_C_FLAGS=", "CMAKE_CXX_FLAGS="];

/// The environment variable that lets a native CPU build compile ggml's AMX
/// kernels again (`LLORCH_CPU_AMX=on`), for a tree that fixes the crash.
pub const AMX_ENV: &str = "LLORCH_CPU_AMX";

pub fn amx_wanted() -> bool {
    std::env::var(AMX_ENV).is_ok_and(|v| matches!(v.as_str(), "1" | "on" | "ON" | "true"))
}

/// Every define a build of `backend` gets (`NAME=VALUE`): the common ones,
/// the backend's, and with `backend_dl` those of a loadable-module build.
/// The device bundle (`bundle.rs`) writes the same lists for its script.
pub fn cmake_defines(backend: Backend, backend_dl: bool) -> Vec<&'static str> {
    let mut defines: Vec<&str> = COMMON_DEFINES
        .iter()
        .chain(backend.cmake_defines())
        .copied()
        .collect();
    if cfg!(target_arch = "x86_64") && !backend_dl {
        // Always set, so that switching AMX back off also resets CMake's cache.
        defines.extend(if amx_wanted() { &AMX_ON } else { &AMX_OFF });
    }
    if backend_dl {
        // ggml-cpu refuses GGML_NATIVE with GGML_BACKEND_DL (its loader checks the
        // CPU features a module was built for, which `native` does not record):
        // the CPU module gets ggml's non-native x86-64 set (SSE4.2, AVX, AVX2, BMI2, FMA, F16C).
        defines.retain(|d| *d != "GGML_NATIVE=ON");
        defines.extend(["GGML_NATIVE=OFF", "GGML_BACKEND_DL=ON"]);
    }
    defines
}

/// The environment variable whose `NAME=VALUE` words are added, last, to
/// every CMake configure: `LLORCH_CMAKE_DEFINES="GGML_AVX512=OFF"`.
pub const DEFINES_ENV: &str = "LLORCH_CMAKE_DEFINES";

fn extra_defines() -> Vec<String> {
    std::env::var(DEFINES_ENV)
        .unwrap_or_default()
        .split_whitespace()
        .map(|d| format!("-D{d}"))
        .collect()
}

/// What the extractor's build script reads to link against the active build.
#[derive(Serialize)]
pub struct ActiveBuild<'a> {
    pub backend: Backend,
    pub lib_dir: &'a Path,
    pub include_dirs: [PathBuf; 2],
    /// Bindings generated from the tree's own headers; None: the committed
    /// ones of the pin.
    pub bindings: Option<PathBuf>,
    pub tree: &'a LlamaTree,
}

impl ActiveBuild<'_> {
    /// Writes the description (only on change, so that the extractor's
    /// build script does not rerun for nothing).
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        if std::fs::read_to_string(path).ok().as_deref() != Some(json.as_str()) {
            std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
            write_atomically(path, json.as_bytes())?;
        }
        Ok(())
    }
}

impl Build {
    pub fn run(self, project: &Project) -> Result<()> {
        let tree = self.tree.resolve(project)?;
        match self.llama_only {
            true => {
                bindgen::for_tree(project, &tree)?;
                build_llama(project, self.backend, &tree, None).map(drop)
            }
            false => ensure_extractor(project, self.backend, &tree).map(drop),
        }
    }
}

/// Builds llama.cpp and the extractor on the pin for `backend` (a no-op when up to date).
pub fn pinned_extractor(project: &Project, backend: Backend) -> Result<PathBuf> {
    ensure_extractor(project, backend, &Tree::pinned(project)?)
}

/// llama.cpp and the extractor on `tree` for `backend`, each a no-op when up
/// to date; returns the extractor. A local tree's headers are checked first,
/// so a tree too old fails in a second, not after its build.
pub fn ensure_extractor(project: &Project, backend: Backend, tree: &Tree) -> Result<PathBuf> {
    let bindings = bindgen::for_tree(project, tree)?;
    let linked = match backend {
        // Linked against the CPU build; the Vulkan build's libraries (the
        // same API) are swapped in at run time: see `backend_env`.
        Backend::Vulkan => {
            build_llama(project, Backend::Vulkan, tree, None)?;
            Backend::Cpu
        }
        backend => backend,
    };
    let lib_dir = build_llama(project, linked, tree, None)?;
    build_extractor(project, linked, tree, &lib_dir, bindings)
}

/// The environment an extractor from [`ensure_extractor`] runs `backend`
/// in: for Vulkan, its build's libraries ahead of the linked CPU ones
/// (one extractor binary for both: switching backends rebuilds nothing),
/// and the device llama.cpp would otherwise skip where it is a CPU.
pub fn backend_env(project: &Project, backend: Backend, tree: &Tree) -> Vec<(OsString, OsString)> {
    if backend != Backend::Vulkan {
        return Vec::new();
    }
    let lib_dir = default_build_dir(project, backend, tree).join("bin");
    // First, ahead of whatever the caller's path holds.
    let theirs = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    // (An empty entry would mean the working directory: none is added.)
    let dirs = std::iter::once(lib_dir.clone())
        .chain(std::env::split_paths(&theirs).filter(|d| !d.as_os_str().is_empty()));
    // A directory of theirs with a ':' cannot be joined: ours alone then.
    let path = std::env::join_paths(dirs).unwrap_or_else(|_| lib_dir.into_os_string());
    let mut env = vec![("LD_LIBRARY_PATH".into(), path)];
    if let Some(devices) = super::vulkan::visible_devices() {
        env.push(("GGML_VK_VISIBLE_DEVICES".into(), devices.into()));
    }
    env
}

/// Builds llama.cpp into its keyed build directory (or `build_dir` if given)
/// and returns the directory holding its shared libraries.
pub fn build_llama(
    project: &Project,
    backend: Backend,
    tree: &Tree,
    build_dir: Option<PathBuf>,
) -> Result<PathBuf> {
    backend.check_toolchain(project)?;
    let tools = tools::ensure(project)?;
    let headers = match backend {
        Backend::Vulkan => super::vulkan::header_defines(project)?,
        _ => Vec::new(),
    };
    let build_dir = build_dir.unwrap_or_else(|| default_build_dir(project, backend, tree));
    let step = Step::start(
        project,
        "build",
        &format!("llama.cpp {} ({})", backend.name(), tree.record.describe()),
    )?;
    let reconfigured = configure(&step, &tools, backend, &headers, &tree.root, &build_dir)?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .to_string();
    let build = duct::cmd!(
        &tools.cmake,
        "--build",
        &build_dir,
        "--config",
        "Release",
        "-j",
        &jobs
    )
    .env("PATH", tools_on_path(&tools)?);
    let compiled = std::cell::Cell::new(false);
    step.run_watched("cmake --build", build, |step, line| {
        // `[0/2] Re-checking globbed directories...` compiles nothing.
        if line.starts_with('[') && !line.starts_with("[0/") && !compiled.replace(true) {
            step.set_message(&format!(
                "compiling llama.cpp ({}, {jobs} jobs)",
                backend.name()
            ));
        }
        step::ninja_progress(step, line);
    })
    .with_context(|| format!("building llama.cpp for {} failed", backend.name()))?;
    let lib_dir = build_dir.join("bin");
    check_libraries(backend, &lib_dir)?;
    let summary = format!("llama.cpp {} in {}", backend.name(), lib_dir.display());
    match compiled.get() || reconfigured {
        true => step.finish(&summary),
        false => step.finish_unchanged(&format!("{summary}: up to date")),
    }
    Ok(lib_dir)
}

/// PATH with the tools' directory first: a sub-build that CMake configures
/// while building (Vulkan's shader generator) finds ninja there, as it is
/// not handed CMAKE_MAKE_PROGRAM.
fn tools_on_path(tools: &tools::Tools) -> Result<OsString> {
    let bin = tools.ninja.parent().context("ninja in a directory")?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&path));
    std::env::join_paths(dirs).context("a PATH entry holds a ':'")
}

/// Configures `build_dir` with CMake unless it was configured with the same
/// tree and defines; true when it ran.
fn configure(
    step: &Step,
    tools: &tools::Tools,
    backend: Backend,
    headers: &[String],
    tree: &Path,
    build_dir: &Path,
) -> Result<bool> {
    // Trees packaged without ggml's RPC backend (older crates) build without it.
    let has_rpc = tree.join("ggml/src/ggml-rpc").is_dir();
    let defines: Vec<String> = cmake_defines(backend, backend.backend_dl())
        .iter()
        .map(|d| match *d {
            "GGML_RPC=ON" if !has_rpc => "-DGGML_RPC=OFF".to_string(),
            d => format!("-D{d}"),
        })
        .chain(headers.iter().map(|d| format!("-D{d}")))
        .chain([format!("-DCMAKE_MAKE_PROGRAM={}", tools.ninja.display())])
        .chain(extra_defines())
        .collect();
    let configured = build_dir.join("llorch-configure.txt");
    let configure_key = format!("{}\n{}", tree.display(), defines.join("\n"));
    if std::fs::read_to_string(&configured).ok().as_deref() == Some(configure_key.as_str()) {
        return Ok(false);
    }
    step.set_message(&format!(
        "configuring llama.cpp ({}) with CMake in {}",
        backend.name(),
        build_dir.display()
    ));
    let args: Vec<std::ffi::OsString> = [
        "-S".as_ref(),
        tree.as_os_str(),
        "-B".as_ref(),
        build_dir.as_os_str(),
    ]
    .into_iter()
    .map(Into::into)
    .chain(["-G", "Ninja"].map(Into::into))
    .chain(defines.iter().map(Into::into))
    .collect();
    step.run("cmake (configure)", duct::cmd(&tools.cmake, args))
        .with_context(|| format!("CMake could not configure llama.cpp for {}", backend.name()))?;
    std::fs::write(&configured, &configure_key)?;
    Ok(true)
}

/// The shared libraries a build of `backend` must have left in `lib_dir`.
fn check_libraries(backend: Backend, lib_dir: &Path) -> Result<()> {
    let mut expected = vec![shared_lib("llama")];
    if backend.backend_dl() {
        // GGML_BACKEND_DL: each backend is a module of its own, loaded at run time.
        expected.extend([
            shared_lib("ggml-cpu"),
            shared_lib(&format!("ggml-{}", backend.name())),
        ]);
    }
    for lib in expected {
        if !lib_dir.join(&lib).exists() {
            bail!(
                "the build finished but {} is missing",
                lib_dir.join(lib).display()
            );
        }
    }
    Ok(())
}

pub fn default_build_dir(project: &Project, backend: Backend, tree: &Tree) -> PathBuf {
    project
        .work_dir()
        .join("llama")
        .join(format!("{}-{}", backend.name(), tree.id))
}

/// Where a tree's extractor is built, and the build description its build
/// script reads: the pin's in the workspace's own target directory (what
/// `cargo build` and the tests use), every other tree's in a target
/// directory of its own, so that building one never undoes another.
pub fn extractor_placement(project: &Project, tree: &Tree) -> (PathBuf, PathBuf) {
    match tree.pinned {
        true => (project.active_build_file(), project.root().join("target")),
        false => {
            let dir = project.extractor_dir(&tree.id);
            (dir.join("active-build.json"), dir.join("target"))
        }
    }
}

/// Points the extractor at `lib_dir` and builds it (release: it is what we measure).
pub fn build_extractor(
    project: &Project,
    backend: Backend,
    tree: &Tree,
    lib_dir: &Path,
    bindings: Option<PathBuf>,
) -> Result<PathBuf> {
    let (active_file, target_dir) = extractor_placement(project, tree);
    ActiveBuild {
        backend,
        lib_dir,
        include_dirs: tree.include_dirs(),
        bindings,
        tree: &tree.record,
    }
    .write(&active_file)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let step = Step::start(project, "extractor", "cargo build --release")?;
    let mut build = duct::cmd!(
        cargo,
        "build",
        "--release",
        "--package",
        "llorch-checkpoint-extractor"
    )
    .dir(project.root());
    // The pin's build keeps cargo's defaults: set, this variable would
    // differ from a plain `cargo test` and rebuild the extractor each time.
    if !tree.pinned {
        build = build
            .env("LLORCH_ACTIVE_BUILD", &active_file)
            .env("CARGO_TARGET_DIR", &target_dir);
    }
    let compiled = std::cell::Cell::new(false);
    step.run_watched("cargo build --release (extractor)", build, |step, line| {
        if line.trim_start().starts_with("Compiling ") && !compiled.replace(true) {
            step.set_message("compiling the extractor");
        }
        step::cargo_progress(step, line);
    })
    .context("building the extractor failed")?;
    let exe = target_dir.join("release/llorch-checkpoint-extractor");
    let summary = format!("llorch-checkpoint-extractor in {}", exe.display());
    match compiled.get() {
        true => step.finish(&summary),
        false => step.finish_unchanged(&format!("{summary}: up to date")),
    }
    Ok(exe)
}

fn shared_lib(name: &str) -> String {
    if cfg!(target_os = "macos") {
        format!("lib{name}.dylib")
    } else {
        format!("lib{name}.so")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn native_cpu_builds_leave_amx_out_and_module_builds_are_not_native() {
        let native = cmake_defines(Backend::Cpu, false);
        assert!(native.contains(&"GGML_NATIVE=ON"));
        if !amx_wanted() {
            assert!(native.contains(&AMX_OFF[0]) && native.contains(&AMX_OFF[1]));
        }
        let modules = cmake_defines(Backend::Cuda, true);
        assert!(modules.contains(&"GGML_NATIVE=OFF"));
        assert!(!modules.iter().any(|d| d.starts_with("CMAKE_C_FLAGS")));
    }

    /// The flags must win over `-march` whatever CPU this runs on: ask the C
    /// compiler CMake uses what a Sapphire Rapids target defines with them.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_no_amx_flags_win_over_an_amx_march() {
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let defined = |extra: &str| -> String {
            let args = format!("-march=sapphirerapids {extra} -dM -E -x c /dev/null");
            let out = std::process::Command::new(&cc)
                .args(args.split_whitespace())
                .output()
                .expect("a C compiler (cc) runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(defined("").contains("__AMX_INT8__"), "the target has AMX");
        let flags = AMX_OFF[0].trim_start_matches("CMAKE_C_FLAGS=");
        let without = defined(flags);
        for isa in ["__AMX_TILE__", "__AMX_INT8__", "__AMX_BF16__"] {
            assert!(!without.contains(isa), "{isa} still defined with {flags}");
        }
        assert!(
            without.contains("__AVX512VNNI__"),
            "other native features stay"
        );
    }
}
